"""SUN RGB-D reader on generated files in {train,test}/{rgb,depth,labels,intrinsics}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.depth import SuspiciousDepthWarning
from rgbx_fusion.data.sets.sunrgbd import SUNRGBD
from rgbx_fusion.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    DepthFormatError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)

H, W = 24, 32


def rotate_mm(depth_m: np.ndarray) -> np.ndarray:
    """SUN RGB-D's storage: millimetres rotated left by 3 bits in 16 bits."""
    mm = np.rint(depth_m * 1000).astype(np.uint32)
    return (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)


def write_sunrgbd(
    root: Path,
    train: Sequence[str] = ("000001", "000002", "000003"),
    test: Sequence[str] = ("005051",),
    split_files: bool = True,
    rotated: bool = True,
) -> Path:
    """Per-split folders; per-image K differs (two sensors), depth bit-rotated."""
    rng = np.random.default_rng(2)
    for split, names in (("train", train), ("test", test)):
        for sub in ("rgb", "depth", "labels", "intrinsics"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            base = root / split
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                base / "rgb" / f"{name}.jpg", quality=95
            )
            depth = rng.uniform(0.6, 7.5, (H, W)).astype(np.float32)
            depth[:2] = 0.0
            mm = np.rint(depth * 1000).astype(np.uint16)
            Image.fromarray(rotate_mm(depth) if rotated else mm).save(
                base / "depth" / f"{name}.png"
            )
            label = rng.integers(0, 38, (H, W)).astype(np.uint8)
            label[0, :3] = (0, 1, 37)
            Image.fromarray(label).save(base / "labels" / f"{name}.png")
            fx = 529.5 if i % 2 == 0 else 691.6
            k = f"{fx} 0 365.0\n0 {fx} 265.0\n0 0 1\n"
            (base / "intrinsics" / f"{name}.txt").write_text(k)
        if split_files:
            (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


@pytest.fixture()
def sun(tmp_path: Path) -> Path:
    return write_sunrgbd(tmp_path / "sun")


def test_sample_contract_and_rotated_depth(sun: Path) -> None:
    ds = SUNRGBD("train", sun)
    assert len(ds) == 3 and len(ds.classes) == len(ds.palette) == 37 and ds.aux_channels == 1
    s = ds[0]
    assert s["rgb"].shape == (H, W, 3) and s["aux"].shape == (H, W, 1)
    depth = s["aux"][..., 0]
    assert (depth[:2] == 0).all() and depth[2:].min() > 0.59 and depth.max() < 7.51
    assert tuple(s["mask"][0, :3]) == (255, 0, 36)
    assert set(np.unique(s["mask"]).tolist()) <= set(range(37)) | {255}


def test_per_image_intrinsics(sun: Path) -> None:
    ds = SUNRGBD("train", sun)
    k0, k1 = ds[0]["meta"]["K"], ds[1]["meta"]["K"]
    assert k0[0][0] == 529.5 and k1[0][0] == 691.6 and k0[2] == [0.0, 0.0, 1.0]
    assert k0[0][2] == 365.0 and k0[1][2] == 265.0


def test_names_from_folder_without_split_files(tmp_path: Path) -> None:
    ds = SUNRGBD("test", write_sunrgbd(tmp_path, split_files=False))
    assert ds.names == ["005051"]


def test_val_carved_from_train(sun: Path) -> None:
    val = SUNRGBD("val", sun, val_fraction=0.34)
    train = SUNRGBD("train", sun, val_fraction=0.34)
    assert len(val) == 1 and len(train) == 2 and set(val.names).isdisjoint(train.names)
    with pytest.raises(ConfigError, match="val_fraction"):
        SUNRGBD("val", sun)


def test_missing_intrinsics_fail_at_build_time(sun: Path) -> None:
    (sun / "train" / "intrinsics" / "000002.txt").unlink()
    with pytest.raises(MissingFileError, match=r"intrinsics/000002.*train\.txt"):
        SUNRGBD("train", sun)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("529.5 0 365\n0 529.5 265\n", DatasetError, "9 numbers"),
        ("529.5 0 0\n0 529.5 0\n365 265 1\n", DatasetError, "transposed"),
        ("fx 0 cx\n", CorruptFileError, "unreadable"),
    ],
)
def test_bad_intrinsics(sun: Path, text: str, error: type, match: str) -> None:
    (sun / "train" / "intrinsics" / "000001.txt").write_text(text)
    with pytest.raises(error, match=rf"000001\.txt.*{match}"):
        SUNRGBD("train", sun)[0]


def test_8bit_depth_is_an_error(sun: Path) -> None:
    Image.fromarray(np.full((H, W), 50, np.uint8)).save(sun / "train" / "depth" / "000001.png")
    with pytest.raises(DepthFormatError, match=r"depth/000001\.png.*16-bit.*8-bit"):
        SUNRGBD("train", sun)


def test_depth_size_mismatch(sun: Path) -> None:
    small = rotate_mm(np.full((H // 2, W), 2.0, np.float32))
    Image.fromarray(small).save(sun / "train" / "depth" / "000001.png")
    with pytest.raises(ShapeMismatchError, match=r"depth/000001\.png.*24×32.*12×32"):
        SUNRGBD("train", sun)[0]


def test_label_out_of_range(sun: Path) -> None:
    Image.fromarray(np.full((H, W), 38, np.uint8)).save(sun / "train" / "labels" / "000001.png")
    with pytest.raises(LabelRangeError, match=r"labels/000001\.png.*\[0, 37\].*\[38\]"):
        SUNRGBD("train", sun)[0]


def test_corrupt_rgb(sun: Path) -> None:
    (sun / "train" / "rgb" / "000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(CorruptFileError, match=r"rgb/000003\.jpg"):
        SUNRGBD("train", sun)[2]


def test_empty_split_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "rgb").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty split"):
        SUNRGBD("train", tmp_path)


def test_all_zero_depth_warns(sun: Path) -> None:
    Image.fromarray(np.zeros((H, W), np.uint16)).save(sun / "train" / "depth" / "000001.png")
    with pytest.warns(SuspiciousDepthWarning, match="all zeros"):
        SUNRGBD("train", sun)[0]
