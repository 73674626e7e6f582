from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.sets.synthetic import SyntheticRGBX, SyntheticSpec, prepare_synthetic
from rgbx_fusion.data.sets.synthetic_scene import DEPTH_CLASSES, render_frame
from rgbx_fusion.errors import ConfigError, MissingFileError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_train=6, num_val=2, num_test=2, height=48, width=64)
    a = prepare_synthetic(tmp_path / "a", spec, workers=1, progress=False)
    b = prepare_synthetic(tmp_path / "b", spec, workers=2, progress=False)
    assert _digest(a) == _digest(b)
    c = prepare_synthetic(
        tmp_path / "c",
        SyntheticSpec(num_train=6, num_val=2, num_test=2, height=48, width=64, seed=1),
        workers=1,
        progress=False,
    )
    assert _digest(a) != _digest(c)


def test_prepare_is_resumable_and_refuses_other_settings(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_train=4, num_val=1, num_test=1, height=48, width=64)
    root = prepare_synthetic(tmp_path / "d", spec, workers=1, progress=False)
    digest = _digest(root)
    (root / "rgb" / "00002.png").unlink()  # an interrupted run lost a file
    (root / "dataset.json").unlink()
    prepare_synthetic(root, spec, workers=1, progress=False)
    assert _digest(root) == digest
    with pytest.raises(ConfigError, match="other settings"):
        prepare_synthetic(root, SyntheticSpec(num_train=5, num_val=1, num_test=1), progress=False)


def test_reader_returns_the_sample_contract(tiny_depth_root: Path) -> None:
    ds = SyntheticRGBX("train", tiny_depth_root)
    assert len(ds) == 12
    assert ds.classes == DEPTH_CLASSES
    s = ds[0]
    assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (60, 80, 3)
    assert s["aux"].dtype == np.float32 and s["aux"].shape == (60, 80, 1)
    assert s["mask"].dtype == np.int64 and s["mask"].max() < len(DEPTH_CLASSES)
    assert s["aux"][s["aux"] > 0].min() > 0.0 and s["aux"].max() < 8.0
    assert np.asarray(s["meta"]["K"]).shape == (3, 3)


def test_missing_dataset_tells_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="rgbx-fusion prepare synthetic"):
        SyntheticRGBX("train", tmp_path / "nowhere")


def test_thermal_night_scenes(tiny_thermal_root: Path) -> None:
    ds = SyntheticRGBX("train", tiny_thermal_root, modality="thermal")
    s = ds[0]
    assert s["rgb"].mean() < 60  # night: dark image
    person = ds.classes.index("person")
    radiator = ds.classes.index("radiator")
    warm = np.isin(s["mask"], [person, radiator])
    if warm.any():
        assert s["aux"][..., 0][warm].mean() > s["aux"][..., 0][~warm].mean() + 0.2


def test_misregistration_is_recorded(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_train=3, num_val=1, num_test=1, height=48, width=64, misalign="affine")
    root = prepare_synthetic(tmp_path / "m", spec, workers=1, progress=False)
    meta = json.loads((root / "meta.json").read_text())
    ds = SyntheticRGBX("train", root)
    m = np.asarray(ds[0]["meta"]["aux_from_rgb"])
    assert m.shape == (3, 3) and not np.allclose(m, np.eye(3))
    assert set(meta) == {f"{i:05d}" for i in range(5)}
    per_frame = [np.asarray(v["aux_from_rgb"]) for v in meta.values()]
    assert not np.allclose(per_frame[0], per_frame[1])


def test_rig_misregistration_is_one_transform_for_every_frame(tmp_path: Path) -> None:
    small = SyntheticSpec(num_train=3, num_val=1, num_test=1, height=48, width=64)
    spec = dataclasses.replace(small, misalign="affine", misalign_per="rig")
    root = prepare_synthetic(tmp_path / "rig", spec, workers=1, progress=False)
    mats = [
        np.asarray(v["aux_from_rgb"]) for v in json.loads((root / "meta.json").read_text()).values()
    ]
    assert len(mats) == 5 and not np.allclose(mats[0], np.eye(3))
    assert all(np.array_equal(m, mats[0]) for m in mats)
    # Same scene content as the registered frames: only the aux warp differs.
    plain = prepare_synthetic(tmp_path / "plain", small, workers=1, progress=False)
    rig_rgb = np.asarray(Image.open(root / "rgb" / "00000.png"))
    assert np.array_equal(rig_rgb, np.asarray(Image.open(plain / "rgb" / "00000.png")))
    with pytest.raises(ConfigError, match="misalign_per"):
        SyntheticSpec(misalign_per="sometimes")


def _object_features(n_frames: int = 120) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per object instance: (rgb features, depth-relief features)."""
    feats: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in DEPTH_CLASSES}
    for seed in range(n_frames):
        f = render_frame(seed, 120, 160)
        rgb = f.rgb.astype(np.float32) / 255
        depth = f.aux
        for cls in (3, 4, 5, 6, 7):
            n, comp = cv2.connectedComponents((f.labels == cls).astype(np.uint8))
            for k in range(1, n):
                obj = comp == k
                if obj.sum() < 60:
                    continue
                ring = cv2.dilate(obj.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
                ring &= ~obj & (depth > 0)
                inner = obj & (depth > 0)
                if ring.sum() < 10 or inner.sum() < 10:
                    continue
                pix = rgb[obj]
                hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[obj]
                rgb_f = np.concatenate(
                    [pix.mean(0), pix.std(0), [np.cos(np.deg2rad(hsv[:, 0])).mean()]]
                )
                relief = np.median(depth[inner]) - np.median(depth[ring])
                depth_f = np.array([relief, depth[inner].std()])
                feats[DEPTH_CLASSES[cls]].append((rgb_f, depth_f))
    return feats


def _pair_accuracy(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Leave-one-out 5-NN accuracy of telling ``a`` from ``b`` (standardised features)."""
    x = np.stack(a + b)
    y = np.array([0] * len(a) + [1] * len(b))
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :5]
    pred = (y[nn].mean(1) > 0.5).astype(int)
    return float((pred == y).mean())


@pytest.fixture(scope="module")
def object_features() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return _object_features()


@pytest.mark.parametrize("pair", [("panel", "poster"), ("panel", "niche"), ("poster", "niche")])
def test_geometry_only_pairs_need_depth(object_features, pair) -> None:
    a, b = (object_features[n] for n in pair)
    assert len(a) > 20 and len(b) > 20
    rgb_acc = _pair_accuracy([f[0] for f in a], [f[0] for f in b])
    depth_acc = _pair_accuracy([f[1] for f in a], [f[1] for f in b])
    assert rgb_acc < 0.65, f"an rgb oracle separates {pair} ({rgb_acc:.2f})"
    assert depth_acc > 0.9, f"depth does not separate {pair} ({depth_acc:.2f})"


def test_colour_only_pair_needs_rgb(object_features) -> None:
    a, b = object_features["cushion_red"], object_features["cushion_green"]
    assert len(a) > 20 and len(b) > 20
    rgb_acc = _pair_accuracy([f[0] for f in a], [f[0] for f in b])
    depth_acc = _pair_accuracy([f[1] for f in a], [f[1] for f in b])
    assert rgb_acc > 0.95, f"colour does not separate the cushions ({rgb_acc:.2f})"
    assert depth_acc < 0.65, f"a depth oracle separates the cushions ({depth_acc:.2f})"
