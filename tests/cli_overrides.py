"""CLI overrides shared by the tests that train through the command line."""

from __future__ import annotations

from pathlib import Path

from rgbx_fusion.cli.parsing import with_config_spelling
from rgbx_fusion.experiment import Experiment, build, run


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


def run_stage(args: list[str]) -> Experiment:
    """``rgbx-fusion <stage> <options>`` in this process; the experiment it ran."""
    stage, options = args[0], args[1:]
    exp = build(args=with_config_spelling(options))
    run(exp, stage)
    return exp
