"""Generic folder dataset: ``rgb/``, ``depth/`` or ``thermal/``, ``labels/`` and split files.

On-disk layout and ``depth_format`` values: ``datasets/README.md``, "Generic folder layout".
Every listed file is checked when the dataset is built, so a missing file fails
at once with its name, not later inside a DataLoader worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset

from rgbx_fusion.data.depth import DEPTH_FORMATS, decode_depth, read_image_array
from rgbx_fusion.data.rig import DeclaredTransform, validate_matrix
from rgbx_fusion.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)
from rgbx_fusion.types import Sample

MODALITIES = ("depth", "thermal")
_EXTENSIONS = {
    "rgb": (".png", ".jpg", ".jpeg"),
    "labels": (".png",),
    "thermal": (".png", ".tif", ".tiff"),
}

_UNREGISTERED_FIX = (
    "an aux camera that is not registered to the colour camera needs its rig transform: "
    "declare aux_from_rgb in dataset.json (see datasets/README.md)"
)


def _index_folder(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    """Map file stem → path for every file of the given extensions in ``folder``."""
    if not folder.is_dir():
        raise MissingFileError(folder, "a folder", "nothing", "check data.root and the layout")
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in extensions}


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (``{}`` when the file does not exist)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, "valid JSON (UTF-8)", f"a parse error ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "a JSON object", type(data).__name__)
    return data


def read_split(path: Path) -> list[str]:
    """Read a split file: one name per line, blank lines and ``#`` comments ignored."""
    if not path.is_file():
        raise MissingFileError(path, "a split file", "no such file", "create it or fix data.root")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(path, "a UTF-8 text file", f"undecodable bytes ({exc})") from exc
    names = [ln.strip() for ln in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DatasetError(path, "at least one sample name", "an empty split")
    return names


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """Read an 8-bit colour image as H×W×3 RGB (PIL decodes in RGB order)."""
    arr = read_image_array(path)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DatasetError(path, "an 8-bit RGB image (H×W×3)", f"{arr.dtype} array {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def read_label(path: Path, num_classes: int, ignore_index: int) -> npt.NDArray[np.int64]:
    """Read a label PNG and check every value is a class index or ``ignore_index``."""
    arr = read_image_array(path)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16, np.int32):
        raise DatasetError(path, "a single-channel label PNG", f"{arr.dtype} array {arr.shape}")
    mask = arr.astype(np.int64)
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})[:10]
        raise LabelRangeError(
            path,
            f"labels in [0, {num_classes}) or {ignore_index}",
            f"values {values}",
            "check num_classes / the label mapping of this dataset",
        )
    return mask


def read_thermal(path: Path) -> npt.NDArray[np.float32]:
    """Read an 8- or 16-bit single-channel thermal image, scaled to [0, 1]."""
    arr = read_image_array(path)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise DatasetError(
            path, "a single-channel 8/16-bit thermal image", f"{arr.dtype} {arr.shape}"
        )
    top = 255.0 if arr.dtype == np.uint8 else 65535.0
    return arr.astype(np.float32) / top


