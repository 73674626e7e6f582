"""A declared rig transform ``aux_from_rgb``: validation, resampling, the readers, the writer."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data import atomic
from rgbx_fusion.data.rig import (
    DeclaredTransform,
    apply_transform,
    read_declared_transform,
    write_declared_transform,
)
from rgbx_fusion.data.sets.folder import FolderRGBX
from rgbx_fusion.data.sets.images import ImageFolderRGBX
from rgbx_fusion.data.sets.pst900 import PST900
from rgbx_fusion.errors import ConfigError, ShapeMismatchError

H, W = 8, 10  # RGB size
CLASSES = ["a", "b"]


def translation(tx: float, ty: float) -> list[list[float]]:
    return [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]


def pattern_mm(h: int, w: int) -> np.ndarray:
    """Depth in mm that names its own pixel: 1000 + 100 · row + col."""
    rows, cols = np.mgrid[0:h, 0:w]
    return (1000 + 100 * rows + cols).astype(np.uint16)


def write_folder(
    root: Path,
    depth_mm: np.ndarray,
    declared: Any = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """A one-sample generic folder dataset (split ``val``, sample ``s``) with RGB of H×W."""
    for sub in ("rgb", "depth", "labels", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "rgb" / "s.png")
    Image.fromarray(depth_mm).save(root / "depth" / "s.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "labels" / "s.png")
    (root / "splits" / "val.txt").write_text("s\n")
    info: dict[str, Any] = {"classes": CLASSES, "depth_format": "png16_mm"}
    if declared is not None:
        info["aux_from_rgb"] = declared
    (root / "dataset.json").write_text(json.dumps(info))
    if meta is not None:
        (root / "meta.json").write_text(json.dumps({"s": meta}))
    return root


def load_mm(root: Path, **kwargs: Any) -> np.ndarray:
    aux = FolderRGBX("val", root, **kwargs)[0]["aux"][..., 0]
    return np.rint(aux * 1000).astype(np.int64)


def test_declared_translation_moves_a_known_pattern_and_outside_is_zero(tmp_path: Path) -> None:
    stored = pattern_mm(12, 14)  # aux larger than RGB: allowed with a declaration
    root = write_folder(tmp_path, stored, declared=translation(6, 2))
    got = load_mm(root)
    assert got.shape == (H, W)
    # RGB pixel (x, y) samples aux at (x + 6, y + 2); columns 8, 9 map to 14, 15: outside
    np.testing.assert_array_equal(got[:, :8], stored[2 : 2 + H, 6:14])
    assert (got[:, 8:] == 0).all()


def test_declared_affine_scale_is_bilinear_for_thermal(tmp_path: Path) -> None:
    rgb_dir, aux_dir = tmp_path / "rgb", tmp_path / "thermal"
    rgb_dir.mkdir()
    aux_dir.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb_dir / "s.png")
    thermal = np.random.default_rng(0).integers(0, 256, (2 * H, 2 * W), dtype=np.uint8)
    Image.fromarray(thermal).save(aux_dir / "s.png")
    # aux at twice the resolution: RGB centre x lands between aux pixels 2x and 2x + 1
    ds = ImageFolderRGBX(
        rgb_dir=rgb_dir,
        aux_dir=aux_dir,
        modality="thermal",
        classes=CLASSES,
        aux_from_rgb=[[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]],
    )
    aux = ds[0]["aux"][..., 0]
    blocks = thermal.reshape(H, 2, W, 2).astype(np.float64).mean(axis=(1, 3)) / 255.0
    assert aux.shape == (H, W) and aux.dtype == np.float32
    np.testing.assert_allclose(aux, blocks, atol=1e-6)


def test_the_convention_matches_cv2_warp_with_inverse_map(tmp_path: Path) -> None:
    matrix = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    aux = np.random.default_rng(1).uniform(0, 1, (H, W)).astype(np.float32)
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    ref = cv2.warpPerspective(aux, matrix, (W, H), flags=flags, borderValue=0.0)
    np.testing.assert_array_equal(apply_transform(aux, matrix, (H, W), "depth"), ref)
    got = apply_transform(aux[..., None], matrix, (H, W), "thermal")
    assert got.shape == (H, W, 1)
    np.testing.assert_array_equal(got[..., 0], ref)


def test_depth_holes_stay_holes_and_nothing_is_interpolated_across_them() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, 5:] = 4.0
    depth[3, 2] = 0.0  # a hole
    half = translation(0.5, 0.0)  # every RGB pixel falls halfway between two aux pixels
    got = apply_transform(depth, half, (H, W), "depth")
    assert set(np.unique(got).tolist()) <= {0.0, 2.0, 4.0}  # no 1.0, no 3.0
    # the pixels beside the hole (one side valid, the other missing) keep a real value or 0
    assert got[3, 1] in (0.0, 2.0) and got[3, 2] in (0.0, 2.0)
    assert (got == 0).sum() == 1  # the hole, once: it neither grows nor vanishes
    outside = apply_transform(depth, translation(1.0, 0.0), (H, W), "depth")
    assert (outside[:, -1] == 0).all()  # x = 10 lies past the aux frame's edge at 9.5
    # thermal is bilinear: the same shift averages neighbours
    thermal = apply_transform(depth, half, (H, W), "thermal")
    assert thermal[0, 4] == pytest.approx(3.0)


def test_meta_carries_the_misregistration_left_after_the_declaration(tmp_path: Path) -> None:
    truth = np.array([[0.99, -0.05, 2.0], [0.05, 0.99, -1.5], [0.0, 0.0, 1.0]])
    declared = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    root = write_folder(
        tmp_path, pattern_mm(H, W), declared.tolist(), meta={"aux_from_rgb": truth.tolist()}
    )
    meta = FolderRGBX("val", root)[0]["meta"]
    np.testing.assert_allclose(meta["aux_from_rgb"], np.linalg.inv(declared) @ truth, atol=1e-12)
    # declaring the true transform leaves the identity
    same = DeclaredTransform(truth, "test").adjust_meta({"aux_from_rgb": truth.tolist()})
    np.testing.assert_allclose(same["aux_from_rgb"], np.eye(3), atol=1e-12)


def test_declaring_the_true_transform_registers_a_warped_aux(tmp_path: Path) -> None:
    registered = pattern_mm(H, W)
    truth = np.array(translation(2.0, 1.0))
    # stored the way prepare synthetic --misalign stores it: aux(q) = registered(T⁻¹ q)
    stored = cv2.warpAffine(registered, truth[:2], (W, H), flags=cv2.INTER_NEAREST)
    root = write_folder(tmp_path, stored, truth.tolist(), meta={"aux_from_rgb": truth.tolist()})
    got = load_mm(root)
    np.testing.assert_array_equal(got[: H - 1, : W - 2], registered[: H - 1, : W - 2])
    assert (got[H - 1 :] == 0).all() and (got[:, W - 2 :] == 0).all()


BAD = {
    "singular": [[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]],
    "nan": [[1.0, 0.0, float("nan")], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    "shape": [[1.0, 0.0], [0.0, 1.0]],
    "text": [["1", 0, 0], [0, 1, 0], [0, 0, 1]],
    "negative_corner": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
}
BAD_FOUND = {
    "singular": "singular",
    "nan": "NaN",
    "shape": "3×3",
    "text": "3×3",
    "negative_corner": r"m\[2\]\[2\]",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_declarations_name_dataset_json(tmp_path: Path, case: str) -> None:
    root = write_folder(tmp_path, pattern_mm(H, W), BAD[case])
    with pytest.raises(ConfigError, match=rf"dataset\.json.*{BAD_FOUND[case]}"):
        FolderRGBX("val", root)


@pytest.mark.parametrize(
    ("matrix", "found"),
    [
        (translation(500.0, 0.0), "0% .*RGB corners map to"),  # maps outside the frame
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.2, 0.0, 1.0]], "denominator"),  # x > 5: ≤ 0
    ],
)
def test_size_dependent_checks_run_on_the_first_sample(
    tmp_path: Path, matrix: Sequence[Sequence[float]], found: str
) -> None:
    root = write_folder(tmp_path, pattern_mm(H, W), matrix)
    ds = FolderRGBX("val", root)  # the sizes are not known yet
    with pytest.raises(ConfigError, match=re.escape(str(root / "dataset.json")) + f".*{found}"):
        ds[0]


def test_read_declared_transform_without_and_with_sizes(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    assert read_declared_transform(path, {}) is None
    info = {"aux_from_rgb": translation(4.0, 0.0)}
    np.testing.assert_array_equal(read_declared_transform(path, info), translation(4.0, 0.0))
    assert read_declared_transform(path, info, (H, W), (H, W)) is not None  # 60 % inside
    with pytest.raises(ConfigError, match=r"dataset\.json.*at least 50%"):
        read_declared_transform(path, info, (H, W), (H, 8))


def test_the_option_overrides_dataset_json_and_is_named_in_errors(tmp_path: Path) -> None:
    root = write_folder(tmp_path, pattern_mm(H, W), translation(100.0, 0.0))
    got = load_mm(root, aux_from_rgb=translation(1.0, 0.0))
    np.testing.assert_array_equal(got[:, : W - 1], pattern_mm(H, W)[:, 1:])
    with pytest.raises(ConfigError, match=r"data\.dataset\.init_args\.aux_from_rgb.*singular"):
        FolderRGBX("val", root, aux_from_rgb=BAD["singular"])
    rgb_dir, aux_dir = root / "rgb", root / "depth"
    with pytest.raises(ConfigError, match=r"data\.dataset\.init_args\.aux_from_rgb.*3×3"):
        ImageFolderRGBX(
            rgb_dir=rgb_dir,
            aux_dir=aux_dir,
            depth_format="png16_mm",
            classes=CLASSES,
            aux_from_rgb=[[1.0]],
        )


def test_another_aux_size_without_a_declaration_is_still_an_error(tmp_path: Path) -> None:
    root = write_folder(tmp_path, pattern_mm(12, 14))
    with pytest.raises(ShapeMismatchError, match=r"depth/s\.png.*8×10.*12×14.*aux_from_rgb"):
        FolderRGBX("val", root)[0]


def test_paired_readers_resample_each_part_by_its_kind(tmp_path: Path) -> None:
    base = tmp_path / "train"
    for sub in ("rgb", "thermal", "depth", "labels"):
        (base / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(base / "rgb" / "f.png")
    thermal = np.tile(np.arange(0, 20 * W, 20, dtype=np.uint8), (H, 1))
    Image.fromarray(thermal).save(base / "thermal" / "f.png")
    Image.fromarray(pattern_mm(H, W)).save(base / "depth" / "f.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(base / "labels" / "f.png")
    (tmp_path / "dataset.json").write_text(json.dumps({"aux_from_rgb": translation(0.5, 0.0)}))
    sample = PST900("train", tmp_path, aux="thermal+depth", depth_format="png16_mm")[0]
    t, d = sample["aux"][..., 0], sample["aux"][..., 1]
    np.testing.assert_allclose(t[:, : W - 1] * 255, thermal[:, : W - 1] + 10.0, atol=1e-4)
    depth_mm = np.rint(d * 1000)
    np.testing.assert_array_equal(depth_mm[:, : W - 1], pattern_mm(H, W)[:, 1:])  # nearest
    shifted = PST900("train", tmp_path, aux="thermal", aux_from_rgb=translation(1.0, 0.0))[0]
    np.testing.assert_allclose(shifted["aux"][:, : W - 1, 0] * 255, thermal[:, 1:], atol=1e-4)
    assert (shifted["aux"][:, W - 1] == 0).all()  # past the right edge


def test_write_declared_transform_keeps_a_backup_and_round_trips(tmp_path: Path) -> None:
    root = write_folder(tmp_path, pattern_mm(H, W))
    old = (root / "dataset.json").read_bytes()
    backup = write_declared_transform(
        root, np.array(translation(1.0, 0.0)), extra={"calibration": {"residual_px": 0.4}}
    )
    assert backup == root / "dataset.json.bak" and backup.read_bytes() == old
    info = json.loads((root / "dataset.json").read_text())
    assert info["aux_from_rgb"] == translation(1.0, 0.0)
    assert info["calibration"] == {"residual_px": 0.4} and info["classes"] == CLASSES
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temp
    got = load_mm(root)
    np.testing.assert_array_equal(got[:, : W - 1], pattern_mm(H, W)[:, 1:])
    # a second write overwrites the backup with the previous version
    first = (root / "dataset.json").read_bytes()
    write_declared_transform(root, translation(2.0, 0.0))
    assert (root / "dataset.json.bak").read_bytes() == first


def test_write_declared_transform_validates_and_is_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_folder(tmp_path, pattern_mm(H, W))
    old = (root / "dataset.json").read_bytes()
    with pytest.raises(ConfigError, match=r"dataset\.json.*singular"):
        write_declared_transform(root, BAD["singular"])
    with pytest.raises(ConfigError, match="NaN"):
        write_declared_transform(root, BAD["nan"])
    assert (root / "dataset.json").read_bytes() == old
    assert not (root / "dataset.json.bak").exists()

    real_replace = os.replace

    def fail_on_dataset_json(src: Any, dst: Any) -> None:
        if Path(dst).name == "dataset.json":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_dataset_json)
    with pytest.raises(OSError, match="disk full"):
        write_declared_transform(root, translation(1.0, 0.0))
    assert (root / "dataset.json").read_bytes() == old  # the old file is untouched
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_write_declared_transform_creates_a_missing_dataset_json(tmp_path: Path) -> None:
    assert write_declared_transform(tmp_path, translation(1.0, 0.0)) is None
    assert json.loads((tmp_path / "dataset.json").read_text()) == {
        "aux_from_rgb": translation(1.0, 0.0)
    }
