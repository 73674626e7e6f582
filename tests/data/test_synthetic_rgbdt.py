"""The three-modality synthetic dataset (``prepare synthetic --modality depth,thermal``)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from rgbx_fusion.cli import prepare as prepare_cli
from rgbx_fusion.data.sets.synthetic import SyntheticRGBX, SyntheticSpec, prepare_synthetic
from rgbx_fusion.data.sets.synthetic_rgbdt import (
    RGBDT_CLASSES,
    SEPARATED_BY,
    MultiFrame,
    render_rgbdt_frame,
)
from rgbx_fusion.errors import ConfigError, DatasetError

H, W = 60, 80
N_FRAMES = 160  # enough instances per class for the means below to be stable (≈ 1 s)


def _spec(**kw: object) -> SyntheticSpec:
    args: dict[str, object] = {
        "modality": "depth,thermal",
        "num_train": 4,
        "num_val": 1,
        "num_test": 1,
        "height": H,
        "width": W,
    }
    args.update(kw)
    return SyntheticSpec(**args)  # type: ignore[arg-type]


def _digest(root: Path) -> str:
    """Hash of every file: decoded pixels for PNGs (independent of the zlib build)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        h.update(p.relative_to(root).as_posix().encode())
        if p.suffix == ".png":
            a = np.asarray(Image.open(p))
            h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def rgbdt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_rgbdt")
    return prepare_synthetic(root, _spec(), workers=1, progress=False)


def test_spec_accepts_a_comma_list_in_any_order() -> None:
    spec = _spec(modality=" thermal, depth")
    assert spec.modality == "depth,thermal"
    assert spec.modalities == ("depth", "thermal")
    assert _spec(modality="thermal").modalities == ("thermal",)
    for bad in ("depth,depth", "depth,rgb", "", "hha"):
        with pytest.raises(ConfigError, match="modality"):
            _spec(modality=bad)
    args = prepare_cli.parser().parse_args(["synthetic", "--modality", "thermal,depth"])
    assert args.modality == "thermal,depth"
    with pytest.raises(SystemExit):
        prepare_cli.parser().parse_args(["synthetic", "--modality", "depth,events"])


@pytest.mark.parametrize("kind", ["affine", "homography"])
def test_misalign_with_several_modalities_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError, match="not supported yet with several aux modalities"):
        _spec(misalign=kind)
    assert _spec(modality="thermal", misalign=kind).misalign == kind


def test_prepare_writes_every_modality_and_declares_them(rgbdt_root: Path) -> None:
    for folder in ("rgb", "depth", "thermal", "labels"):
        assert len(list((rgbdt_root / folder).glob("*.png"))) == 6
    info = json.loads((rgbdt_root / "dataset.json").read_text())
    assert info["name"] == "synthetic-rgbdt"
    assert info["modalities"] == {
        "depth": {"folder": "depth", "encoding": "png16_mm", "channels": 1, "optional": False},
        "thermal": {
            "folder": "thermal",
            "encoding": "png16_unit",
            "channels": 1,
            "optional": False,
        },
    }
    assert info["modality"] == "depth" and info["depth_format"] == "png16_mm"
    assert info["classes"] == list(RGBDT_CLASSES) and len(info["palette"]) == len(RGBDT_CLASSES)
    assert info["ignore_index"] == 255 and np.asarray(info["K"]).shape == (3, 3)
    assert info["generator"]["modality"] == "depth,thermal"
    for folder in ("depth", "thermal"):
        assert np.asarray(Image.open(rgbdt_root / folder / "00000.png")).dtype == np.uint16


def test_generation_is_deterministic(rgbdt_root: Path, tmp_path: Path) -> None:
    again = prepare_synthetic(tmp_path / "again", _spec(), workers=1, progress=False)
    assert _digest(again) == _digest(rgbdt_root)
    assert prepare_synthetic(rgbdt_root, _spec(), progress=False) == rgbdt_root  # kept as is
    other = prepare_synthetic(tmp_path / "other", _spec(seed=1), workers=1, progress=False)
    assert _digest(other) != _digest(rgbdt_root)
    a, b = render_rgbdt_frame(7, H, W), render_rgbdt_frame(7, H, W)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.aux[m], b.aux[m]) for m in ("depth", "thermal"))


def test_both_one_aux_views_load_the_same_frames(rgbdt_root: Path) -> None:
    rgbd = SyntheticRGBX("train", rgbdt_root, modality="depth")
    rgbt = SyntheticRGBX("train", rgbdt_root, modality="thermal")
    assert len(rgbd) == len(rgbt) == 4
    assert rgbd.classes == rgbt.classes == RGBDT_CLASSES
    for i in range(len(rgbd)):
        d, t = rgbd[i], rgbt[i]
        assert np.array_equal(d["rgb"], t["rgb"]) and np.array_equal(d["mask"], t["mask"])
        assert d["meta"]["name"] == t["meta"]["name"]
        assert d["aux"].shape == t["aux"].shape == (H, W, 1)
        valid = d["aux"] > 0
        assert d["aux"][valid].min() > 0.3 and d["aux"].max() < 8.0  # metres
        assert t["aux"].min() >= 0.0 and t["aux"].max() <= 1.0
        assert d["rgb"].mean() > 60  # lit by day


