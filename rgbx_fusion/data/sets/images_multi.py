"""Unlabelled RGB + several aux modalities from one's own sensors, for ``predict``.

One folder per modality (``rgb_dir``, and ``aux_dirs``: modality → folder), paired by
file stem, without split files, labels or ``dataset.json``. A modality declared
``optional`` may lack a file for an image: that sample records it absent
(``meta["present"]``), as a sensor that dropped a frame, and a multi-modality model
skips it. The aux normalisation always comes from the checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset

from rgbx_fusion.data.depth import DEPTH_FORMATS
from rgbx_fusion.data.sets.folder import MODALITIES, read_rgb, read_thermal
from rgbx_fusion.data.sets.images import (
    THERMAL_EXTENSIONS,
    UnpairedFilesWarning,
    _names,
    classes_and_palette,
    index_by_stem,
)
from rgbx_fusion.data.sets.paired import IMAGE_EXTENSIONS, check_depth_pngs, read_depth
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError, ShapeMismatchError
from rgbx_fusion.types import Sample


class MultiImageFolderRGBX(Dataset[Sample]):
    """Colour images and several aux modalities in their own folders, paired by stem.

    Args:
        split: ignored (every image is used); kept for the data module's factory call.
        rgb_dir: folder of colour images.
        aux_dirs: modality → folder, in the order the model was trained with (e.g.
            ``{depth: my_robot/depth, thermal: my_robot/thermal}``); modalities are
            ``depth`` (``depth_format`` encoding) and ``thermal`` (8/16-bit images).
        depth_format: on-disk depth encoding (see :mod:`rgbx_fusion.data.depth`).
        optional: modalities that may lack a file for an image (absent for that sample);
            a missing file of any other modality is an error, or with ``unpaired="skip"``
            leaves the image out with one warning.
        classes, palette, checkpoint: class names (or the checkpoint to read them from)
            and overlay colours.
        ignore_index: value of the (all-unlabelled) masks.

    Each sample's ``aux`` holds one channel per modality (0 where absent) and
    ``meta["present"]`` one bool per modality.
    """

    has_labels = False

    def __init__(
        self,
        split: str = "test",
        rgb_dir: str | Path = "rgb",
        aux_dirs: Mapping[str, str | Path] | None = None,
        depth_format: str | None = None,
        optional: Sequence[str] = (),
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        checkpoint: str | Path | None = None,
        unpaired: Literal["error", "skip"] = "error",
        ignore_index: int = 255,
    ) -> None:
        if not aux_dirs:
            raise ConfigError(
                "aux_dirs must map each modality to its folder, e.g. "
                "{depth: my_robot/depth, thermal: my_robot/thermal}"
            )
        unknown = [m for m in aux_dirs if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"aux_dirs names {unknown}; modalities are {MODALITIES}")
        if "depth" in aux_dirs and depth_format not in DEPTH_FORMATS:
            raise ConfigError(
                f"depth images need their on-disk encoding: set depth_format to one of "
                f"{DEPTH_FORMATS} (got {depth_format!r})"
            )
        stray = [m for m in optional if m not in aux_dirs]
        if stray:
            raise ConfigError(f"optional names {stray}, which are not in aux_dirs {list(aux_dirs)}")
        if unpaired not in ("error", "skip"):
            raise ConfigError(f"unpaired must be 'error' or 'skip', got {unpaired!r}")
        if classes is None and checkpoint is None:
            raise ConfigError(
                "MultiImageFolderRGBX needs the model's class names: pass classes, or "
                "checkpoint (the checkpoint you predict with)"
            )
        self.split = split
        self.rgb_dir = Path(rgb_dir)
        self.aux_dirs = {str(m): Path(d) for m, d in aux_dirs.items()}
        self.modality = ",".join(self.aux_dirs)
        self.modalities = dict.fromkeys(self.aux_dirs, 1)
        self.aux_channels = len(self.modalities)
        self.depth_format = depth_format
        self.optional = tuple(optional)
        self.classes, self.palette = classes_and_palette(classes, palette, checkpoint)
        self.ignore_index = ignore_index
        self.names, self.files = self._pair(unpaired)

    def _extensions(self, modality: str) -> tuple[str, ...]:
        if modality == "thermal":
            return THERMAL_EXTENSIONS
        return (".npy",) if self.depth_format == "npy_m" else (".png",)

    def _pair(self, unpaired: str) -> tuple[list[str], list[dict[str, Path | None]]]:
        rgb = index_by_stem(self.rgb_dir, IMAGE_EXTENSIONS, "colour")
        aux = {m: index_by_stem(d, self._extensions(m), m) for m, d in self.aux_dirs.items()}
        problems, keep = [], set(rgb)
        for m, files in aux.items():
            lonely_rgb = sorted(set(rgb) - set(files))
            if lonely_rgb and m not in self.optional:
                problems.append(f"no {m} file for {_names(lonely_rgb)} in {self.aux_dirs[m]}")
                keep -= set(lonely_rgb)
            lonely_aux = sorted(set(files) - set(rgb))
            if lonely_aux:
                problems.append(f"no colour image for {m} {_names(lonely_aux)} in {self.rgb_dir}")
        if problems and unpaired == "error":
            raise MissingFileError(
                self.rgb_dir,
                "every colour image paired with a file of the same stem in the folder of "
                "each modality that is not optional",
                "; ".join(problems),
                "add the missing files, declare the modality optional, or set "
                "unpaired='skip' to leave them out",
            )
        if problems:
            warnings.warn("; ".join(problems), UnpairedFilesWarning, stacklevel=3)
        names = sorted(keep)
        if not names:
            raise DatasetError(self.rgb_dir, "at least one complete set of images", "none")
        if "depth" in aux:
            assert self.depth_format is not None
            depth = [aux["depth"][n] for n in names if n in aux["depth"]]
            check_depth_pngs(depth, self.depth_format)
        pairs: list[dict[str, Path | None]] = [
            {"rgb": rgb[n], **{m: aux[m].get(n) for m in aux}} for n in names
        ]
        return names, pairs

    def __len__(self) -> int:
        return len(self.names)

    def read_aux(self, modality: str, path: Path) -> npt.NDArray[np.float32]:
        if modality == "depth":
            assert self.depth_format is not None
            return read_depth(path, self.depth_format)
        return read_thermal(path)

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        rgb_path = files["rgb"]
        assert rgb_path is not None
        rgb = read_rgb(rgb_path)
        rgb = rgb if rgb.flags.writeable else rgb.copy()  # torch wants writable arrays
        planes, present = [], []
        for m in self.aux_dirs:
            path = files[m]
            if path is None:
                planes.append(np.zeros(rgb.shape[:2], np.float32))
                present.append(False)
                continue
            plane = self.read_aux(m, path)
            if plane.shape[:2] != rgb.shape[:2]:
                raise ShapeMismatchError(
                    path,
                    f"the size of {rgb_path.name} ({rgb.shape[0]}×{rgb.shape[1]})",
                    f"{plane.shape[0]}×{plane.shape[1]}",
                    "register every modality to the colour camera (same size) first",
                )
            planes.append(plane)
            present.append(True)
        meta: dict[str, Any] = {
            "name": self.names[index],
            "rgb_path": str(rgb_path),
            "aux_paths": {m: None if files[m] is None else str(files[m]) for m in self.aux_dirs},
            "present": present,
        }
        mask = np.full(rgb.shape[:2], self.ignore_index, dtype=np.int64)
        return Sample(rgb=rgb, aux=np.stack(planes, axis=-1), mask=mask, meta=meta)

    def __repr__(self) -> str:
        dirs = ", ".join(f"{m}='{d}'" for m, d in self.aux_dirs.items())
        return f"{type(self).__name__}(rgb_dir='{self.rgb_dir}', {dirs}, n={len(self)})"
