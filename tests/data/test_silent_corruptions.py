"""Regression tests for mistakes that train without crashing and quietly ruin the results.

Colour order (an OpenCV read gives BGR), the label shift (``gt - 1`` is right
where 0 = void and wrong where 0 is a class), 8-bit min-max scaled depth taken
for metric depth, and a depth unit that contradicts the values on disk.
The generators are those of the per-dataset test modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_mfnet import write_mfnet
from test_nyudv2 import write_esanet, write_sagate
from test_pst900 import TRAIN as PST_TRAIN
from test_pst900 import write_pst900
from test_sunrgbd import rotate_mm, write_sunrgbd

from rgbx_fusion.data.depth import LossyDepthWarning
from rgbx_fusion.data.sets.mfnet import MFNet
from rgbx_fusion.data.sets.nyudv2 import NYUDv2
from rgbx_fusion.data.sets.pst900 import PST900
from rgbx_fusion.data.sets.sunrgbd import SUNRGBD
from rgbx_fusion.errors import DepthFormatError, LabelRangeError
from rgbx_fusion.types import Sample

# name → (generator, reader of the first train sample, rgb path, label path) of that sample
Layout = tuple[
    Callable[[Path], Path], Callable[[Path], Sample], Callable[[Path], Path], Callable[[Path], Path]
]
LAYOUTS: dict[str, Layout] = {
    "nyudv2": (
        write_sagate,
        lambda r: NYUDv2("train", r)[0],
        lambda r: r / "RGB" / "1.jpg",
        lambda r: r / "Label" / "1.png",
    ),
    "sunrgbd": (
        write_sunrgbd,
        lambda r: SUNRGBD("train", r)[0],
        lambda r: r / "train" / "rgb" / "000001.jpg",
        lambda r: r / "train" / "labels" / "000001.png",
    ),
    "mfnet": (
        write_mfnet,
        lambda r: MFNet("train", r)[0],
        lambda r: r / "images" / "00001D.png",
        lambda r: r / "labels" / "00001D.png",
    ),
    "pst900": (
        write_pst900,
        lambda r: PST900("train", r)[0],
        lambda r: r / "train" / "rgb" / f"{PST_TRAIN[0]}.png",
        lambda r: r / "train" / "labels" / f"{PST_TRAIN[0]}.png",
    ),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_pure_red_stays_red(name: str, tmp_path: Path) -> None:
    write, read, rgb_path, _ = LAYOUTS[name]
    root = write(tmp_path)
    path = rgb_path(root)
    shape = np.array(Image.open(path)).shape
    red = np.zeros(shape, np.uint8)
    red[..., 0] = 255
    if shape[-1] == 4:  # MFNet: thermal in the 4th channel
        red[..., 3] = 128
    Image.fromarray(red).save(path, quality=95)
    mean = read(root)["rgb"].reshape(-1, 3).mean(0)
    assert mean[0] > 240 and mean[1] < 15 and mean[2] < 15, f"{name}: {mean} is not red"


SHIFT_CASES = {  # stored label values → expected mask values
    "nyudv2": ((0, 1, 40), (255, 0, 39)),  # 0 = void: gt - 1, void → 255
    "sunrgbd": ((0, 1, 37), (255, 0, 36)),
    "mfnet": ((0, 1, 8), (0, 1, 8)),  # 0 = "unlabelled" is a class: no shift
    "pst900": ((0, 1, 4), (0, 1, 4)),  # 0 = background is a class: no shift
}


@pytest.mark.parametrize("name", SHIFT_CASES)
def test_label_shift_only_where_0_is_void(name: str, tmp_path: Path) -> None:
    write, read, _, label_path = LAYOUTS[name]
    root = write(tmp_path)
    stored, expected = SHIFT_CASES[name]
    path = label_path(root)
    label = np.array(Image.open(path))
    label[:] = stored[1]
    label[0, : len(stored)] = stored
    Image.fromarray(label).save(path)
    mask = read(root)["mask"]
    assert mask.dtype == np.int64
    assert tuple(mask[0, : len(stored)].tolist()) == expected
    assert (mask[1:] == expected[1]).all()


def test_already_shifted_nyu_labels_are_not_shifted_twice(tmp_path: Path) -> None:
    root = write_sagate(tmp_path)
    shifted = np.full((24, 32), 39, np.uint8)
    shifted[0, 0] = 255  # 0-based with 255 = void: someone already applied gt - 1
    Image.fromarray(shifted).save(root / "Label" / "1.png")
    with pytest.raises(LabelRangeError, match=r"Label/1\.png.*already shifted"):
        NYUDv2("train", root)[0]


def _minmax_8bit(root: Path, full_range: bool = True) -> list[Path]:
    """Replace every ESANet depth PNG by an 8-bit per-image min-max scaled copy."""
    paths = sorted((root / "train" / "depth").glob("*.png"))
    for i, path in enumerate(paths):
        mm = np.array(Image.open(path)).astype(np.float64)
        scaled = (mm - mm.min()) / (mm.max() - mm.min()) * 255
        if not full_range and i == 0:
            scaled *= 0.5
        Image.fromarray(np.rint(scaled).astype(np.uint8)).save(path)
    return paths


def test_minmax_8bit_depth_declared_metric_is_an_error(tmp_path: Path) -> None:
    root = write_esanet(tmp_path)
    _minmax_8bit(root)
    with pytest.raises(DepthFormatError, match=r"depth/0003\.png.*8-bit.*min-max scaled"):
        NYUDv2("train", root)  # png16_mm is the ESANet layout's encoding


def test_minmax_8bit_depth_declared_lossy_warns_once(tmp_path: Path) -> None:
    root = write_esanet(tmp_path)
    _minmax_8bit(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = NYUDv2("train", root, depth_format="png8_minmax")
        aux = [ds[i]["aux"] for i in range(len(ds))]
    lossy = [str(w.message) for w in caught if issubclass(w.category, LossyDepthWarning)]
    assert len(lossy) == 1 and "all 3 checked images span the full 0–255 range" in lossy[0]
    assert all(a.min() == 0.0 and a.max() == 1.0 for a in aux)


def test_8bit_depth_without_full_range_is_still_named(tmp_path: Path) -> None:
    root = write_esanet(tmp_path)
    _minmax_8bit(root, full_range=False)
    with pytest.warns(LossyDepthWarning, match="not every image spans 0–255"):
        NYUDv2("train", root, depth_format="png8_minmax")
    with pytest.raises(DepthFormatError, match=r"found 8-bit PNGs\. Fix"):
        NYUDv2("train", root, depth_format="png16_0.1mm")


def test_millimetres_in_a_metres_npy_is_an_error(tmp_path: Path) -> None:
    root = write_sagate(tmp_path)
    np.save(root / "Depth" / "1.npy", np.load(root / "Depth" / "1.npy") * 1000)
    with pytest.raises(DepthFormatError, match=r"Depth/1\.npy.*millimetres"):
        NYUDv2("train", root)[0]


def test_plain_millimetres_declared_bit_rotated_is_an_error(tmp_path: Path) -> None:
    root = write_sunrgbd(tmp_path, rotated=False)
    with pytest.raises(DepthFormatError, match=r"depth/000001\.png.*png16_mm"):
        SUNRGBD("train", root)[0]
    assert SUNRGBD("train", root, depth_format="png16_mm")[0]["aux"].max() < 7.51


def test_bit_rotated_declared_plain_millimetres_is_an_error(tmp_path: Path) -> None:
    root = write_sunrgbd(tmp_path)
    with pytest.raises(DepthFormatError, match=r"depth/000001\.png.*sun_rotated"):
        SUNRGBD("train", root, depth_format="png16_mm")[0]
    far = rotate_mm(np.full((24, 32), 9.0, np.float32))  # > 8.19 m sets low bits: still fine
    Image.fromarray(far).save(root / "train" / "depth" / "000001.png")
    assert SUNRGBD("train", root)[0]["aux"].max() == pytest.approx(9.0)
