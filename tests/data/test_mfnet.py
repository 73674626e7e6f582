"""MFNet reader on generated 4-channel PNGs (R, G, B, thermal) with day/night names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.sets.mfnet import MFNet
from rgbx_fusion.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)

H, W = 24, 32
SPLITS = {
    "train": ("00001D", "00002N", "00003D"),
    "val": ("00004D",),
    "test": ("00005D", "00006N", "00007N"),
}


def write_mfnet(
    root: Path, splits: dict[str, Sequence[str]] = SPLITS, day_night_files: bool = False
) -> Path:
    """images/<name>.png (RGBA: thermal in A), labels/<name>.png, <split>.txt."""
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in names:
            rgbt = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            Image.fromarray(rgbt).save(root / "images" / f"{name}.png")
            label = rng.integers(0, 9, (H, W)).astype(np.uint8)
            label[0, :2] = (0, 8)
            Image.fromarray(label).save(root / "labels" / f"{name}.png")
    if day_night_files:
        test = splits["test"]
        for suffix, split in (("D", "test_day"), ("N", "test_night")):
            names = [n for n in test if n.endswith(suffix)]
            (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


@pytest.fixture()
def mfnet(tmp_path: Path) -> Path:
    return write_mfnet(tmp_path / "mfnet")


def test_sample_contract(mfnet: Path) -> None:
    ds = MFNet("train", mfnet)
    assert len(ds) == 3 and len(ds.classes) == len(ds.palette) == 9 and ds.aux_channels == 1
    assert ds.classes[0] == "unlabelled"
    s = ds[0]
    raw = np.array(Image.open(mfnet / "images" / "00001D.png"))
    np.testing.assert_array_equal(s["rgb"], raw[..., :3])
    np.testing.assert_allclose(s["aux"][..., 0], raw[..., 3] / 255.0, rtol=1e-6)
    assert s["aux"].dtype == np.float32 and s["aux"].shape == (H, W, 1)
    assert s["meta"] == {"name": "00001D", "time_of_day": "day"}
    assert MFNet("val", mfnet)[0]["meta"]["name"] == "00004D"


def test_labels_are_used_as_stored(mfnet: Path) -> None:
    raw = np.array(Image.open(mfnet / "labels" / "00001D.png")).astype(np.int64)
    np.testing.assert_array_equal(MFNet("train", mfnet)[0]["mask"], raw)


@pytest.mark.parametrize("files", [False, True], ids=["from_suffix", "from_files"])
def test_day_and_night_test_splits(tmp_path: Path, files: bool) -> None:
    root = write_mfnet(tmp_path, day_night_files=files)
    assert MFNet("test_day", root).names == ["00005D"]
    night = MFNet("test_night", root)
    assert night.names == ["00006N", "00007N"] and night[0]["meta"]["time_of_day"] == "night"


def test_no_night_images_in_test(tmp_path: Path) -> None:
    root = write_mfnet(tmp_path, {"test": ("00005D",)})
    with pytest.raises(DatasetError, match=r"test\.txt.*ending in N"):
        MFNet("test_night", root)


def test_three_channel_image_is_rejected(mfnet: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    Image.fromarray(rgb).save(mfnet / "images" / "00002N.png")
    with pytest.raises(DatasetError, match=r"images/00002N\.png.*4-channel.*3 channel"):
        MFNet("train", mfnet)[1]


def test_missing_label_fails_at_build_time(mfnet: Path) -> None:
    (mfnet / "labels" / "00006N.png").unlink()
    with pytest.raises(MissingFileError, match=r"labels/00006N.*test\.txt"):
        MFNet("test", mfnet)


def test_label_out_of_range(mfnet: Path) -> None:
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(mfnet / "labels" / "00001D.png")
    with pytest.raises(LabelRangeError, match=r"labels/00001D\.png.*\[0, 9\).*\[9\]"):
        MFNet("train", mfnet)[0]


def test_label_size_mismatch(mfnet: Path) -> None:
    Image.fromarray(np.zeros((H, W + 8), np.uint8)).save(mfnet / "labels" / "00001D.png")
    with pytest.raises(ShapeMismatchError, match=r"labels/00001D\.png.*24×32.*24×40"):
        MFNet("train", mfnet)[0]


def test_truncated_png(mfnet: Path) -> None:
    path = mfnet / "images" / "00003D.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CorruptFileError, match=r"images/00003D\.png"):
        MFNet("train", mfnet)[2]


def test_empty_split_and_unknown_split(mfnet: Path) -> None:
    (mfnet / "val.txt").write_text("")
    with pytest.raises(DatasetError, match=r"val\.txt.*empty split"):
        MFNet("val", mfnet)
    with pytest.raises(ConfigError, match="split"):
        MFNet("dev", mfnet)
