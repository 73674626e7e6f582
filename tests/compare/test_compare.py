"""End-to-end compare: 2 variants × 1 seed on tiny data, an interruption, a resumed rerun."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from compare_grids import MID, RGB, write_grid

from rgbx_fusion.cli import main
from rgbx_fusion.cli.compare import parser as compare_parser
from rgbx_fusion.compare import Variant, load_compare_config, run_compare
from rgbx_fusion.compare.jobs import run_dir
from rgbx_fusion.compare.robustness import run_robustness
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.experiment import build

BASE = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"


def _tiny_compare(root: Path, tmp_path: Path) -> Path:
    return write_grid(root, tmp_path, [MID, RGB], [0])


class Interrupt(RuntimeError):
    pass


def _best_checkpoint(folder: Path) -> Path:
    ckpts = sorted(folder.rglob("best-*.ckpt"))
    assert len(ckpts) == 1, ckpts
    return ckpts[0]


def test_compare_end_to_end_resumes_after_interruption(
    tiny_depth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_compare_config(_tiny_compare(tiny_depth_root, tmp_path))
    out = tmp_path / "out"

    def kill_after_first(variant: Variant, seed: int, metrics: dict[str, Any]) -> None:
        raise Interrupt("simulated kill after the first run")

    with pytest.raises(Interrupt):
        run_compare(config, out, after_run=kill_after_first)
    first = run_dir(out, config.variants[0], 0)
    assert (first / "metrics.json").is_file()
    assert not (out / "results.csv").exists()
    ckpt = _best_checkpoint(first)
    stamp = (ckpt.stat().st_mtime_ns, (first / "metrics.json").stat().st_mtime_ns)
    # A half-finished second run: a folder without metrics.json is restarted.
    second = run_dir(out, config.variants[1], 0)
    (second / "leftover").mkdir(parents=True)

    summary = run_compare(config, out, speed=False)
    assert summary["skipped"] == ["mid_add/seed0"]
    assert summary["trained"] == ["rgb_only/seed0"]
    assert (ckpt.stat().st_mtime_ns, (first / "metrics.json").stat().st_mtime_ns) == stamp
    assert not (second / "leftover").exists()

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["mid_add", "rgb_only"]
    for r in rows:
        for key in ("params", "gflops", "val_mIoU_mean", "test_mIoU_mean", "test_mIoU_std"):
            assert math.isfinite(float(r[key])), (key, r)
        assert 0.0 <= float(r["test_mIoU_mean"]) <= 1.0
    assert {r["stage"] for r in rows} == {"mid", "rgb_only"}
    assert rows[0]["fusion"] == "AddFusion"
    assert float(rows[0]["params"]) > float(rows[1]["params"])  # two encoders vs one
    assert any(k.startswith("iou_") for k in rows[0])
    assert float(rows[0]["latency_ms"]) > 0  # measured for the run trained with speed on
    md = (out / "results.md").read_text()
    assert "mid_add" in md and "rgb_only" in md and "±" in md
    for png in ("miou_vs_gflops.png", "per_class_iou.png"):
        assert (out / png).stat().st_size > 1000

    # A third call trains nothing and rewrites the same report.
    again = run_compare(config, out, speed=False)
    assert again["trained"] == [] and len(again["rows"]) == 2
    # Changed settings are refused: the folder belongs to the config that wrote it.
    changed = replace(config, overrides={**config.overrides, "model.lr": 0.5})
    with pytest.raises(ConfigError, match="settings of variants"):
        run_compare(changed, out, speed=False)

    # Robustness on the trained checkpoints (two levels per perturbation keeps it quick).
    levels = {
        "aux_shift_px": (0, 16),
        "aux_noise_std": (0.0, 1.0),
        "aux_holes_fraction": (0.0, 1.0),
        "rgb_dark_factor": (1.0, 0.1),
    }
    metrics = [
        yaml.safe_load((run_dir(out, v, 0) / "metrics.json").read_text()) for v in config.variants
    ]
    rob = run_robustness(metrics, out, levels)
    assert len(rob) == 2 * 4 * 2
    assert all(0.0 <= r["test_mIoU"] <= 1.0 for r in rob)
    # rgb_only ignores aux: its aux curves are flat.
    flat = [
        r["test_mIoU"]
        for r in rob
        if r["variant"] == "rgb_only" and r["perturbation"] != "rgb_dark_factor"
    ]
    assert max(flat) - min(flat) < 1e-9
    assert (out / "robustness.png").stat().st_size > 1000
    assert (run_dir(out, config.variants[0], 0) / "robustness.json").is_file()


def test_compare_parser_and_main_run_a_finished_compare(
    tiny_depth_root: Path, tmp_path: Path
) -> None:
    """The sub-command reuses finished runs: here every run is faked as done."""

    config_path = _tiny_compare(tiny_depth_root, tmp_path)
    config = load_compare_config(config_path)
    out = tmp_path / "out"
    for i, v in enumerate(config.variants):
        folder = run_dir(out, v, 0)
        folder.mkdir(parents=True)
        fake = {
            "variant": v.name,
            "seed": 0,
            "stage": "mid",
            "fusion": "AddFusion",
            "aligner": "-",
            "params": 1000 * (i + 1),
            "gflops": 0.5 * (i + 1),
            "val_mIoU": 0.4,
            "test_mIoU": 0.3 + 0.1 * i,
            "test_pixel_acc": 0.8,
            "iou": [0.3, float("nan")],
            "classes": ["a", "b"],
        }
        (folder / "metrics.json").write_text(json.dumps(fake))
    args = compare_parser().parse_args(["--config", str(config_path), "--out", str(out)])
    assert not args.robustness
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--config", str(config_path), "--out", str(out)])
    assert exc.value.code == 0
    text = (out / "results.md").read_text()
    assert "| rgb_only * |" in text  # on the Pareto front: the most accurate


def test_shipped_compare_configs_validate() -> None:
    configs = sorted((BASE.parents[1] / "compare").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"synthetic_depth", "synthetic_thermal", "synthetic_stages"}
    for path in (c for c in configs if c.stem in ("synthetic_depth", "synthetic_thermal")):
        config = load_compare_config(path)
        names = [v.name for v in config.variants]
        assert {"early", "late", "rgb_only", "aux_only", "mid_cmx"} <= set(names)
        assert {"rig_mid_add", "rig_mid_add_aligned"} <= set(names)
        assert config.seeds == (0,)
        assert config.overrides["trainer.max_epochs"] == 3  # the budget the README's table used
    rgbdt = load_compare_config(BASE.parents[1] / "compare" / "synthetic_rgbdt.yaml")
    assert [v.name for v in rgbdt.variants] == [
        "rgb_only",
        "rgb_depth",
        "rgb_thermal",
        "rgb_depth_thermal",
        "rgb_depth_thermal_dropout",
        "rgb_depth_thermal_dropout_token",
        "rgb_depth_thermal_dropout_14ep",
        "rgb_only_14ep",
        "rgb_depth_14ep",
        "rgb_thermal_14ep",
        "rgb_depth_thermal_dropout_d40_t60_14ep",
    ]
    nyu = load_compare_config(BASE.parents[1] / "compare" / "nyudv2.yaml")
    assert len(nyu.variants) == 5 and nyu.seeds == (0, 1, 2)
    assert nyu.executor.kind == "slurm" and nyu.executor.slurm.gpus_per_task == 1
    for path in (c for c in configs if c.stem.startswith("synthetic_alignment")):
        config = load_compare_config(path)  # the full recipe: no budget overrides
        names = [v.name for v in config.variants]
        assert names == ["registered", "misaligned", "misaligned_correlation"]
        align = config.run_args(config.variants[2], 0)
        assert any(Path(a).stem.startswith("correlation_align") for a in align)


@pytest.mark.parametrize("name", ["synthetic_depth", "synthetic_thermal"])
def test_shipped_compare_variants_build(
    name: str, tiny_depth_root: Path, tiny_thermal_root: Path
) -> None:
    """Every run's arguments parse and build (model and data), as ``compare`` would."""

    config = load_compare_config(BASE.parents[1] / "compare" / f"{name}.yaml")
    root = tiny_thermal_root if name == "synthetic_thermal" else tiny_depth_root
    for v in config.variants:
        args = [
            *config.run_args(v, config.seeds[0]),
            f"--data.dataset.init_args.root={root}",  # tiny data instead of the prepared one
            "--model.network.init_args.backbone=resnet10t",  # quicker to build
        ]
        cli = build(args=args)
        net = cli.task.net
        single = {"early", "late", "rgb_only", "aux_only"}
        assert net.fusion_stage == (v.name if v.name in single else "mid")
        assert (net.input_align is not None) == v.name.endswith("_aligned")