class FolderRGBX(Dataset[Sample]):
    """RGB-X dataset in the generic folder layout.

    Args:
        split: name of the split file in ``root/splits`` (``train``, ``val``, ``test``...).
        root: dataset root folder.
        modality: ``"depth"`` or ``"thermal"``; names the aux folder. Several,
            comma-separated (``"depth,thermal"``), make a multi-modality dataset: ``aux``
            holds one channel per modality in that order, ``modalities`` names them, and
            ``meta["present"]`` says which were read for the sample (a modality that
            ``dataset.json`` declares ``optional`` may lack files: absent, zeros).
        depth_format: on-disk depth encoding (see :mod:`rgbx_fusion.data.depth`);
            ``None`` takes it from ``dataset.json``. Ignored for thermal.
        classes: class names; ``None`` takes them from ``dataset.json``.
        ignore_index: label value of unlabelled pixels.
        aux_from_rgb: 3×3 rig transform, RGB pixel → stored aux pixel; overrides the
            ``aux_from_rgb`` key of ``dataset.json``. With several modalities, a dict
            modality → 3×3 (each overriding ``modalities.<name>.aux_from_rgb``), applied
            to that modality alone. With either, every aux image is
            resampled onto the RGB grid when it is loaded (:mod:`rgbx_fusion.data.rig`:
            depth by nearest neighbour, thermal bilinearly, outside the aux frame → 0),
            so aux may have another size than RGB. A per-frame ground truth T of
            ``meta.json`` (``aux_from_rgb``) then becomes the misregistration left after
            the declared D, ``inv(D) @ T``, so end-point errors stay correct.
    """

    ignore_index: int = 255

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/synthetic",
        modality: str = "depth",
        depth_format: str | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = 255,
        aux_from_rgb: Sequence[Sequence[float]]
        | dict[str, Sequence[Sequence[float]]]
        | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        kinds = tuple(m.strip() for m in modality.split(","))
        if any(m not in MODALITIES for m in kinds) or len(set(kinds)) != len(kinds):
            raise ConfigError(
                f"modality must be one of {MODALITIES} or several of them comma-separated, "
                f"each once; got {modality!r}"
            )
        self.modality = modality
        self.aux_kinds = kinds
        info = read_json_object(self.root / "dataset.json")
        self.sample_meta: dict[str, Any] = read_json_object(self.root / "meta.json")
        names = classes if classes is not None else info.get("classes")
        if not names:
            raise DatasetError(
                self.root / "dataset.json", "a 'classes' list (or the classes argument)", "none"
            )
        self.classes = tuple(names)
        pal = palette if palette is not None else info.get("palette")
        self.palette = tuple(tuple(c) for c in pal) if pal else _default_palette(len(self.classes))
        self.ignore_index = int(info.get("ignore_index", ignore_index))
        self.depth_format = depth_format or info.get("depth_format")
        if "depth" in kinds and self.depth_format not in DEPTH_FORMATS:
            raise ConfigError(
                f"{self.root}: depth_format must be one of {DEPTH_FORMATS} (found "
                f"{self.depth_format!r}); set data.dataset.init_args.depth_format"
            )
        self.camera_k = info.get("K")
        found = info.get("modalities")
        declared: dict[str, Any] = found if isinstance(found, dict) else {}
        self.rig: DeclaredTransform | None = None
        self.rigs: dict[str, DeclaredTransform] = {}
        if len(kinds) > 1:
            self.rigs = _modality_rigs(
                self.root / "dataset.json", info, declared, kinds, aux_from_rgb
            )
        elif isinstance(aux_from_rgb, Mapping):
            raise ConfigError(
                f"aux_from_rgb as a dict (modality → matrix) is for several modalities; "
                f"with modality={modality!r} pass the one 3×3 matrix"
            )
        else:
            self.rig = DeclaredTransform.load(self.root / "dataset.json", info, aux_from_rgb)
        self.aux_channels = len(kinds)
        if len(kinds) > 1:
            self.modalities = dict.fromkeys(kinds, 1)
        self.optional = {
            m for m in kinds if isinstance(declared.get(m), dict) and declared[m].get("optional")
        }
        self.names = read_split(self.root / "splits" / f"{split}.txt")
        self.files = self._resolve_files()

    def _extensions(self, kind: str) -> tuple[str, ...]:
        if kind == "depth":
            return (".npy",) if self.depth_format == "npy_m" else (".png",)
        return _EXTENSIONS[kind]

    def _resolve_files(self) -> list[dict[str, Path]]:
        folders = {"rgb": "rgb", "labels": "labels"}
        if len(self.aux_kinds) == 1:
            folders["aux"] = self.aux_kinds[0]
        else:
            folders.update({f"aux:{m}": m for m in self.aux_kinds})
        exts = {k: self._extensions(v) for k, v in folders.items()}
        index = {k: _index_folder(self.root / v, exts[k]) for k, v in folders.items()}
        split_file = self.root / "splits" / f"{self.split}.txt"
        files = []
        for name in self.names:
            entry = {}
            for key, found in index.items():
                if name not in found and folders[key] in self.optional:
                    continue  # an optional modality without this frame: absent
                if name not in found:
                    folder = self.root / folders[key]
                    raise MissingFileError(
                        folder / name,
                        f"a file listed in {split_file} (extensions {exts[key]})",
                        "no such file",
                    )
                entry[key] = found[name]
            files.append(entry)
        return files

    def __len__(self) -> int:
        return len(self.names)

    def read_aux(self, path: Path, kind: str | None = None) -> npt.NDArray[np.float32]:
        if (kind or self.modality) == "depth":
            assert self.depth_format is not None
            return decode_depth(path, self.depth_format)
        return read_thermal(path)

    def _read_modalities(
        self, files: dict[str, Path], size: tuple[int, ...]
    ) -> tuple[npt.NDArray[np.float32], list[bool]]:
        """Every aux modality of a multi-modality sample, stacked (H×W×M), and which were read."""
        planes, present = [], []
        for kind in self.aux_kinds:
            path = files.get(f"aux:{kind}")
            plane = np.zeros(size[:2], np.float32) if path is None else self.read_aux(path, kind)
            if path is not None and kind in self.rigs:
                plane = self.rigs[kind].resample(plane, (size[0], size[1]), kind)
            if plane.shape[:2] != size[:2]:
                assert path is not None
                raise ShapeMismatchError(
                    path,
                    f"the size of {files['rgb'].name} ({size[0]}×{size[1]})",
                    f"{plane.shape[0]}×{plane.shape[1]}",
                    _UNREGISTERED_FIX,
                )
            planes.append(plane)
            present.append(path is not None)
        return np.stack(planes, axis=-1), present

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        rgb = read_rgb(files["rgb"])
        if len(self.aux_kinds) > 1:
            return self._multi_sample(index, files, rgb)
        aux = self.read_aux(files["aux"])
        if self.rig is not None:
            aux = self.rig.resample(aux, rgb.shape[:2], self.modality)
        mask = read_label(files["labels"], len(self.classes), self.ignore_index)
        for key, arr in (("aux", aux), ("labels", mask)):
            if arr.shape[:2] != rgb.shape[:2]:
                raise ShapeMismatchError(
                    files[key],
                    f"the size of {files['rgb'].name} ({rgb.shape[0]}×{rgb.shape[1]})",
                    f"{arr.shape[0]}×{arr.shape[1]}",
                    _UNREGISTERED_FIX if key == "aux" else "",
                )
        meta = self._meta(index)
        if self.rig is not None:
            meta = self.rig.adjust_meta(meta)
        return Sample(rgb=rgb, aux=aux[..., None], mask=mask, meta=meta)

    def _meta(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        meta: dict[str, Any] = {"name": name, **self.sample_meta.get(name, {})}
        if "K" not in meta and self.camera_k is not None:
            meta["K"] = self.camera_k
        return meta

    def _multi_sample(
        self, index: int, files: dict[str, Path], rgb: npt.NDArray[np.uint8]
    ) -> Sample:
        aux, present = self._read_modalities(files, rgb.shape)
        mask = read_label(files["labels"], len(self.classes), self.ignore_index)
        if mask.shape[:2] != rgb.shape[:2]:
            raise ShapeMismatchError(
                files["labels"],
                f"the size of {files['rgb'].name} ({rgb.shape[0]}×{rgb.shape[1]})",
                f"{mask.shape[0]}×{mask.shape[1]}",
            )
        meta = {**self._meta(index), "present": present}
        return Sample(rgb=rgb, aux=aux, mask=mask, meta=meta)


def _default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """A deterministic, well-spread palette (golden-ratio hues)."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return tuple(out)


def _modality_rigs(
    dataset_json: Path,
    info: Mapping[str, Any],
    declared: Mapping[str, Any],
    kinds: Sequence[str],
    override: Any,
) -> dict[str, DeclaredTransform]:
    """The declared rig transform of each modality of a multi-modality dataset.

    Each modality's own ``aux_from_rgb`` (``modalities.<name>.aux_from_rgb`` in
    ``dataset.json``, or the ``aux_from_rgb`` option as a dict name → 3×3), applied to
    that modality only; a modality without one is already on the RGB grid.

    Raises:
        ConfigError: a top-level ``aux_from_rgb`` or one matrix for several modalities
            (which modality would it be?), a name that is not a modality, or a bad matrix.
    """
    if info.get("aux_from_rgb") is not None:
        raise ConfigError(
            f"{dataset_json}: the top-level 'aux_from_rgb' is ambiguous with several aux "
            f"modalities ({', '.join(kinds)}); declare each modality's under "
            "modalities.<name>.aux_from_rgb"
        )
    if override is not None and not isinstance(override, Mapping):
        raise ConfigError(
            f"aux_from_rgb with several modalities ({', '.join(kinds)}) must be a dict "
            "modality → 3×3 matrix"
        )
    overrides = dict(override or {})
    unknown = [m for m in overrides if m not in kinds]
    if unknown:
        raise ConfigError(f"aux_from_rgb names {unknown}, which are not modalities {list(kinds)}")
    rigs = {}
    for kind in kinds:
        entry = declared.get(kind)
        section = entry if isinstance(entry, Mapping) else {}
        option = f"data.dataset.init_args.aux_from_rgb[{kind!r}]"
        rig = (
            DeclaredTransform.load(None, {}, overrides[kind], option) if kind in overrides else None
        )
        if rig is None and section.get("aux_from_rgb") is not None:
            source = f"{dataset_json}, key 'modalities.{kind}.aux_from_rgb'"
            rig = DeclaredTransform(validate_matrix(section["aux_from_rgb"], source), source)
        if rig is not None:
            rigs[kind] = rig
    return rigs
