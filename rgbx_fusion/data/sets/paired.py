"""What the real-dataset readers share: samples made of files that share a name.

NYUDv2, SUN RGB-D, MFNet and PST900 store every sample as an RGB image, one or
more aux images and a label map under the same name. This module holds the
parts they have in common:

* listing and checking every file when the dataset is built (a missing file
  fails at once, naming the file and the split that lists it);
* the two label conventions — ``0 = void`` (NYUDv2, SUN RGB-D: shift by one,
  void → 255) and ``0 = a real class`` (MFNet, PST900: no shift);
* the validation subset carved with a fixed seed from a train-only release;
* depth reading with the checks that catch silently wrong encodings (8-bit
  PNGs min-max scaled per image where metric 16-bit depth is declared);
* the optional rig transform (``aux_from_rgb`` in ``root/dataset.json`` or the
  readers' ``aux_from_rgb`` argument) that resamples every aux part onto the RGB
  grid when a sample is loaded (:mod:`rgbx_fusion.data.rig`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset

from rgbx_fusion.data.depth import LossyDepthWarning, decode_depth, read_image_array
from rgbx_fusion.data.rig import DeclaredTransform
from rgbx_fusion.data.sets.folder import read_json_object, read_split
from rgbx_fusion.errors import (
    ConfigError,
    DatasetError,
    DepthFormatError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)
from rgbx_fusion.types import Sample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
Palette = tuple[tuple[int, int, int], ...]
#: One aux component of a sample: the file it came from and its H×W or H×W×C array.
AuxPart = tuple[Path, npt.NDArray[Any]]

MINMAX_FIX = (
    "use the metric originals (16-bit PNG or .npy in metres); to train on relative depth "
    "anyway declare depth_format='png8_minmax' (lossy: each image is scaled to [0, 1])"
)


def split_names(path: Path) -> list[str]:
    """Sample names listed in a split file.

    A line is a bare name (``0003``) or paths separated by whitespace
    (``RGB/0.jpg<TAB>Label/0.png``, the SA-Gate / CMX style); only the first
    column counts and a path is reduced to its file stem.
    """
    names = []
    for line in read_split(path):
        first = line.split()[0]
        has_path = "/" in first or Path(first).suffix.lower() in IMAGE_EXTENSIONS
        names.append(Path(first).stem if has_path else first)
    return names


def folder_names(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted stems of the image files in ``folder`` (releases that ship no split files)."""
    if not folder.is_dir():
        raise MissingFileError(folder, "a folder of images", "no such folder", "check root")
    names = sorted(
        p.stem for p in folder.iterdir() if p.suffix.lower() in extensions and p.name[0] != "."
    )
    if not names:
        raise DatasetError(folder, "at least one image file", "an empty split (no images)")
    return names


