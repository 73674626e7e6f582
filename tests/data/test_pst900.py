"""PST900 reader on generated files in {train,test}/{rgb,thermal,depth,labels}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.depth import SuspiciousDepthWarning, encode_depth_png16
from rgbx_fusion.data.sets.pst900 import PST900
from rgbx_fusion.errors import (
    ConfigError,
    DatasetError,
    DepthFormatError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)

H, W = 18, 32
TRAIN = ("31_bag1a_rect_rgb_frame0000000007", "31_bag1a_rect_rgb_frame0000000012")
TEST = ("32_bag2_rect_rgb_frame0000000100",)


def write_pst900(
    root: Path, train: Sequence[str] = TRAIN, test: Sequence[str] = TEST, split_files: bool = False
) -> Path:
    """The release's layout: names from the rgb/ folder, 8-bit thermal, uint16 mm depth."""
    rng = np.random.default_rng(4)
    for split, names in (("train", train), ("test", test)):
        for sub in ("rgb", "thermal", "depth", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            base = root / split
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(base / "rgb" / f"{name}.png")
            thermal = rng.integers(0, 256, (H, W), dtype=np.uint8)
            Image.fromarray(thermal).save(base / "thermal" / f"{name}.png")
            encode_depth_png16(rng.uniform(0.5, 12.0, (H, W)), base / "depth" / f"{name}.png")
            label = rng.integers(0, 5, (H, W)).astype(np.uint8)
            label[0, :2] = (0, 4)
            Image.fromarray(label).save(base / "labels" / f"{name}.png")
        if split_files:
            (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


@pytest.fixture()
def pst(tmp_path: Path) -> Path:
    return write_pst900(tmp_path / "pst")


def test_sample_contract_thermal(pst: Path) -> None:
    ds = PST900("train", pst)
    assert ds.names == list(TRAIN) and len(ds.classes) == len(ds.palette) == 5
    s = ds[0]
    raw = np.array(Image.open(pst / "train" / "thermal" / f"{TRAIN[0]}.png"))
    assert s["aux"].shape == (H, W, 1) and s["aux"].dtype == np.float32
    np.testing.assert_allclose(s["aux"][..., 0], raw / 255.0, rtol=1e-6)
    labels = np.array(Image.open(pst / "train" / "labels" / f"{TRAIN[0]}.png"))
    np.testing.assert_array_equal(s["mask"], labels)  # 0 = background is a class
    assert s["meta"]["name"] == TRAIN[0]


def test_thermal_plus_depth(pst: Path) -> None:
    ds = PST900("test", pst, aux="thermal+depth", depth_format="png16_mm")
    s = ds[0]
    assert ds.aux_channels == 2 and s["aux"].shape == (H, W, 2)
    assert s["aux"][..., 0].max() <= 1.0 and s["aux"][..., 1].min() > 0.49
    assert PST900("test", pst, aux="depth", depth_format="png16_mm")[0]["aux"].shape == (H, W, 1)


def test_depth_needs_an_explicit_format(pst: Path) -> None:
    with pytest.raises(ConfigError, match="depth_format"):
        PST900("train", pst, aux="depth")


def test_split_files_take_precedence(tmp_path: Path) -> None:
    root = write_pst900(tmp_path, split_files=True)
    (root / "train.txt").write_text(f"{TRAIN[1]}\n")
    assert PST900("train", root).names == [TRAIN[1]]


def test_val_carved_from_train(pst: Path) -> None:
    val = PST900("val", pst, val_fraction=0.5, val_seed=3)
    train = PST900("train", pst, val_fraction=0.5, val_seed=3)
    assert sorted(val.names + train.names) == sorted(TRAIN) and len(val) == 1


def test_missing_thermal_fails_at_build_time(pst: Path) -> None:
    (pst / "train" / "thermal" / f"{TRAIN[1]}.png").unlink()
    with pytest.raises(MissingFileError, match=rf"thermal/{TRAIN[1]}.*train/rgb"):
        PST900("train", pst)


def test_thermal_size_mismatch(pst: Path) -> None:
    Image.fromarray(np.zeros((H, W // 2), np.uint8)).save(
        pst / "test" / "thermal" / f"{TEST[0]}.png"
    )
    with pytest.raises(ShapeMismatchError, match=rf"thermal/{TEST[0]}\.png.*18×32.*18×16"):
        PST900("test", pst)[0]


def test_colour_thermal_is_rejected(pst: Path) -> None:
    path = pst / "test" / "thermal" / f"{TEST[0]}.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=rf"thermal/{TEST[0]}\.png.*single-channel"):
        PST900("test", pst)[0]


def test_label_out_of_range(pst: Path) -> None:
    Image.fromarray(np.full((H, W), 5, np.uint8)).save(pst / "test" / "labels" / f"{TEST[0]}.png")
    with pytest.raises(LabelRangeError, match=rf"labels/{TEST[0]}\.png.*\[0, 5\).*\[5\]"):
        PST900("test", pst)[0]


def test_8bit_depth_and_far_depth(pst: Path) -> None:
    path = pst / "test" / "depth" / f"{TEST[0]}.png"
    encode_depth_png16(np.full((H, W), 30.0), path)
    with pytest.warns(SuspiciousDepthWarning, match="30.0 m"):
        PST900("test", pst, aux="depth", depth_format="png16_mm")[0]
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(path)
    with pytest.raises(DepthFormatError, match=rf"depth/{TEST[0]}\.png.*8-bit"):
        PST900("test", pst, aux="depth", depth_format="png16_mm")


def test_empty_split(tmp_path: Path) -> None:
    (tmp_path / "test" / "rgb").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"test/rgb.*empty split"):
        PST900("test", tmp_path)
