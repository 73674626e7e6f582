from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from rgbx_fusion.data.sets.folder import FolderRGBX
from rgbx_fusion.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    LabelRangeError,
    MissingFileError,
    ShapeMismatchError,
)


@pytest.fixture()
def root(tiny_depth_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_depth_root, dst)
    return dst


def test_reads_with_explicit_arguments(root: Path) -> None:
    (root / "dataset.json").unlink()
    ds = FolderRGBX("val", root, depth_format="png16_mm", classes=[f"c{i}" for i in range(8)])
    assert len(ds) == 4 and ds[0]["aux"].shape[-1] == 1


def test_depth_format_is_required(root: Path) -> None:
    (root / "dataset.json").unlink()
    with pytest.raises(ConfigError, match="depth_format"):
        FolderRGBX("val", root, classes=["a", "b"])


def test_missing_split_file(root: Path) -> None:
    with pytest.raises(MissingFileError, match=r"splits/nope\.txt"):
        FolderRGBX("nope", root)


def test_empty_split(root: Path) -> None:
    (root / "splits" / "val.txt").write_text("\n# nothing\n")
    with pytest.raises(DatasetError, match="empty split"):
        FolderRGBX("val", root)


def test_listed_file_missing_fails_at_build_time(root: Path) -> None:
    (root / "depth" / "00013.png").unlink()
    with pytest.raises(MissingFileError, match=r"depth/00013.*val\.txt"):
        FolderRGBX("val", root)


def test_size_mismatch_names_the_file(root: Path) -> None:
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "labels" / "00012.png")
    ds = FolderRGBX("val", root)
    with pytest.raises(ShapeMismatchError, match=r"labels/00012\.png.*60×80.*30×40"):
        ds[0]


def test_unreadable_image(root: Path) -> None:
    (root / "rgb" / "00012.png").write_bytes(b"garbage")
    ds = FolderRGBX("val", root)
    with pytest.raises(CorruptFileError, match=r"rgb/00012\.png"):
        ds[0]


def test_label_out_of_range(root: Path) -> None:
    lab = np.array(Image.open(root / "labels" / "00012.png"))
    lab[0, 0] = 17
    Image.fromarray(lab).save(root / "labels" / "00012.png")
    with pytest.raises(LabelRangeError, match=r"00012\.png.*\[0, 8\) or 255.*\[17\]"):
        FolderRGBX("val", root)[0]


def test_grayscale_rgb_is_rejected(root: Path) -> None:
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(root / "rgb" / "00012.png")
    with pytest.raises(DatasetError, match="RGB image"):
        FolderRGBX("val", root)[0]


def test_worker_errors_keep_their_type(root: Path) -> None:
    (root / "rgb" / "00012.png").write_bytes(b"garbage")
    loader = DataLoader(FolderRGBX("val", root), num_workers=1, collate_fn=lambda x: x)
    with pytest.raises(CorruptFileError, match=r"00012\.png"):
        next(iter(loader))


def test_rgb_channel_order_is_rgb(root: Path) -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    img[..., 0] = 200  # pure red
    Image.fromarray(img).save(root / "rgb" / "00012.png")
    s = FolderRGBX("val", root)[0]
    assert s["rgb"][..., 0].mean() == 200 and s["rgb"][..., 2].mean() == 0