def carve_val(names: Sequence[str], split: str, fraction: float, seed: int) -> list[str]:
    """The ``train`` or ``val`` part of a train list split by a fixed-seed random draw.

    Only ``split`` ``"train"`` and ``"val"`` are carved; ``val`` needs
    ``fraction > 0``. The draw runs over the sorted names, so it does not depend
    on the order of the split file.

    >>> names = [f"{i:03d}" for i in range(10)]
    >>> val = carve_val(names, "val", 0.2, seed=0)
    >>> len(val), sorted(set(val) | set(carve_val(names, "train", 0.2, seed=0))) == names
    (2, True)
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        if split == "val":
            raise ConfigError(
                "this dataset ships only train and test; set val_fraction (e.g. 0.1) to carve "
                "a validation subset from train, so that model selection never sees test"
            )
        return list(names)
    ordered = sorted(set(names))
    n_val = max(1, round(fraction * len(ordered)))
    if n_val >= len(ordered):
        raise ConfigError(f"val_fraction={fraction} leaves no training images ({len(ordered)})")
    rng = np.random.default_rng(seed)
    chosen = {ordered[i] for i in rng.choice(len(ordered), size=n_val, replace=False).tolist()}
    keep_val = split == "val"
    return [n for n in names if (n in chosen) == keep_val]


def read_void_zero_label(path: Path, num_valid: int, ignore_index: int = 255) -> npt.NDArray[Any]:
    """Label map stored with 0 = void and 1..K = classes → 0..K-1, void → ``ignore_index``.

    The shift is computed in int64: ``uint8 - 1`` would wrap void to 255 only by
    accident, and a label file that is *already* shifted (0-based, 255 = void)
    is caught here as out of range instead of being shifted twice.
    """
    raw = read_image_array(path)
    if raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16, np.int32):
        raise DatasetError(
            path,
            "a single-channel label PNG (class ids)",
            f"{raw.dtype} array {raw.shape}",
            "a 3-channel image is a colour rendering of the labels, not the ids",
        )
    values = raw.astype(np.int64)
    bad = values > num_valid
    if bad.any():
        found = sorted(int(v) for v in np.unique(values[bad]))
        fix = "check the label mapping (raw NYU labels have 894 classes: prepare with --mapping)"
        if ignore_index in found:
            fix = (
                f"the file holds {ignore_index}: it looks already shifted (0-based, "
                f"{ignore_index} = void) while this layout stores 0 = void and 1..{num_valid}"
            )
        raise LabelRangeError(
            path, f"labels in [0, {num_valid}] with 0 = void", f"values {found[:10]}", fix
        )
    mask = values - 1
    mask[values == 0] = ignore_index
    return mask


def is_minmax_scaled(raw: npt.NDArray[Any]) -> bool:
    """8-bit image spanning exactly 0..255: the signature of per-image min-max scaling."""
    return raw.dtype == np.uint8 and int(raw.min()) == 0 and int(raw.max()) == 255


def read_depth(path: Path, depth_format: str) -> npt.NDArray[np.float32]:
    """:func:`decode_depth`, naming min-max scaled 8-bit PNGs when 16-bit is declared.

    The per-file lossy warning of ``png8_minmax`` is silenced here because
    :func:`check_depth_pngs` already warned once for the whole dataset.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LossyDepthWarning)
            return decode_depth(path, depth_format)
    except DepthFormatError as exc:
        if depth_format != "png8_minmax" and path.suffix.lower() == ".png":
            raw = read_image_array(path)
            if is_minmax_scaled(raw):
                raise DepthFormatError(
                    path,
                    f"a 16-bit PNG for depth_format={depth_format!r}",
                    "an 8-bit PNG spanning 0–255 (min-max scaled per image, no metric scale)",
                    MINMAX_FIX,
                ) from exc
        raise


def check_depth_pngs(paths: Sequence[Path], depth_format: str, limit: int = 8) -> None:
    """Look at up to ``limit`` evenly spaced depth PNGs when the dataset is built.

    8-bit depth is an error when 16-bit metric depth is declared. With
    ``png8_minmax`` declared it is legal but lossy and gets one warning, saying
    whether every checked image spans the full 0–255 range (per-image min-max
    scaling: depth is only relative within each image).
    """
    pngs = [p for p in paths if p.suffix.lower() == ".png"]
    if not pngs:
        return
    pick = np.unique(np.linspace(0, len(pngs) - 1, min(limit, len(pngs))).round().astype(int))
    raws = [(pngs[i], read_image_array(pngs[i])) for i in pick]
    eight_bit = [(p, r) for p, r in raws if r.dtype == np.uint8]
    if not eight_bit:
        return
    minmax = all(is_minmax_scaled(r) for _, r in raws)
    folder = eight_bit[0][0].parent
    if depth_format == "png8_minmax":
        how = (
            f"all {len(raws)} checked images span the full 0–255 range: min-max scaled per image"
            if minmax
            else "not every image spans 0–255 (a fixed scale?), yet it is read as /255"
        )
        warnings.warn(
            f"{folder}: 8-bit depth has no metric scale ({how}); aux values are in [0, 1], "
            "not metres",
            LossyDepthWarning,
            stacklevel=3,
        )
        return
    path, _ = eight_bit[0]
    found = "8-bit PNGs"
    if minmax:
        found += ", spanning 0–255 on every checked image (min-max scaled per image)"
    raise DepthFormatError(
        path, f"16-bit PNGs for depth_format={depth_format!r}", found, MINMAX_FIX
    )


def read_unit_image(path: Path, channels: int) -> npt.NDArray[np.float32]:
    """An 8-bit image with ``channels`` channels (HHA: 3) scaled to [0, 1]."""
    arr = read_image_array(path)
    got = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or got != channels:
        raise DatasetError(
            path, f"an 8-bit image with {channels} channel(s)", f"{arr.dtype} array {arr.shape}"
        )
    return arr.astype(np.float32) / 255.0


