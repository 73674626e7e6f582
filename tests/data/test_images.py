"""ImageFolderRGBX: own-sensor RGB + depth/thermal folders paired by stem, no labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.sets.images import ImageFolderRGBX, UnpairedFilesWarning
from rgbx_fusion.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    DepthFormatError,
    MissingFileError,
    ShapeMismatchError,
)

CLASSES = ("floor", "wall", "thing")
K = [[50.0, 0.0, 15.5], [0.0, 50.0, 11.5], [0.0, 0.0, 1.0]]


def _write(folder: Path, stems: list[str], size: tuple[int, int] = (24, 32)) -> tuple[Path, Path]:
    rgb_dir, depth_dir = folder / "rgb", folder / "depth"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(
            rgb_dir / f"{stem}.jpg" if stem.endswith("j") else rgb_dir / f"{stem}.png"
        )
        depth_mm = rng.integers(500, 4000, size, dtype=np.uint16)
        Image.fromarray(depth_mm).save(depth_dir / f"{stem}.png")
    return rgb_dir, depth_dir


def test_pairs_files_by_stem_and_decodes_depth_in_metres(tmp_path: Path) -> None:
    rgb_dir, depth_dir = _write(tmp_path, ["b", "a", "cj"])
    ds = ImageFolderRGBX(
        rgb_dir=rgb_dir, aux_dir=depth_dir, depth_format="png16_mm", classes=CLASSES, K=K
    )
    assert ds.names == ["a", "b", "cj"] and len(ds) == 3
    assert ds.classes == CLASSES and len(ds.palette) == 3 and ds.aux_channels == 1
    sample = ds[0]
    assert sample["rgb"].shape == (24, 32, 3) and sample["rgb"].dtype == np.uint8
    raw = np.array(Image.open(depth_dir / "a.png"))
    np.testing.assert_allclose(sample["aux"][..., 0], raw / 1000.0, rtol=1e-6)
    assert (sample["mask"] == 255).all() and sample["mask"].dtype == np.int64
    assert sample["meta"]["name"] == "a" and sample["meta"]["K"] == K
    assert ds[2]["meta"]["rgb_path"].endswith("cj.jpg")


def test_hha_encoding_uses_the_given_intrinsics(tmp_path: Path) -> None:
    rgb_dir, depth_dir = _write(tmp_path, ["a"])
    ds = ImageFolderRGBX(
        rgb_dir=rgb_dir,
        aux_dir=depth_dir,
        depth_format="png16_mm",
        classes=CLASSES,
        K=K,
        aux_encoding="hha",
    )
    assert ds.aux_channels == 3
    aux = ds[0]["aux"]
    assert aux.shape == (24, 32, 3) and aux.dtype == np.float32
    with pytest.raises(ConfigError, match="intrinsics"):
        ImageFolderRGBX(
            rgb_dir=rgb_dir,
            aux_dir=depth_dir,
            depth_format="png16_mm",
            classes=CLASSES,
            aux_encoding="hha",
        )


def test_thermal_images(tmp_path: Path) -> None:
    rgb_dir, _ = _write(tmp_path, ["a"])
    thermal = tmp_path / "thermal"
    thermal.mkdir()
    Image.fromarray(np.full((24, 32), 128, np.uint8)).save(thermal / "a.png")
    ds = ImageFolderRGBX(rgb_dir=rgb_dir, aux_dir=thermal, modality="thermal", classes=CLASSES)
    np.testing.assert_allclose(ds[0]["aux"], 128 / 255, rtol=1e-6)


def test_unpaired_files_are_named_or_skipped(tmp_path: Path) -> None:
    rgb_dir, depth_dir = _write(tmp_path, ["a", "b", "c"])
    (depth_dir / "b.png").unlink()
    shutil.copy(depth_dir / "a.png", depth_dir / "zz.png")
    args = {"rgb_dir": rgb_dir, "aux_dir": depth_dir, "depth_format": "png16_mm"}
    with pytest.raises(MissingFileError) as exc:
        ImageFolderRGBX(classes=CLASSES, **args)
    message = str(exc.value)
    assert "no depth file for b" in message and "no colour image for zz" in message
    assert "unpaired='skip'" in message
    with pytest.warns(UnpairedFilesWarning, match="b"):
        ds = ImageFolderRGBX(classes=CLASSES, unpaired="skip", **args)
    assert ds.names == ["a", "c"]


def test_bad_inputs_raise_typed_errors_naming_the_file(tmp_path: Path) -> None:
    rgb_dir, depth_dir = _write(tmp_path, ["a", "b"])
    args = {"rgb_dir": rgb_dir, "aux_dir": depth_dir, "classes": CLASSES}
    with pytest.raises(ConfigError, match="depth_format"):
        ImageFolderRGBX(**args)
    with pytest.raises(MissingFileError, match="nowhere"):
        ImageFolderRGBX(**{**args, "rgb_dir": tmp_path / "nowhere"}, depth_format="png16_mm")
    with pytest.raises(ConfigError, match="class names"):
        ImageFolderRGBX(rgb_dir=rgb_dir, aux_dir=depth_dir, depth_format="png16_mm")
    # depth of a different size than its colour image
    Image.fromarray(np.ones((12, 16), np.uint16)).save(depth_dir / "b.png")
    ds = ImageFolderRGBX(depth_format="png16_mm", **args)
    with pytest.raises(ShapeMismatchError, match=r"b\.png"):
        ds[1]
    # an unreadable colour image
    (rgb_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match=r"a\.png"):
        ds[0]
    # 8-bit depth where 16-bit millimetres are declared: caught when the dataset is built
    Image.fromarray(np.linspace(0, 255, 24 * 32).reshape(24, 32).astype(np.uint8)).save(
        depth_dir / "b.png"
    )
    with pytest.raises(DepthFormatError, match=r"b\.png"):
        ImageFolderRGBX(depth_format="png16_mm", **args)
    # two colour images with one stem
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(rgb_dir / "b.jpg")
    with pytest.raises(DatasetError, match=r"b\.jpg"):
        ImageFolderRGBX(depth_format="png16_mm", **args)
