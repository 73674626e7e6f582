from __future__ import annotations

import json
from pathlib import Path

import pytest

from rgbx_fusion.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_mid_add.yaml"


def test_data_mode_reports_loader_and_training_rates(tiny_depth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "benchmark",
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
                "--device",
                "cpu",
                "--out",
                str(tmp_path),
            ]
        )
    assert exc.value.code == 0
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["batch_size"] == 8 and report["num_workers"] == 2
    assert report["loader_images_per_s"] > 0 and report["train_images_per_s"] > 0
    assert report["ratio"] == pytest.approx(
        report["loader_images_per_s"] / report["train_images_per_s"]
    )