def bit_palette(n: int, offset: int = 0) -> Palette:
    """The PASCAL VOC colour map (bits of the index spread over R, G, B), from ``offset``.

    >>> bit_palette(3)
    ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    """
    out = []
    for index in range(offset, offset + n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= (c & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


class PairedFiles(Dataset[Sample]):
    """Base of the real-dataset readers: ``files[i]`` maps a role to the file of sample ``i``.

    Subclasses fill ``classes``, ``palette``, ``aux_channels``, ``names`` and
    ``files`` (roles ``"rgb"`` and ``"label"`` at least) in ``__init__`` and
    implement :meth:`read_inputs` and :meth:`read_mask`; this class checks
    that rgb, aux and labels share one size and assembles the :class:`Sample`.

    A rig transform ``aux_from_rgb`` (the argument, else the key of
    ``root/dataset.json``) resamples every aux part onto the RGB grid before that
    check, each by its kind in :attr:`aux_kinds` (``"depth"`` and ``"hha"`` by nearest
    neighbour, ``"thermal"`` bilinearly; parts beyond the tuple count as depth). A
    ground-truth ``aux_from_rgb`` T in ``meta`` becomes ``inv(D) @ T``, the
    misregistration left after the declared D.
    """

    ignore_index: int = 255
    classes: tuple[str, ...]
    palette: Palette
    aux_channels: int
    #: Kind of each aux part returned by :meth:`read_inputs`, in order (for resampling).
    aux_kinds: tuple[str, ...] = ()

    def __init__(
        self, split: str, root: str | Path, aux_from_rgb: Sequence[Sequence[float]] | None = None
    ) -> None:
        self.split = split
        self.root = Path(root)
        info_path = self.root / "dataset.json"
        self.rig = DeclaredTransform.load(info_path, read_json_object(info_path), aux_from_rgb)
        self.names: list[str] = []
        self.files: list[dict[str, Path]] = []
        self._listings: dict[tuple[Path, tuple[str, ...]], dict[str, Path]] = {}

    def choose_names(
        self,
        names: Sequence[str] | None,
        split_file: Path,
        folder: Path,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> str:
        """Set ``self.names`` from ``names``, else the split file, else a folder listing.

        Returns where the names came from, for error messages.
        """
        if names is not None:
            self.names = list(names)
            if not self.names:
                raise DatasetError(None, "at least one sample name", "an empty names list")
            return "the names argument"
        if split_file.is_file():
            self.names = split_names(split_file)
            return str(split_file)
        self.names = folder_names(folder, extensions)
        return str(folder)

    def locate(self, folder: Path, name: str, extensions: Sequence[str], listed_in: str) -> Path:
        """The file ``folder/name.<ext>``; a typed error naming it and its split if absent."""
        key = (folder, tuple(extensions))
        if key not in self._listings:
            if not folder.is_dir():
                raise MissingFileError(
                    folder,
                    f"a folder holding the files listed in {listed_in}",
                    "no such folder",
                    "check root and the layout in datasets/README.md",
                )
            self._listings[key] = {
                p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions
            }
        hit = self._listings[key].get(name)
        if hit is None:
            others = sorted(p.name for p in folder.glob(f"{name}.*"))
            found = f"no such file (but {', '.join(others)}: check the declared format)"
            raise MissingFileError(
                folder / name,
                f"a file listed in {listed_in} (extension {' or '.join(extensions)})",
                found if others else "no such file",
            )
        return hit

    def read_inputs(self, files: dict[str, Path]) -> tuple[npt.NDArray[np.uint8], list[AuxPart]]:
        """RGB (H×W×3 uint8, RGB order) and the aux parts of one sample."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> npt.NDArray[np.int64]:
        """The label map as H×W int64 class indices with ``ignore_index``."""
        raise NotImplementedError

    def sample_meta(self, index: int) -> dict[str, Any]:
        """``meta`` of sample ``index``; subclasses add intrinsics and the like."""
        return {"name": self.names[index]}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        rgb, parts = self.read_inputs(files)
        if self.rig is not None:
            rig = self.rig
            kinds = self.aux_kinds
            parts = [
                (path, rig.resample(arr, rgb.shape[:2], kinds[i] if i < len(kinds) else "depth"))
                for i, (path, arr) in enumerate(parts)
            ]
        mask = self.read_mask(files["label"])
        for path, arr in [*parts, (files["label"], mask)]:
            if arr.shape[:2] != rgb.shape[:2]:
                raise ShapeMismatchError(
                    path,
                    f"the size of {files['rgb'].name} ({rgb.shape[0]}×{rgb.shape[1]})",
                    f"{arr.shape[0]}×{arr.shape[1]}",
                )
        aux = np.concatenate([a.reshape(*a.shape[:2], -1) for _, a in parts], axis=2)
        meta = self.sample_meta(index)
        return Sample(
            rgb=rgb,
            aux=np.ascontiguousarray(aux, dtype=np.float32),
            mask=mask.astype(np.int64, copy=False),
            meta=meta if self.rig is None else self.rig.adjust_meta(meta),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, root='{self.root}', n={len(self)})"
