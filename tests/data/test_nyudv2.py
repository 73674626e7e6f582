"""NYUDv2 reader: both layouts on generated files, bad input, and the real frame 0."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.depth import SuspiciousDepthWarning, encode_depth_png16
from rgbx_fusion.data.sets.nyudv2 import NYU_K, NYUDv2, forty_to_thirteen_lut
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


def _frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    hha = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
    depth[0, :4] = 0.0  # missing pixels
    label = rng.integers(0, 41, (H, W)).astype(np.uint8)
    label[0, :3] = (0, 1, 40)  # void, first and last class
    return rgb, hha, depth, label


def write_sagate(
    root: Path,
    train: Sequence[str] = ("1", "2", "3", "4"),
    test: Sequence[str] = ("0",),
    depth_format: str = "npy_m",
    bare_names: bool = False,
) -> Path:
    """SA-Gate / CMX layout: RGB/, HHA/, Depth/, Label/ and train.txt / test.txt."""
    rng = np.random.default_rng(0)
    for sub in ("RGB", "HHA", "Depth", "Label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in (*train, *test):
        rgb, hha, depth, label = _frame(rng)
        Image.fromarray(rgb).save(root / "RGB" / f"{name}.jpg", quality=95)
        Image.fromarray(hha).save(root / "HHA" / f"{name}.jpg", quality=95)
        if depth_format == "npy_m":
            np.save(root / "Depth" / f"{name}.npy", depth)
        else:
            encode_depth_png16(depth, root / "Depth" / f"{name}.png")
        Image.fromarray(label).save(root / "Label" / f"{name}.png")
    for split, names in (("train", train), ("test", test)):
        lines = names if bare_names else [f"RGB/{n}.jpg\tLabel/{n}.png" for n in names]
        (root / f"{split}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    return root


def write_esanet(root: Path, train: Sequence[int] = (3, 4, 5), test: Sequence[int] = (1,)) -> Path:
    """ESANet layout: {train,test}/{rgb,depth,depth_raw,labels_40}, names %04d."""
    rng = np.random.default_rng(1)
    for split, idx in (("train", train), ("test", test)):
        for sub in ("rgb", "depth", "depth_raw", "labels_40"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in idx:
            rgb, _, depth, label = _frame(rng)
            name = f"{i:04d}"
            Image.fromarray(rgb).save(root / split / "rgb" / f"{name}.png")
            encode_depth_png16(depth, root / split / "depth" / f"{name}.png")
            raw = np.where(rng.random((H, W)) < 0.2, 0, depth).astype(np.float32)
            encode_depth_png16(raw, root / split / "depth_raw" / f"{name}.png")
            Image.fromarray(label).save(root / split / "labels_40" / f"{name}.png")
        (root / f"{split}.txt").write_text("".join(f"{i:04d}\n" for i in idx))
    return root


@pytest.fixture()
def sagate(tmp_path: Path) -> Path:
    return write_sagate(tmp_path / "nyu")


@pytest.mark.parametrize(("aux", "channels"), [("depth", 1), ("hha", 3), ("depth+hha", 4)])
def test_sagate_sample_contract(sagate: Path, aux: str, channels: int) -> None:
    ds = NYUDv2("train", sagate, aux=aux)
    assert ds.layout == "sagate" and len(ds) == 4 and ds.aux_channels == channels
    s = ds[0]
    assert s["rgb"].shape == (H, W, 3) and s["rgb"].dtype == np.uint8
    assert s["aux"].shape == (H, W, channels) and s["aux"].dtype == np.float32
    assert s["mask"].dtype == np.int64 and s["meta"]["name"] == "1"
    np.testing.assert_allclose(s["meta"]["K"], NYU_K)
    if "depth" in aux:
        np.testing.assert_array_equal(s["aux"][..., 0], np.load(sagate / "Depth" / "1.npy"))
    if "hha" in aux:
        assert s["aux"][..., -1].min() >= 0.0 and s["aux"][..., -1].max() <= 1.0
    assert len(ds.classes) == len(ds.palette) == 40 and ds.ignore_index == 255


def test_labels_shift_by_one_with_void_to_ignore(sagate: Path) -> None:
    raw = np.array(Image.open(sagate / "Label" / "1.png")).astype(np.int64)
    mask = NYUDv2("train", sagate)[0]["mask"]
    np.testing.assert_array_equal(mask, np.where(raw == 0, 255, raw - 1))
    assert tuple(mask[0, :3]) == (255, 0, 39)


def test_13_classes_follow_the_standard_mapping(sagate: Path) -> None:
    published = [12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5]
    published += [7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7]
    lut = forty_to_thirteen_lut()
    np.testing.assert_array_equal(lut[:40], np.array(published) - 1)
    ds = NYUDv2("train", sagate, num_classes=13)
    assert ds.classes[11] == "wall" and len(ds.palette) == 13
    assert tuple(ds[0]["mask"][0, :3]) == (255, 11, 6)  # void, wall → wall, otherprop → objects


def test_bare_names_in_split_files(tmp_path: Path) -> None:
    ds = NYUDv2("test", write_sagate(tmp_path, bare_names=True))
    assert ds.names == ["0"]


def test_png_depth_needs_a_declared_format(tmp_path: Path) -> None:
    root = write_sagate(tmp_path, depth_format="png16_mm")
    with pytest.raises(MissingFileError, match=r"Depth/1.*1\.png.*declared format"):
        NYUDv2("train", root)
    s = NYUDv2("train", root, depth_format="png16_mm")[0]
    assert s["aux"][s["aux"] > 0].min() > 0.4 and s["aux"].max() < 8.01


def test_esanet_layout(tmp_path: Path) -> None:
    root = write_esanet(tmp_path)
    ds = NYUDv2("train", root)
    assert ds.layout == "esanet" and ds.depth_format == "png16_mm" and ds.names[0] == "0003"
    s = ds[0]
    assert s["aux"].shape == (H, W, 1) and 0.4 < s["aux"].max() < 8.01
    raw = NYUDv2("train", root, raw_depth=True)[0]["aux"]
    assert (raw == 0).sum() > (s["aux"] == 0).sum()
    with pytest.raises(ConfigError, match="no HHA"):
        NYUDv2("train", root, aux="hha")


def test_layout_detection_refuses_ambiguity(tmp_path: Path) -> None:
    root = write_esanet(write_sagate(tmp_path))  # the split files are ESANet's now
    with pytest.raises(DatasetError, match="both RGB/"):
        NYUDv2("train", root)
    assert NYUDv2("train", root, layout="esanet").layout == "esanet"
    with pytest.raises(MissingFileError, match="RGB/"):
        NYUDv2("train", tmp_path / "nothing")


def test_val_is_carved_from_train_with_a_fixed_seed(tmp_path: Path) -> None:
    root = write_sagate(tmp_path, train=[str(i) for i in range(1, 11)])
    val = NYUDv2("val", root, val_fraction=0.3, val_seed=7)
    train = NYUDv2("train", root, val_fraction=0.3, val_seed=7)
    assert len(val) == 3 and len(train) == 7
    assert set(val.names).isdisjoint(train.names)
    assert sorted(val.names + train.names, key=int) == [str(i) for i in range(1, 11)]
    assert NYUDv2("val", root, val_fraction=0.3, val_seed=7).names == val.names
    assert NYUDv2("test", root, val_fraction=0.3).names == ["0"]
    with pytest.raises(ConfigError, match="val_fraction"):
        NYUDv2("val", root)


def test_missing_listed_file_names_file_and_split(sagate: Path) -> None:
    (sagate / "Label" / "3.png").unlink()
    with pytest.raises(MissingFileError, match=r"Label/3.*train\.txt"):
        NYUDv2("train", sagate)


def test_empty_split(sagate: Path) -> None:
    (sagate / "test.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"test\.txt.*empty split"):
        NYUDv2("test", sagate)


def test_truncated_jpeg_and_npy(sagate: Path) -> None:
    jpg = sagate / "RGB" / "1.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    npy = sagate / "Depth" / "2.npy"
    npy.write_bytes(npy.read_bytes()[:150])
    ds = NYUDv2("train", sagate)
    with pytest.raises(CorruptFileError, match=r"RGB/1\.jpg"):
        ds[0]
    with pytest.raises(CorruptFileError, match=r"Depth/2\.npy"):
        ds[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_depth(sagate: Path, bad: float) -> None:
    depth = np.load(sagate / "Depth" / "1.npy")
    depth[5, 5] = bad
    np.save(sagate / "Depth" / "1.npy", depth)
    with pytest.raises(DepthFormatError, match=r"Depth/1\.npy.*NaN/inf"):
        NYUDv2("train", sagate)[0]


@pytest.mark.parametrize("what", ["Depth", "HHA", "Label"])
def test_size_mismatch_names_the_file(sagate: Path, what: str) -> None:
    if what == "Depth":
        np.save(sagate / "Depth" / "1.npy", np.ones((H // 2, W // 2), np.float32))
    elif what == "HHA":
        Image.fromarray(np.zeros((H // 2, W // 2, 3), np.uint8)).save(sagate / "HHA" / "1.jpg")
    else:
        Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(sagate / "Label" / "1.png")
    with pytest.raises(ShapeMismatchError, match=rf"{what}/1\..*24×32.*12×16"):
        NYUDv2("train", sagate, aux="depth+hha")[0]


def test_label_out_of_range(sagate: Path) -> None:
    label = np.zeros((H, W), np.uint8)
    label[3, 3] = 41
    Image.fromarray(label).save(sagate / "Label" / "1.png")
    with pytest.raises(LabelRangeError, match=r"Label/1\.png.*\[0, 40\].*\[41\]"):
        NYUDv2("train", sagate)[0]


def test_8bit_depth_png_where_16bit_is_declared(tmp_path: Path) -> None:
    root = write_sagate(tmp_path, depth_format="png16_mm")
    Image.fromarray(np.full((H, W), 90, np.uint8)).save(root / "Depth" / "1.png")
    with pytest.raises(DepthFormatError, match=r"Depth/1\.png.*16-bit.*8-bit"):
        NYUDv2("train", root, depth_format="png16_mm")


def test_suspicious_depth_warns(sagate: Path) -> None:
    np.save(sagate / "Depth" / "1.npy", np.zeros((H, W), np.float32))
    np.save(sagate / "Depth" / "2.npy", np.full((H, W), 35.0, np.float32))
    ds = NYUDv2("train", sagate)
    with pytest.warns(SuspiciousDepthWarning, match=r"1\.npy.*all zeros"):
        ds[0]
    with pytest.warns(SuspiciousDepthWarning, match=r"2\.npy.*35\.0 m"):
        ds[1]


def test_unknown_options_are_config_errors(sagate: Path) -> None:
    for kwargs in ({"aux": "thermal"}, {"num_classes": 37}, {"layout": "cmx"}, {"split": "dev"}):
        with pytest.raises(ConfigError):
            NYUDv2(**{"split": "train", "root": sagate, **kwargs})


def test_real_frame_0(nyu_sample: Path) -> None:
    ds = NYUDv2("test", nyu_sample, aux="depth+hha", names=["0"])
    assert ds.layout == "sagate"
    s = ds[0]
    assert s["rgb"].shape == (480, 640, 3) and s["aux"].shape == (480, 640, 4)
    depth = s["aux"][..., 0]
    assert depth[depth > 0].min() > 0.3 and depth.max() < 10.0  # Kinect range, metres
    hha = s["aux"][..., 1:]
    assert hha.std(axis=(0, 1)).min() > 0.01  # 3 informative channels
    values = set(np.unique(s["mask"]).tolist())
    assert values <= set(range(40)) | {255} and 255 in values and len(values) > 5
    with Image.open(nyu_sample / "RGB" / "0.jpg") as img:
        pil = np.asarray(img.convert("RGB")).reshape(-1, 3).mean(0)
    ours = s["rgb"].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(ours, pil)
    assert abs(ours[0] - ours[2]) > 5  # R and B differ: a BGR swap would show


def test_real_split_files_list_the_official_split(nyu_sample: Path) -> None:
    with pytest.raises(MissingFileError, match=r"RGB/1\b"):  # only frame 0 is shipped
        NYUDv2("test", nyu_sample)
    from rgbx_fusion.data.sets.paired import split_names

    train, test = split_names(nyu_sample / "train.txt"), split_names(nyu_sample / "test.txt")
    assert (len(train), len(test)) == (795, 654) and test[:3] == ["0", "1", "8"]
