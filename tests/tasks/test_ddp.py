"""DDP on CPU: two gloo processes train and validate; the split-level metrics match one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_overrides import run_stage, small_cli_args

from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"


def _last_row(metrics_csv: Path) -> dict[str, str]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/mIoU")]
    assert rows, f"no val/mIoU in {metrics_csv}"
    return rows[-1]


def test_two_process_ddp_validation_equals_one_process(tmp_path: Path) -> None:
    # 5 validation images over 2 processes: 3 + 2, so a sampler that pads the split with a
    # repeated image, or metrics that are not summed over processes, both change the scores.
    spec = SyntheticSpec(num_train=4, num_val=5, num_test=1, height=48, width=64)
    root = prepare_synthetic(tmp_path / "data", spec, workers=1, progress=False)
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "rgbx_fusion.cli",
        "fit",
        "--config",
        str(CONFIG),
        *small_cli_args(root, run),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",  # gloo on CPU
        "--trainer.max_epochs=1",
        "--data.eval_batch_size=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "MEMBER: 2/2" in done.stderr + done.stdout, "two processes joined the group"
    log_dir = run / "lightning_logs" / "version_0"
    ddp = _last_row(log_dir / "metrics.csv")

    single = run_stage(
        [
            "validate",
            "--config",
            str(log_dir / "config.yaml"),
            f"--ckpt_path={log_dir / 'checkpoints' / 'last.ckpt'}",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / 'single'}",
        ]
    )
    scores = single.task.last_scores["val"]
    as_logged = {  # the task logs float32 values
        "val/mIoU": float(scores["mIoU"].float()),
        "val/pixel_acc": float(scores["pixel_acc"].float()),
        **{
            f"val/iou/{name}": float(value)
            for name, value in zip(single.task.class_names, scores["iou"].float(), strict=True)
            if not torch.isnan(value)
        },
    }
    for key, value in as_logged.items():
        assert float(ddp[key]) == pytest.approx(value, abs=1e-7), key
