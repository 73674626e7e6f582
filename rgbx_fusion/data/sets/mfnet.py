"""MFNet (Ha et al., IROS 2017): 1569 RGB-thermal urban driving images, 9 classes, day and night.

Layout (the release's ``ir_seg_dataset`` folder): ``datasets/README.md``, "MFNet".
Class 0 ("unlabelled") is counted in MFNet's mIoU, so labels are used as stored;
the aux channel is the thermal channel scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.depth import read_image_array
from rgbx_fusion.data.sets.folder import read_label
from rgbx_fusion.data.sets.paired import AuxPart, PairedFiles, split_names
from rgbx_fusion.errors import ConfigError, DatasetError

SPLITS = ("train", "val", "test", "test_day", "test_night")
CLASSES = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)  # fmt: skip
#: The colours used for MFNet by RTFNet and the RGB-T segmentation code that followed it.
PALETTE = (
    (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0),
    (64, 64, 128), (192, 128, 128), (192, 64, 0),
)  # fmt: skip
_TIME_OF_DAY = {"D": "day", "N": "night"}


def read_rgbt(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Split a 4-channel MFNet PNG into RGB (uint8) and thermal (float32 in [0, 1])."""
    arr = read_image_array(path)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 4:
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        raise DatasetError(
            path,
            "an 8-bit 4-channel PNG (R, G, B, thermal)",
            f"{arr.dtype} with {channels} channel(s), shape {arr.shape}",
            "MFNet keeps thermal in the 4th channel; a 3-channel file has lost it "
            "(re-extract it from the original release)",
        )
    rgb = np.ascontiguousarray(arr[..., :3])
    return rgb, arr[..., 3].astype(np.float32) / 255.0


class MFNet(PairedFiles):
    """MFNet RGB-T segmentation (9 classes, class 0 counted), thermal as aux.

    Args:
        split: ``"train"``, ``"val"``, ``"test"``, ``"test_day"`` or ``"test_night"``.
        root: dataset root (layout: ``datasets/README.md``, "MFNet").
        names: use these sample names instead of the split file.
        aux_from_rgb: 3×3 rig transform, RGB pixel → aux pixel; overrides the
            ``aux_from_rgb`` key of ``root/dataset.json``. Aux is then resampled onto the
            RGB grid when loaded (:class:`~rgbx_fusion.data.sets.paired.PairedFiles`).
    """

    aux_channels = 1
    aux_kinds = ("thermal",)
    classes = CLASSES
    palette = PALETTE

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/mfnet",
        names: Sequence[str] | None = None,
        aux_from_rgb: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(split, root, aux_from_rgb)
        if split not in SPLITS:
            raise ConfigError(f"MFNet split must be one of {SPLITS}, got {split!r}")
        if names is not None:
            self.names, listed_in = list(names), "the names argument"
            if not self.names:
                raise DatasetError(None, "at least one sample name", "an empty names list")
        else:
            self.names, listed_in = self._split_names(split)
        self.files = [
            {
                "rgb": self.locate(self.root / "images", name, (".png",), listed_in),
                "label": self.locate(self.root / "labels", name, (".png",), listed_in),
            }
            for name in self.names
        ]

    def _split_names(self, split: str) -> tuple[list[str], str]:
        path = self.root / f"{split}.txt"
        if path.is_file() or split not in ("test_day", "test_night"):
            return split_names(path), str(path)
        test = self.root / "test.txt"
        suffix = "D" if split == "test_day" else "N"
        names = [n for n in split_names(test) if n[-1:].upper() == suffix]
        if not names:
            raise DatasetError(
                test,
                f"names ending in {suffix} ({split[5:]} images) when {path.name} is absent",
                "none",
                f"add {path.name} or check the names",
            )
        return names, f"{test} (names ending in {suffix})"

    def read_inputs(self, files: dict[str, Path]) -> tuple[npt.NDArray[np.uint8], list[AuxPart]]:
        rgb, thermal = read_rgbt(files["rgb"])
        return rgb, [(files["rgb"], thermal)]

    def read_mask(self, path: Path) -> npt.NDArray[np.int64]:
        return read_label(path, len(CLASSES), self.ignore_index)

    def sample_meta(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        return {"name": name, "time_of_day": _TIME_OF_DAY.get(name[-1:].upper(), "unknown")}
