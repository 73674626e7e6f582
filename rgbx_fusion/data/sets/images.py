"""Unlabelled RGB + depth (or thermal) images from one's own sensor, for ``predict``.

Two folders paired by file stem, without split files, labels or ``dataset.json``
(layout: ``datasets/README.md``, "Your own images for prediction"; the ``predict``
command line: ``docs/deployment.md``). The aux normalisation always comes from the
checkpoint; it is never estimated from these images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from rgbx_fusion.data.depth import DEPTH_FORMATS
from rgbx_fusion.data.rig import DeclaredTransform
from rgbx_fusion.data.sets.folder import MODALITIES, _default_palette, read_rgb, read_thermal
from rgbx_fusion.data.sets.paired import IMAGE_EXTENSIONS, check_depth_pngs, read_depth
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError, ShapeMismatchError
from rgbx_fusion.geometry.encodings import AUX_ENCODINGS, EncodeAux
from rgbx_fusion.types import Sample

THERMAL_EXTENSIONS = (".png", ".tif", ".tiff")


class UnpairedFilesWarning(UserWarning):
    """Images without a partner in the other folder were left out (``unpaired="skip"``)."""


def index_by_stem(folder: Path, extensions: Sequence[str], role: str) -> dict[str, Path]:
    """Map file stem → file for the images of ``folder``; two files with one stem are an error."""
    if not folder.is_dir():
        raise MissingFileError(folder, f"a folder of {role} images", "no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions or path.name.startswith("."):
            continue
        if path.stem in found:
            raise DatasetError(
                path,
                f"one {role} file per name",
                f"both {found[path.stem].name} and {path.name}",
                "keep one of them",
            )
        found[path.stem] = path
    if not found:
        raise DatasetError(folder, f"{role} images ({', '.join(extensions)})", "none")
    return found


def classes_and_palette(
    classes: Sequence[str] | None,
    palette: Sequence[Sequence[int]] | None,
    checkpoint: str | Path | None,
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Class names (given, else the checkpoint's) and overlay colours (given, else the
    default palette) of an unlabelled folder; a :class:`ConfigError` for too few colours."""
    if classes is None:
        assert checkpoint is not None
        classes = class_names_from_checkpoint(checkpoint)
    names = tuple(classes)
    if palette is not None and len(palette) < len(names):
        raise ConfigError(f"palette has {len(palette)} colours for {len(names)} classes")
    colours = (
        tuple(tuple(int(v) for v in c) for c in palette)
        if palette is not None
        else _default_palette(len(names))
    )
    return names, colours


