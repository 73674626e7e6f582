"""Tiny compare grids shared by the executor tests (tests/compare/test_executors.py and
test_slurm.py): the synthetic base recipe at 48×64 with a small network, two batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

BASE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "base.yaml"
TINY = {
    "data.num_workers": 0,
    "data.batch_size": 2,
    "data.train_size": [48, 64],
    "data.eval_size": [48, 64],
    "trainer.accelerator": "cpu",
    "trainer.enable_progress_bar": False,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.num_sanity_val_steps": 0,
    "model.network.init_args.backbone": "resnet10t",
    "model.network.init_args.decoder.init_args.channels": 16,
}
#: A variant that fails when it is built: its backbone does not exist.
BROKEN = {"name": "broken", "overrides": {"model.network.init_args.backbone": "no_such_net"}}


def write_grid(
    root: Path, folder: Path, variants: list[dict[str, Any]], seeds: list[int], **extra: Any
) -> Path:
    config = {
        "base": str(BASE),
        "seeds": seeds,
        "overrides": {"data.dataset.init_args.root": str(root), **TINY, **extra},
        "variants": variants,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


MID = {"name": "mid_add"}
RGB = {"name": "rgb_only", "overrides": {"model.network.init_args.fusion_stage": "rgb_only"}}
