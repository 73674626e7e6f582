from __future__ import annotations

from pathlib import Path

import pytest
from bench_cli import benchmark_report

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"


def test_data_mode_reports_loader_and_training_rates(tiny_depth_root: Path, tmp_path: Path) -> None:
    report = benchmark_report(
        tmp_path,
        "data",
        "--config",
        str(CONFIG),
        "--data",
        "--root",
        str(tiny_depth_root),
        "--warmup",
        "0",
        "--iters",
        "1",
        "--data-batches",
        "1",
    )
    assert report["batch_size"] == 8 and report["num_workers"] == 2
    assert report["loader_images_per_s"] > 0 and report["train_images_per_s"] > 0
    assert report["ratio"] == pytest.approx(
        report["loader_images_per_s"] / report["train_images_per_s"]
    )
