"""SUN RGB-D: 10 335 indoor RGB-D images from four sensors, 37 classes, 5285 train / 5050 test.

Layout (per-split folders of rgb, depth, labels and each image's intrinsics):
``datasets/README.md``, "SUN RGB-D". Depth is SUN RGB-D's own encoding (millimetres
rotated by 3 bits); labels become 0..36 with void → 255; ``meta["K"]`` is the image's
own intrinsic matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.depth import DEPTH_FORMATS, SUSPICIOUS_DEPTH_M, read_image_array
from rgbx_fusion.data.sets.folder import read_rgb
from rgbx_fusion.data.sets.paired import (
    IMAGE_EXTENSIONS,
    AuxPart,
    PairedFiles,
    bit_palette,
    carve_val,
    check_depth_pngs,
    read_depth,
    read_void_zero_label,
)
from rgbx_fusion.errors import ConfigError, CorruptFileError, DatasetError, DepthFormatError

SPLITS = ("train", "val", "test")
CLASSES_37 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper",
    "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink",
    "lamp", "bathtub", "bag",
)  # fmt: skip


def read_intrinsics(path: Path) -> list[list[float]]:
    """A 3×3 intrinsic matrix written row-major as 9 numbers (``fx 0 cx  0 fy cy  0 0 1``)."""
    try:
        values = [float(v) for v in path.read_text().split()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(path, "9 numbers (a 3×3 K)", f"unreadable text ({exc})") from exc
    if len(values) != 9:
        raise DatasetError(path, "9 numbers: a 3×3 intrinsic matrix", f"{len(values)} numbers")
    k = np.array(values).reshape(3, 3)
    if k[2, 0] > 0 and k[0, 2] == 0:
        raise DatasetError(
            path,
            "K row-major (last row 0 0 1)",
            "a transposed K",
            "write fx 0 cx / 0 fy cy / 0 0 1",
        )
    if not np.allclose(k[2], (0, 0, 1)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise DatasetError(path, "fx, fy > 0 and last row 0 0 1", f"K = {k.tolist()}")
    return [[float(v) for v in row] for row in k]


def check_rotation(path: Path, depth: npt.NDArray[np.float32], depth_format: str) -> None:
    """Catch plain millimetre PNGs decoded as bit-rotated, and the reverse.

    Rotated storage is ``mm << 3`` below 8.19 m, so the 3 low bits of nearly
    every valid raw value are 0; in plain millimetres they are 0 for one value
    in eight. Either mistake shows as depth beyond 20 m, the only case checked.
    """
    if depth_format not in ("sun_rotated", "png16_mm") or depth.max() <= SUSPICIOUS_DEPTH_M:
        return
    raw = read_image_array(path).astype(np.uint32)
    valid = raw[raw > 0]
    low_bits_set = float(np.mean((valid & 7) != 0))
    found = f"depth up to {depth.max():.0f} m, low 3 bits set on {low_bits_set:.0%} of pixels"
    if depth_format == "sun_rotated" and low_bits_set > 0.5:
        raise DepthFormatError(
            path,
            "SUN RGB-D depth rotated by 3 bits (low 3 bits 0 below 8.19 m)",
            found,
            "these look like plain millimetres: set depth_format='png16_mm'",
        )
    if depth_format == "png16_mm" and low_bits_set < 0.01:
        raise DepthFormatError(
            path,
            "plain millimetres",
            found,
            "this is SUN RGB-D's bit-rotated encoding: set depth_format='sun_rotated'",
        )


class SUNRGBD(PairedFiles):
    """SUN RGB-D with 37 classes, depth in metres and per-image intrinsics.

    Like NYUDv2, SUN RGB-D ships only train and test; split ``"val"`` is a
    fixed-seed subset of train (``val_fraction``) that ``"train"`` then excludes.

    Args:
        split: ``"train"``, ``"val"`` (carved from train) or ``"test"``.
        root: dataset root (layout: ``datasets/README.md``, "SUN RGB-D").
        depth_format: on-disk depth encoding; SUN RGB-D's own is ``"sun_rotated"``.
            A depth range that contradicts it is an error naming the file.
        val_fraction: fraction of train that forms ``"val"`` (0 = no val split).
        val_seed: seed of the val draw.
        names: use these sample names instead of the split file / folder listing.
        aux_from_rgb: 3×3 rig transform, RGB pixel → aux pixel; overrides the
            ``aux_from_rgb`` key of ``root/dataset.json``. Aux is then resampled onto the
            RGB grid when loaded (:class:`~rgbx_fusion.data.sets.paired.PairedFiles`).
    """

    aux_channels = 1
    aux_kinds = ("depth",)

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/sunrgbd",
        depth_format: str = "sun_rotated",
        val_fraction: float = 0.0,
        val_seed: int = 0,
        names: Sequence[str] | None = None,
        aux_from_rgb: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(split, root, aux_from_rgb)
        if split not in SPLITS:
            raise ConfigError(f"SUNRGBD split must be one of {SPLITS}, got {split!r}")
        if depth_format not in DEPTH_FORMATS:
            raise ConfigError(f"depth_format must be one of {DEPTH_FORMATS}, got {depth_format!r}")
        self.depth_format = depth_format
        self.classes = CLASSES_37
        self.palette = bit_palette(len(CLASSES_37), offset=1)
        source = "test" if split == "test" else "train"
        base = self.root / source
        split_file = self.root / f"{source}.txt"
        listed_in = self.choose_names(names, split_file, base / "rgb")
        if names is None and split != "test":
            self.names = carve_val(self.names, split, val_fraction, val_seed)
        roles = {
            "rgb": ("rgb", IMAGE_EXTENSIONS),
            "depth": ("depth", (".png",)),
            "label": ("labels", (".png",)),
            "intrinsics": ("intrinsics", (".txt",)),
        }
        self.files = [
            {role: self.locate(base / d, n, ext, listed_in) for role, (d, ext) in roles.items()}
            for n in self.names
        ]
        check_depth_pngs([f["depth"] for f in self.files], depth_format)

    def read_inputs(self, files: dict[str, Path]) -> tuple[npt.NDArray[np.uint8], list[AuxPart]]:
        path = files["depth"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            depth = read_depth(path, self.depth_format)
        check_rotation(path, depth, self.depth_format)
        for warning in caught:  # only once the range was found consistent
            warnings.warn(warning.message, stacklevel=2)
        return read_rgb(files["rgb"]), [(path, depth)]

    def read_mask(self, path: Path) -> npt.NDArray[np.int64]:
        return read_void_zero_label(path, len(CLASSES_37), self.ignore_index)

    def sample_meta(self, index: int) -> dict[str, Any]:
        return {"name": self.names[index], "K": read_intrinsics(self.files[index]["intrinsics"])}