def _names(stems: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(stems[:limit])
    return shown + (f" (+{len(stems) - limit} more)" if len(stems) > limit else "")


def class_names_from_checkpoint(checkpoint: str | Path) -> list[str]:
    """The class names stored with a checkpoint written by ``rgbx-fusion fit``."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingFileError(path, "a checkpoint to read the class names from", "no such file")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    names = (state.get("hyper_parameters") or {}).get("class_names")
    if not names:
        raise DatasetError(
            path, "class_names in the checkpoint's hyper_parameters", "none", "pass classes"
        )
    return [str(n) for n in names]


class ImageFolderRGBX(Dataset[Sample]):
    """RGB + depth or thermal images from two folders, paired by stem, without labels.

    Every sample's ``mask`` is ``ignore_index`` everywhere and its ``meta`` holds the
    ``name`` (the stem, used for the output files), both file paths and ``K`` when given.

    Args:
        split: accepted for the dataset contract and ignored: every split is the folder.
        rgb_dir: folder of 8-bit colour images (``.png``, ``.jpg``, ``.jpeg``).
        aux_dir: folder of depth or thermal images with the same stems, registered to the
            colour images (same size), unless ``aux_from_rgb`` is given.
        modality: ``"depth"`` or ``"thermal"``.
        depth_format: on-disk depth encoding (see :mod:`rgbx_fusion.data.depth`); required
            for depth. ``npy_m`` reads ``.npy`` files, the others ``.png``.
        K: 3×3 intrinsics of the colour camera (0-based pixel centres), stored in every
            ``meta`` and needed by the ``hha`` and ``surface_normals`` encodings.
        aux_encoding: depth encoding the model was trained on, a key of
            :data:`~rgbx_fusion.geometry.encodings.AUX_ENCODINGS` (``metres`` by default).
        classes: the model's class names in order; ``None`` reads them from ``checkpoint``.
        palette: overlay colours per class; ``None`` picks a default palette.
        checkpoint: checkpoint whose class names are used when ``classes`` is ``None``.
        unpaired: ``"error"`` (default) fails naming images without a partner; ``"skip"``
            leaves them out with one warning.
        ignore_index: value of the (all-unlabelled) masks.
        aux_from_rgb: 3×3 rig transform, RGB pixel → aux pixel (the ``aux_from_rgb`` of a
            ``dataset.json``, e.g. written by ``rgbx-fusion calibrate``). Every aux image is
            then resampled onto the colour image's grid when it is loaded (depth by nearest
            neighbour, thermal bilinearly, outside the aux frame → 0; see
            :mod:`rgbx_fusion.data.rig`), so it may have another size.
    """

    #: No ground truth: the DataModule must not estimate aux statistics from these images.
    has_labels = False

    def __init__(
        self,
        split: str = "test",
        rgb_dir: str | Path = "rgb",
        aux_dir: str | Path = "depth",
        modality: str = "depth",
        depth_format: str | None = None,
        K: Sequence[Sequence[float]] | None = None,
        aux_encoding: str = "metres",
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        checkpoint: str | Path | None = None,
        unpaired: Literal["error", "skip"] = "error",
        ignore_index: int = 255,
        aux_from_rgb: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if modality == "depth" and depth_format not in DEPTH_FORMATS:
            raise ConfigError(
                f"depth images need their on-disk encoding: set depth_format to one of "
                f"{DEPTH_FORMATS} (got {depth_format!r})"
            )
        if modality == "thermal" and aux_encoding != "metres":
            raise ConfigError(f"aux_encoding={aux_encoding!r} applies to depth, not thermal")
        if unpaired not in ("error", "skip"):
            raise ConfigError(f"unpaired must be 'error' or 'skip', got {unpaired!r}")
        self.split = split
        self.rgb_dir, self.aux_dir = Path(rgb_dir), Path(aux_dir)
        self.modality = modality
        self.depth_format = depth_format
        self.K = None if K is None else [[float(v) for v in row] for row in K]
        if self.K is not None and np.asarray(self.K).shape != (3, 3):
            raise ConfigError(f"K must be 3×3, got {np.asarray(self.K).shape}")
        if aux_encoding not in AUX_ENCODINGS:
            raise ConfigError(
                f"aux_encoding must be one of {sorted(AUX_ENCODINGS)}, got {aux_encoding!r}"
            )
        if AUX_ENCODINGS[aux_encoding].needs_intrinsics and self.K is None:
            raise ConfigError(
                f"aux_encoding={aux_encoding!r} needs the camera intrinsics: set K to "
                "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] of the colour camera"
            )
        self.encode = None if aux_encoding == "metres" else EncodeAux(aux_encoding, self.K)
        self.aux_channels = AUX_ENCODINGS[aux_encoding].channels if modality == "depth" else 1
        if classes is None and checkpoint is None:
            raise ConfigError(
                "ImageFolderRGBX needs the model's class names: pass classes, or checkpoint "
                "(the checkpoint you predict with)"
            )
        self.classes, self.palette = classes_and_palette(classes, palette, checkpoint)
        self.ignore_index = ignore_index
        self.rig = DeclaredTransform.load(None, {}, aux_from_rgb)
        self.names, self.files = self._pair(unpaired)

    def _aux_extensions(self) -> tuple[str, ...]:
        if self.modality == "thermal":
            return THERMAL_EXTENSIONS
        return (".npy",) if self.depth_format == "npy_m" else (".png",)

    def _pair(self, unpaired: str) -> tuple[list[str], list[dict[str, Path]]]:
        rgb = index_by_stem(self.rgb_dir, IMAGE_EXTENSIONS, "colour")
        aux = index_by_stem(self.aux_dir, self._aux_extensions(), self.modality)
        lonely_rgb = sorted(set(rgb) - set(aux))
        lonely_aux = sorted(set(aux) - set(rgb))
        if lonely_rgb or lonely_aux:
            parts = []
            if lonely_rgb:
                parts.append(f"no {self.modality} file for {_names(lonely_rgb)} in {self.aux_dir}")
            if lonely_aux:
                parts.append(f"no colour image for {_names(lonely_aux)} in {self.rgb_dir}")
            if unpaired == "error":
                raise MissingFileError(
                    self.rgb_dir,
                    f"every colour image paired with a {self.modality} file of the same stem "
                    f"in {self.aux_dir} (extensions {', '.join(self._aux_extensions())})",
                    "; ".join(parts),
                    "add the missing files, or set unpaired='skip' to leave them out",
                )
            warnings.warn("; ".join(parts), UnpairedFilesWarning, stacklevel=3)
        names = sorted(set(rgb) & set(aux))
        if not names:
            raise DatasetError(self.rgb_dir, "at least one rgb/aux pair", "none")
        if self.modality == "depth":
            assert self.depth_format is not None
            check_depth_pngs([aux[n] for n in names], self.depth_format)
        return names, [{"rgb": rgb[n], "aux": aux[n]} for n in names]

    def __len__(self) -> int:
        return len(self.names)

    def read_aux(self, path: Path) -> npt.NDArray[np.float32]:
        if self.modality == "depth":
            assert self.depth_format is not None
            return read_depth(path, self.depth_format)
        return read_thermal(path)

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        rgb = read_rgb(files["rgb"])
        rgb = rgb if rgb.flags.writeable else rgb.copy()  # torch wants writable arrays
        aux = self.read_aux(files["aux"])
        if self.rig is not None:
            aux = self.rig.resample(aux, rgb.shape[:2], self.modality)
        if aux.shape[:2] != rgb.shape[:2]:
            raise ShapeMismatchError(
                files["aux"],
                f"the size of {files['rgb'].name} ({rgb.shape[0]}×{rgb.shape[1]})",
                f"{aux.shape[0]}×{aux.shape[1]}",
                "register the aux images to the colour camera (same size) first, or pass "
                "their rig transform as aux_from_rgb",
            )
        meta: dict[str, Any] = {
            "name": self.names[index],
            "rgb_path": str(files["rgb"]),
            "aux_path": str(files["aux"]),
        }
        if self.K is not None:
            meta["K"] = self.K
        mask = np.full(rgb.shape[:2], self.ignore_index, dtype=np.int64)
        sample = Sample(rgb=rgb, aux=aux[..., None], mask=mask, meta=meta)
        return self.encode(sample) if self.encode is not None else sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rgb_dir='{self.rgb_dir}', aux_dir='{self.aux_dir}', "
            f"n={len(self)})"
        )
