"""Rig calibration from unlabelled pairs: recovery, outlier rejection, writing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.bench.registration import misregister, random_transform
from rgbx_fusion.cli.calibrate import run
from rgbx_fusion.data.calibration import calibrate, endpoint_error
from rgbx_fusion.data.sets.folder import FolderRGBX
from rgbx_fusion.data.sets.synthetic_scene import render_frame
from rgbx_fusion.errors import DatasetError, MissingFileError

H, W = 120, 160
RIG = random_transform(np.random.default_rng(4), H, W, max_shift=6.0, max_rotation=3.0)
SEEDS = (0, 1, 2, 3, 5, 6, 7, 8)  # frames with warm objects (seed 4 shows only posters)
SEARCH = {"max_rotation": 3.0, "max_scale": 0.04, "max_shift": 0.06}  # covers RIG, fast
FLAGS = ["--max-rotation", "3", "--max-scale", "0.04", "--max-shift", "0.06"]


def _write_rig(root: Path, seeds: tuple[int, ...], outliers: dict[str, str]) -> Path:
    """A thermal folder dataset whose aux is misregistered by ``RIG`` (+ named outliers)."""
    for sub in ("rgb", "thermal", "labels", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for seed in seeds:
        frame = render_frame(seed, H, W, "thermal", daylight=True)
        name = f"{seed:03d}"
        aux = misregister(frame.aux[..., None], RIG, nearest=False)[..., 0]
        kind = outliers.get(name)
        if kind == "flat":
            aux = np.full_like(aux, 0.4)
        elif kind == "other scene":
            aux = render_frame(100 + seed, H, W, "thermal", daylight=True).aux
        Image.fromarray(frame.rgb).save(root / "rgb" / f"{name}.png")
        thermal = np.clip(aux * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        Image.fromarray(thermal).save(root / "thermal" / f"{name}.png")
        Image.fromarray(frame.labels).save(root / "labels" / f"{name}.png")
        names.append(name)
    (root / "splits" / "train.txt").write_text("\n".join(names) + "\n")
    info = {"name": "rig", "classes": [f"c{i}" for i in range(8)], "modality": "thermal"}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_calibrate_recovers_the_rig_and_rejects_outliers(tmp_path: Path) -> None:
    outliers = {"002": "flat", "006": "other scene"}
    root = _write_rig(tmp_path / "rig", SEEDS, outliers)
    result = calibrate(root, model="affine", **SEARCH)
    error = endpoint_error(result.aux_from_rgb, RIG, H, W, step=1)
    before = endpoint_error(np.eye(3), RIG, H, W, step=1)
    assert before > 4.0
    assert error < 0.5, f"EPE {before:.2f} -> {error:.2f} px"
    rejected = {p.name: p.reason for p in result.rejected}
    assert set(outliers) <= set(rejected), rejected
    assert "flat" in rejected["002"]
    assert len(result.used) >= 4


def test_the_cli_writes_dataset_json_with_a_backup_and_readers_apply_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write_rig(tmp_path / "rig", SEEDS[:6], {})
    before = (root / "dataset.json").read_text()
    assert run(["--root", str(root), "--model", "similarity", *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "aux_from_rgb =" in out and "pairs used" in out
    assert (root / "dataset.json.bak").read_text() == before
    info = json.loads((root / "dataset.json").read_text())
    assert info["calibration"]["model"] == "similarity"
    declared = np.asarray(info["aux_from_rgb"])
    assert endpoint_error(declared, RIG, H, W, step=1) < 0.6
    # the reader now resamples aux onto the RGB grid: it matches the registered render
    sample = FolderRGBX("train", root, "thermal")[1]
    registered = render_frame(SEEDS[1], H, W, "thermal", daylight=True).aux
    inner = (slice(12, -12), slice(12, -12))
    gap = np.abs(sample["aux"][..., 0][inner] - registered[inner]).mean()
    raw = np.asarray(Image.open(root / "thermal" / f"{SEEDS[1]:03d}.png"), np.float32) / 65535
    assert gap < 0.5 * np.abs(raw[inner] - registered[inner]).mean()


def test_too_few_usable_pairs_is_a_typed_error_naming_the_folder(tmp_path: Path) -> None:
    names = {f"{s:03d}": "flat" for s in SEEDS[:4]}
    root = _write_rig(tmp_path / "rig", SEEDS[:4], names)
    with pytest.raises(DatasetError, match="pairs that register") as info:
        calibrate(root, min_pairs=2, **SEARCH)
    assert str(root) in str(info.value)


def test_a_folder_without_dataset_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"dataset\.json"):
        calibrate(tmp_path / "nowhere")


def test_dry_run_leaves_dataset_json_alone(tmp_path: Path) -> None:
    root = _write_rig(tmp_path / "rig", SEEDS[:5], {})
    before = (root / "dataset.json").read_text()
    report = tmp_path / "report.json"
    args = ["--root", str(root), "--model", "translation", "--dry-run", *FLAGS]
    assert run([*args, "--out", str(report)]) == 0
    assert (root / "dataset.json").read_text() == before
    assert not (root / "dataset.json.bak").exists()
    assert len(json.loads(report.read_text())["pairs"]) == 5