def test_undeclared_modality_is_a_typed_error(tiny_depth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.json.*'thermal'"):
        SyntheticRGBX("train", tiny_depth_root, modality="thermal")
    root = tmp_path / "depth_only"
    root.mkdir()
    info = json.loads((tiny_depth_root / "dataset.json").read_text())
    info["modalities"] = {"depth": {"folder": "depth", "encoding": "png16_mm", "channels": 1}}
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"dataset\.json.*'thermal'.*only 'depth'"):
        SyntheticRGBX("train", root, modality="thermal")


# The single-modality renderer as it was before the three-modality one was added:
# decoded pixels and dataset.json of `_spec(modality=..., seed=3, num_train=2)`.
PINNED = {
    ("depth", "none"): "d557ead3a0fc11d57329d1a15c5d2ee0e5582aceb6c0c7fb61ac4ce7261b7863",
    ("thermal", "none"): "e33a39839a4fbc7a82ff90b42a40495c406fba31d634b93011401d169b44f119",
    ("depth", "affine"): "e9936ac94d960ada50755336305aba68e29e862440730b116d0aa02087434cf0",
}


@pytest.mark.parametrize(("modality", "misalign"), list(PINNED))
def test_single_modality_outputs_are_unchanged(
    modality: str, misalign: str, tmp_path: Path
) -> None:
    spec = _spec(modality=modality, misalign=misalign, seed=3, num_train=2)
    root = prepare_synthetic(tmp_path / modality, spec, workers=1, progress=False)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        ["rgb", modality, "labels", "splits"]
    )
    assert _digest(root) == PINNED[(modality, misalign)]


# --- the separability design, measured on rendered frames ---------------------------------


def _instance_features(frames: list[MultiFrame]) -> dict[str, npt.NDArray[np.float64]]:
    """Per object instance: mean RGB (0–255), temperature above the frame's wall, relief (m).

    Relief is the median measured depth of the instance minus that of the surface it
    stands on or hangs on (floor or wall) in a 3-pixel ring around it; negative: in front.
    """
    feats: dict[str, list[tuple[float, ...]]] = {c: [] for c in RGBDT_CLASSES}
    kernel = np.ones((3, 3), np.uint8)
    for f in frames:
        lab, depth, thermal = f.labels, f.aux["depth"], f.aux["thermal"]
        wall_temp = float(np.median(thermal[lab == 1]))
        for ci, name in enumerate(RGBDT_CLASSES[3:], start=3):
            n, comp = cv2.connectedComponents((lab == ci).astype(np.uint8), connectivity=4)
            for j in range(1, n):
                inst = comp == j
                ring = cv2.dilate(inst.astype(np.uint8), kernel, iterations=3) > 0
                ring &= ~inst & (depth > 0)
                ring &= lab == (0 if name.startswith(("box", "cushion")) else 1)
                valid = inst & (depth > 0)
                if inst.sum() < 6 or ring.sum() < 4 or valid.sum() < 3:
                    continue
                relief = float(np.median(depth[valid]) - np.median(depth[ring]))
                temp = float(thermal[inst].mean()) - wall_temp
                feats[name].append((*f.rgb[inst].mean(0), temp, relief))
    return {c: np.asarray(v, np.float64) for c, v in feats.items()}


@pytest.fixture(scope="module")
def features() -> dict[str, npt.NDArray[np.float64]]:
    return _instance_features([render_rgbdt_frame(1000 + i, H, W) for i in range(N_FRAMES)])


COLUMNS = {"rgb": slice(0, 3), "thermal": slice(3, 4), "depth": slice(4, 5)}


def _gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Distance between the class means, and how well one threshold tells instances apart.

    The second number is the AUC of the better direction, max over the feature's columns:
    the chance that an instance of one class lies above one of the other (0.5: the
    classes overlap entirely, 1.0: a threshold separates every pair).
    """
    diff = float(np.linalg.norm(a.mean(0) - b.mean(0)))
    aucs = [
        float((a[:, [j]] > b[:, j]).mean() + 0.5 * (a[:, [j]] == b[:, j]).mean())
        for j in range(a.shape[1])
    ]
    return diff, max(max(x, 1.0 - x) for x in aucs)


#: "Alike" and "different" per modality: mean gap below / above (RGB 0–255, thermal
#: [0, 1], relief in metres), AUC below / above.
ALIKE = {"rgb": 25.0, "thermal": 0.01, "depth": 0.1}
DIFFERENT = {"rgb": 80.0, "thermal": 0.2, "depth": 0.2}
AUC_ALIKE, AUC_DIFFERENT = 0.7, 0.8
PAIRS = [
    (mod, a, b)
    for mod, groups in SEPARATED_BY.items()
    for group in groups
    for a, b in itertools.combinations(group, 2)
]


@pytest.mark.parametrize(("separating", "a", "b"), PAIRS, ids=[f"{p[1]}-{p[2]}" for p in PAIRS])
def test_each_group_is_separated_by_one_modality_only(
    features: dict[str, npt.NDArray[np.float64]], separating: str, a: str, b: str
) -> None:
    fa, fb = features[a], features[b]
    assert min(len(fa), len(fb)) >= 40, "too few instances for a stable measure"
    for modality, cols in COLUMNS.items():
        diff, auc = _gap(fa[:, cols], fb[:, cols])
        if modality == separating:
            assert diff > DIFFERENT[modality] and auc > AUC_DIFFERENT, (modality, diff, auc)
        else:
            assert diff < ALIKE[modality] and auc < AUC_ALIKE, (modality, diff, auc)
