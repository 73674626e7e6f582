"""Aggregation over seeds, the Pareto front and the written report."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from rgbx_fusion.compare.report import aggregate, mean_std, pareto_front, write_report


def test_mean_std_uses_the_sample_std() -> None:
    mean, std = mean_std([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(0.1)
    assert mean_std([0.4]) == (0.4, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_pareto_front() -> None:
    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (3.0, 0.6), (0.5, 0.1), (1.0, 0.5)]
    # (2, .4) is dominated by (1, .5); (3, .6) by (3, .7); the duplicate (1, .5) pair
    # does not dominate itself.
    assert pareto_front(pts) == [0, 2, 4, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.0)]) == [0]


def _run(variant: str, seed: int, test: float, iou: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "variant": variant,
        "seed": seed,
        "stage": "mid",
        "fusion": "AddFusion",
        "aligner": "-",
        "params": 10,
        "gflops": 1.5,
        "val_mIoU": test + 0.1,
        "test_mIoU": test,
        "test_pixel_acc": 0.9,
        "iou": iou,
        "classes": ["road", "car"],
        **extra,
    }


def test_aggregate_over_seeds_skips_nan_ious() -> None:
    runs = [
        _run("a", 0, 0.4, [0.2, float("nan")], latency_ms=2.0),
        _run("b", 0, 0.9, [0.8, 1.0]),
        _run("a", 1, 0.6, [0.4, 0.5], latency_ms=4.0),
    ]
    rows = aggregate(runs)
    assert [r["variant"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert a["test_mIoU_mean"] == pytest.approx(0.5)
    assert a["test_mIoU_std"] == pytest.approx(math.sqrt(0.02))
    assert a["val_mIoU_mean"] == pytest.approx(0.6)
    assert a["iou_road"] == pytest.approx(0.3) and a["iou_car"] == pytest.approx(0.5)
    assert a["latency_ms"] == pytest.approx(3.0) and a["seeds"] == "0 1"
    assert math.isnan(rows[1]["latency_ms"]) and rows[1]["test_mIoU_std"] == 0.0


def test_write_report_files(tmp_path: Path) -> None:
    runs = [_run("cheap", 0, 0.5, [0.5, 0.5]), _run("big", 0, 0.4, [0.4, 0.4])]
    runs[1]["gflops"] = 3.0
    rows = write_report(runs, tmp_path)
    assert len(rows) == 2
    with (tmp_path / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["cheap", "big"]
    assert "classes" not in table[0] and table[0]["iou_road"] == "0.5"
    md = (tmp_path / "results.md").read_text()
    assert "| cheap * |" in md and "| big |" in md  # big costs more and scores less
    assert md.index("| cheap") < md.index("| big")  # best test mIoU first
    assert "0.500 ± 0.000" in md
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 3
    assert (tmp_path / "miou_vs_gflops.png").stat().st_size > 1000
    assert (tmp_path / "per_class_iou.png").stat().st_size > 1000
