"""PST900 (Shivakumar et al., ICRA 2020): RGB-thermal images from subterranean environments.

Layout (the ``PST900_RGBT_Dataset`` release): ``datasets/README.md``, "PST900".
Class 0 ("background") is counted in PST900's mIoU, so labels are used as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.depth import DEPTH_FORMATS
from rgbx_fusion.data.sets.folder import read_label, read_rgb, read_thermal
from rgbx_fusion.data.sets.paired import (
    AuxPart,
    PairedFiles,
    bit_palette,
    carve_val,
    check_depth_pngs,
    read_depth,
)
from rgbx_fusion.errors import ConfigError

SPLITS = ("train", "val", "test")
AUX_CHOICES = ("thermal", "depth", "thermal+depth")
CLASSES = ("background", "fire_extinguisher", "backpack", "hand_drill", "survivor")


class PST900(PairedFiles):
    """PST900 RGB-T segmentation (5 classes, class 0 counted), thermal and/or depth as aux.

    PST900 ships only train and test; split ``"val"`` is a fixed-seed subset of
    train (``val_fraction``) that ``"train"`` then excludes, so that model
    selection never sees test.

    Args:
        split: ``"train"``, ``"val"`` (carved from train) or ``"test"``.
        root: dataset root (layout: ``datasets/README.md``, "PST900").
        aux: ``"thermal"`` (8-bit → [0, 1]), ``"depth"`` (metres) or
            ``"thermal+depth"`` (2 channels, thermal first).
        depth_format: on-disk depth encoding, required when depth is used: the
            release states 16-bit but not the unit, so it is never assumed.
        val_fraction: fraction of train that forms ``"val"`` (0 = no val split).
        val_seed: seed of the val draw.
        names: use these sample names instead of the split file / folder listing.
        aux_from_rgb: 3×3 rig transform, RGB pixel → aux pixel; overrides the
            ``aux_from_rgb`` key of ``root/dataset.json``. Aux is then resampled onto the
            RGB grid when loaded (:class:`~rgbx_fusion.data.sets.paired.PairedFiles`).
    """

    classes = CLASSES
    palette = ((0, 0, 0), *bit_palette(4, offset=1))

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/pst900",
        aux: str = "thermal",
        depth_format: str | None = None,
        val_fraction: float = 0.0,
        val_seed: int = 0,
        names: Sequence[str] | None = None,
        aux_from_rgb: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(split, root, aux_from_rgb)
        if split not in SPLITS:
            raise ConfigError(f"PST900 split must be one of {SPLITS}, got {split!r}")
        if aux not in AUX_CHOICES:
            raise ConfigError(f"PST900 aux must be one of {AUX_CHOICES}, got {aux!r}")
        self.aux_parts = tuple(aux.split("+"))
        self.aux_kinds = self.aux_parts
        self.aux_channels = len(self.aux_parts)
        if "depth" in self.aux_parts and depth_format not in DEPTH_FORMATS:
            raise ConfigError(
                f"PST900 depth needs an explicit depth_format (one of {DEPTH_FORMATS}), got "
                f"{depth_format!r}: the release does not state the unit of its 16-bit depth"
            )
        self.depth_format = depth_format
        source = "test" if split == "test" else "train"
        base = self.root / source
        split_file = self.root / f"{source}.txt"
        listed_in = self.choose_names(names, split_file, base / "rgb", (".png",))
        if names is None and split != "test":
            self.names = carve_val(self.names, split, val_fraction, val_seed)
        folders = {"rgb": "rgb", "thermal": "thermal", "depth": "depth", "label": "labels"}
        roles = ("rgb", *self.aux_parts, "label")
        self.files = [
            {r: self.locate(base / folders[r], n, (".png",), listed_in) for r in roles}
            for n in self.names
        ]
        if self.depth_format is not None and "depth" in self.aux_parts:
            check_depth_pngs([f["depth"] for f in self.files], self.depth_format)

    def read_inputs(self, files: dict[str, Path]) -> tuple[npt.NDArray[np.uint8], list[AuxPart]]:
        parts: list[AuxPart] = []
        for part in self.aux_parts:
            path = files[part]
            if part == "thermal":
                parts.append((path, read_thermal(path)))
            else:
                assert self.depth_format is not None
                parts.append((path, read_depth(path, self.depth_format)))
        return read_rgb(files["rgb"]), parts

    def read_mask(self, path: Path) -> npt.NDArray[np.int64]:
        return read_label(path, len(CLASSES), self.ignore_index)
