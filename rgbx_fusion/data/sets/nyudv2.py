"""NYU Depth v2 (NYUDv2): 1449 labelled indoor RGB-D frames, official split 795 train / 654 test.

Two on-disk layouts are read (``layout``: ``"sagate"``, written by ``rgbx-fusion prepare
nyudv2``, or ``"esanet"``), both described in ``datasets/README.md``, "NYU Depth v2".
Labels become 0..39 with void → 255; ``num_classes=13`` maps them further with the
standard 40 → 13 mapping. ``meta["K"]`` holds the NYU RGB camera's intrinsics at 640×480.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.depth import DEPTH_FORMATS
from rgbx_fusion.data.sets.folder import read_rgb
from rgbx_fusion.data.sets.paired import (
    IMAGE_EXTENSIONS,
    AuxPart,
    PairedFiles,
    bit_palette,
    carve_val,
    check_depth_pngs,
    read_depth,
    read_unit_image,
    read_void_zero_label,
    split_names,
)
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError

logger = logging.getLogger(__name__)

LAYOUTS = ("sagate", "esanet")
AUX_CHOICES = ("depth", "hha", "depth+hha")
SPLITS = ("train", "val", "test")
#: Intrinsics of the NYU Depth v2 RGB camera (640×480), row-major 3×3.
NYU_K = ((518.8579, 0.0, 325.5824), (0.0, 519.4696, 253.7362), (0.0, 0.0, 1.0))

CLASSES_40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books", "refrigerator",
    "television", "paper", "towel", "shower_curtain", "box", "whiteboard", "person",
    "night_stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
CLASSES_13 = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
    "table", "tv", "wall", "window",
)  # fmt: skip
#: The standard NYU-40 → 13 mapping (Couprie et al.; ``class13Mapping.mat`` of the
#: public NYUv2 toolkits), written by name so that it can be read and checked.
FORTY_TO_THIRTEEN = {
    "wall": "wall", "floor": "floor", "cabinet": "furniture", "bed": "bed", "chair": "chair",
    "sofa": "sofa", "table": "table", "door": "wall", "window": "window",
    "bookshelf": "furniture", "picture": "picture", "counter": "furniture", "blinds": "window",
    "desk": "table", "shelves": "furniture", "curtain": "window", "dresser": "furniture",
    "pillow": "objects", "mirror": "objects", "floor_mat": "floor", "clothes": "objects",
    "ceiling": "ceiling", "books": "books", "refrigerator": "furniture", "television": "tv",
    "paper": "objects", "towel": "objects", "shower_curtain": "objects", "box": "objects",
    "whiteboard": "objects", "person": "objects", "night_stand": "furniture",
    "toilet": "objects", "sink": "objects", "lamp": "objects", "bathtub": "objects",
    "bag": "objects", "otherstructure": "objects", "otherfurniture": "furniture",
    "otherprop": "objects",
}  # fmt: skip


def forty_to_thirteen_lut(ignore_index: int = 255) -> npt.NDArray[np.int64]:
    """Lookup table from 0-based NYU-40 ids (and ``ignore_index``) to 0-based 13-class ids."""
    lut = np.full(max(ignore_index, len(CLASSES_40)) + 1, ignore_index, dtype=np.int64)
    for i, name in enumerate(CLASSES_40):
        lut[i] = CLASSES_13.index(FORTY_TO_THIRTEEN[name])
    return lut


def detect_layout(root: Path) -> str:
    """``"sagate"`` if ``root/RGB`` exists, ``"esanet"`` if ``root/{train,test}/rgb`` does."""
    sagate = (root / "RGB").is_dir()
    esanet = any((root / s / "rgb").is_dir() for s in ("train", "test"))
    if sagate and esanet:
        raise DatasetError(
            root,
            "one NYUDv2 layout",
            "both RGB/ (SA-Gate layout) and train|test/rgb/ (ESANet layout)",
            "set layout='sagate' or layout='esanet'",
        )
    if not (sagate or esanet):
        entries = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else "nothing"
        raise MissingFileError(
            root,
            "an NYUDv2 root with RGB/ (SA-Gate layout) or train/rgb/ (ESANet layout)",
            f"{entries}",
            "check root; see datasets/README.md for both layouts",
        )
    layout = "sagate" if sagate else "esanet"
    logger.info("NYUDv2 at %s: %s layout", root, layout)
    return layout


class NYUDv2(PairedFiles):
    """NYU Depth v2 with NYU-40 (or 13) labels, depth in metres and/or HHA.

    NYUDv2 ships only train and test; split ``"val"`` is a fixed-seed subset of
    train that ``"train"`` then excludes (``datasets/README.md``, "Validation split").

    Args:
        split: ``"train"``, ``"val"`` (carved from train) or ``"test"``.
        root: dataset root (layouts: ``datasets/README.md``, "NYU Depth v2").
        aux: ``"depth"`` (1 channel, metres), ``"hha"`` (3 channels in [0, 1]) or
            ``"depth+hha"`` (4 channels: depth first).
        num_classes: 40 (NYU-40) or 13 (the standard 40 → 13 mapping).
        layout: ``"sagate"`` or ``"esanet"``; ``None`` detects it (see :attr:`layout`).
        depth_format: on-disk depth encoding; ``None`` means the layout's own
            (``npy_m`` for SA-Gate, ``png16_mm`` for ESANet).
        raw_depth: ESANet layout only: read ``depth_raw/`` instead of the filled ``depth/``.
        val_fraction: fraction of train that forms ``"val"`` (0 = no val split).
        val_seed: seed of the val draw.
        names: use these sample names instead of the split file (e.g. a subset).
        aux_from_rgb: 3×3 rig transform, RGB pixel → aux pixel; overrides the
            ``aux_from_rgb`` key of ``root/dataset.json``. Aux is then resampled onto the
            RGB grid when loaded (:class:`~rgbx_fusion.data.sets.paired.PairedFiles`).
    """

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/nyudv2",
        aux: str = "depth",
        num_classes: int = 40,
        layout: str | None = None,
        depth_format: str | None = None,
        raw_depth: bool = False,
        val_fraction: float = 0.0,
        val_seed: int = 0,
        names: Sequence[str] | None = None,
        aux_from_rgb: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(split, root, aux_from_rgb)
        if split not in SPLITS:
            raise ConfigError(f"NYUDv2 split must be one of {SPLITS}, got {split!r}")
        if aux not in AUX_CHOICES:
            raise ConfigError(f"NYUDv2 aux must be one of {AUX_CHOICES}, got {aux!r}")
        if num_classes not in (40, 13):
            raise ConfigError(f"NYUDv2 num_classes must be 40 or 13, got {num_classes}")
        self.layout = layout or detect_layout(self.root)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"NYUDv2 layout must be one of {LAYOUTS}, got {layout!r}")
        self.aux = aux
        self.aux_parts = tuple(aux.split("+"))
        self.aux_kinds = self.aux_parts
        self.aux_channels = sum(1 if p == "depth" else 3 for p in self.aux_parts)
        if self.layout == "esanet" and "hha" in self.aux_parts:
            raise ConfigError("the ESANet layout has no HHA images; use aux='depth'")
        self.depth_format = depth_format or ("npy_m" if self.layout == "sagate" else "png16_mm")
        if self.depth_format not in DEPTH_FORMATS:
            raise ConfigError(f"depth_format must be one of {DEPTH_FORMATS}, got {depth_format!r}")
        self.raw_depth = raw_depth
        self.num_classes = num_classes
        self.classes = CLASSES_40 if num_classes == 40 else CLASSES_13
        self.palette = bit_palette(len(self.classes), offset=1)
        self._lut = forty_to_thirteen_lut(self.ignore_index) if num_classes == 13 else None
        source = "test" if split == "test" else "train"
        if names is not None:
            self.names = list(names)
            listed_in = "the names argument"
            if not self.names:
                raise DatasetError(None, "at least one sample name", "an empty names list")
        else:
            split_file = self.root / f"{source}.txt"
            listed_in = str(split_file)
            self.names = split_names(split_file)
            if split != "test":
                self.names = carve_val(self.names, split, val_fraction, val_seed)
        self.files = [self._files_of(name, source, listed_in) for name in self.names]
        if "depth" in self.aux_parts:
            check_depth_pngs([f["depth"] for f in self.files], self.depth_format)

    def _files_of(self, name: str, source: str, listed_in: str) -> dict[str, Path]:
        depth_ext = (".npy",) if self.depth_format == "npy_m" else (".png",)
        if self.layout == "sagate":
            folders = {"rgb": "RGB", "depth": "Depth", "hha": "HHA", "label": "Label"}
            base = self.root
        else:
            depth_dir = "depth_raw" if self.raw_depth else "depth"
            folders = {"rgb": "rgb", "depth": depth_dir, "label": "labels_40"}
            base = self.root / source
        roles = ("rgb", *self.aux_parts, "label")
        exts = {"rgb": IMAGE_EXTENSIONS, "depth": depth_ext, "hha": IMAGE_EXTENSIONS}
        return {
            role: self.locate(base / folders[role], name, exts.get(role, (".png",)), listed_in)
            for role in roles
        }

    def read_inputs(self, files: dict[str, Path]) -> tuple[npt.NDArray[np.uint8], list[AuxPart]]:
        parts: list[AuxPart] = []
        for part in self.aux_parts:
            path = files[part]
            if part == "depth":
                parts.append((path, read_depth(path, self.depth_format)))
            else:
                parts.append((path, read_unit_image(path, 3)))
        return read_rgb(files["rgb"]), parts

    def read_mask(self, path: Path) -> npt.NDArray[np.int64]:
        mask = read_void_zero_label(path, len(CLASSES_40), self.ignore_index)
        return mask if self._lut is None else self._lut[mask]

    def sample_meta(self, index: int) -> dict[str, Any]:
        return {"name": self.names[index], "K": [list(row) for row in NYU_K]}
