"""prepare_nyudv2 on small generated .mat files: orientation, mapping, resume, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rgbx_fusion.cli import main
from rgbx_fusion.data.sets.nyudv2 import NYUDv2
from rgbx_fusion.data.sets.prepare_nyudv2 import prepare_nyudv2
from rgbx_fusion.errors import CorruptFileError, DatasetError, LabelRangeError

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

N, H, W = 3, 48, 64


def frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric content (so a wrong transpose shows): rgb N×H×W×3, depth and labels N×H×W."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 3, y * 4, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    rgbs = np.stack([rgb + 10 * i for i in range(N)])
    depth = np.stack([(0.5 + x / W * 4 + y / H + i).astype(np.float32) for i in range(N)])
    labels = np.stack([((x // 8 + y // 8 * 8 + 97 * i) % 895) for i in range(N)]).astype(np.uint16)
    return rgbs, depth, labels


def write_mats(folder: Path) -> dict[str, Path]:
    """nyu_depth_v2_labeled.mat (HDF5, MATLAB's transposed storage), splits.mat, mapping."""
    rgbs, depth, labels = frames()
    mat = folder / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w") as f:
        f["images"] = rgbs.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depth.transpose(0, 2, 1)  # (N, W, H)
        f["labels"] = labels.transpose(0, 2, 1)
    splits = folder / "splits.mat"
    scipy_io.savemat(splits, {"trainNdxs": np.array([[2], [3]]), "testNdxs": np.array([[1]])})
    mapping = folder / "classMapping40.mat"
    scipy_io.savemat(mapping, {"mapClass": (np.arange(894) % 40 + 1)[None]})
    return {"mat": mat, "splits": splits, "mapping": mapping}


@pytest.fixture()
def mats(tmp_path: Path) -> dict[str, Path]:
    return write_mats(tmp_path)


def test_writes_the_sagate_layout(mats: dict[str, Path], tmp_path: Path) -> None:
    out = prepare_nyudv2(**mats, out=tmp_path / "nyu", progress=False)
    assert (out / "test.txt").read_text() == "RGB/0.jpg\tLabel/0.png\n"
    assert (out / "train.txt").read_text().splitlines() == [
        "RGB/1.jpg\tLabel/1.png",
        "RGB/2.jpg\tLabel/2.png",
    ]
    assert json.loads((out / "prepare.json").read_text())["labels"].startswith("nyu40")
    rgbs, depth, labels = frames()
    ds = NYUDv2("train", out)
    s = ds[1]  # frame 2
    assert s["rgb"].shape == (H, W, 3)
    assert np.abs(s["rgb"].astype(int) - rgbs[2]).mean() < 3  # JPEG, right orientation
    np.testing.assert_array_equal(s["aux"][..., 0], depth[2])
    lut = np.concatenate([[0], np.arange(894) % 40 + 1])
    mapped = lut[labels[2]]
    np.testing.assert_array_equal(s["mask"], np.where(mapped == 0, 255, mapped - 1))
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_resumes_without_rewriting(mats: dict[str, Path], tmp_path: Path) -> None:
    out = prepare_nyudv2(**mats, out=tmp_path / "nyu", progress=False)
    (out / "Label" / "1.png").unlink()
    (out / "prepare.json").unlink()
    kept = (out / "RGB" / "0.jpg").stat().st_mtime_ns
    prepare_nyudv2(**mats, out=out, progress=False)
    assert (out / "Label" / "1.png").is_file() and (out / "prepare.json").is_file()
    assert (out / "RGB" / "0.jpg").stat().st_mtime_ns == kept


def test_without_mapping_raw_labels_are_written_and_refused(
    mats: dict[str, Path], tmp_path: Path
) -> None:
    out = prepare_nyudv2(mats["mat"], mats["splits"], tmp_path / "raw", progress=False)
    assert "894" in json.loads((out / "prepare.json").read_text())["labels"]
    with pytest.raises(LabelRangeError, match=r"Label/1\.png.*mapping"):
        NYUDv2("train", out)[0]


def test_a_v5_file_is_not_the_labeled_mat(mats: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match=r"splits\.mat.*HDF5"):
        prepare_nyudv2(mats["splits"], mats["splits"], tmp_path / "x", progress=False)


def test_bad_split_indices(mats: dict[str, Path], tmp_path: Path) -> None:
    scipy_io.savemat(mats["splits"], {"trainNdxs": np.array([[2], [9]]), "testNdxs": [[1]]})
    with pytest.raises(DatasetError, match=r"splits\.mat.*trainNdxs.*\[1, 3\]"):
        prepare_nyudv2(**mats, out=tmp_path / "x", progress=False)


def test_missing_variable(mats: dict[str, Path], tmp_path: Path) -> None:
    scipy_io.savemat(mats["mapping"], {"className": np.arange(3)})
    with pytest.raises(DatasetError, match=r"classMapping40\.mat.*'mapClass'"):
        prepare_nyudv2(**mats, out=tmp_path / "x", progress=False)


def test_cli_subcommand(mats: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    files = ["--mat", str(mats["mat"]), "--splits", str(mats["splits"])]
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "nyudv2", *files, "--mapping", str(mats["mapping"]), "--out", str(out)])
    assert exc.value.code == 0
    assert len(NYUDv2("test", out)) == 1