def test_interrupted_run_resumes_from_last_checkpoint_or_restarts(
    tiny_depth_root: Path, tmp_path: Path
) -> None:
    data = yaml.safe_load(_tiny_compare(tiny_depth_root, tmp_path).read_text())
    data["variants"] = data["variants"][1:]  # rgb_only: one encoder, the quickest
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_compare_config(path)
    out = tmp_path / "out"
    run_compare(config, out, speed=False)
    folder = run_dir(out, config.variants[0], 0)
    best = _best_checkpoint(folder)
    stamp = best.stat().st_mtime_ns
    # Killed after the last epoch's checkpoint, before metrics.json: resume, train nothing.
    (folder / "metrics.json").unlink()
    summary = run_compare(config, out, speed=False)
    assert summary["trained"] == ["rgb_only/seed0"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["checkpoint"] == str(best) and best.stat().st_mtime_ns == stamp
    assert math.isfinite(metrics["val_mIoU"])  # the best score survives the resume
    # A truncated last.ckpt cannot be resumed: the run is trained again from scratch.
    (folder / "metrics.json").unlink()
    last = Path(metrics["resumed_from"])
    last.write_bytes(last.read_bytes()[:100])
    summary = run_compare(config, out, speed=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"] is None
    assert len(list(folder.rglob("best-*.ckpt"))) == 1
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1
