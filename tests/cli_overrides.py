"""CLI overrides shared by the tests that train through the command line."""

from __future__ import annotations

from pathlib import Path


def small_cli_args(root: Path, tmp_path: Path) -> list[str]:
    """CLI overrides for one-step training on the tiny generated data, on CPU."""
    return [
        f"--data.dataset.init_args.root={root}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.train_size=[48, 64]",
        "--data.eval_size=[48, 64]",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
