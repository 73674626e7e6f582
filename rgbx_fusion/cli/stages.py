"""``fit``, ``validate``, ``test``, ``predict`` and ``fit-test``: Lightning's stages.

Their options are config keys (``--trainer.max_epochs=2``, ``--model.lr``,
``--data.batch_size``); ``--config`` may be given several times, later layers
winning, and ``--print_config`` shows the resolved stack.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from rgbx_fusion.cli import COMMANDS
from rgbx_fusion.console import console
from rgbx_fusion.data.atomic import write_text_atomic
from rgbx_fusion.experiment import TestResult, build, fit_and_test, prediction_dir, run


def run_stage(stage: str, argv: Sequence[str]) -> int:
    """``rgbx-fusion <stage> [config options]``."""
    exp = build(args=argv, prog=f"rgbx-fusion {stage}", description=COMMANDS[stage][1])
    run(exp, stage)
    if stage == "predict":
        console.print(f"predictions written to {prediction_dir(exp)}")
    return 0


def run_fit_test(argv: Sequence[str]) -> int:
    """``rgbx-fusion fit-test``: one run, as ``fit`` parses it, then its test scores."""
    exp = build(args=argv, prog="rgbx-fusion fit-test", description=COMMANDS["fit-test"][1])
    result = fit_and_test(exp)
    name = str(exp.config.get("trainer.default_root_dir") or "run")
    console.print(results_table([(name, result)], "test set (model chosen on val)"))
    out = exp.trainer.log_dir
    if out:
        path = f"{out}/test_results.json"
        write_text_atomic(path, json.dumps(result_record(name, result), indent=2))
        console.print(f"test scores written to {path}")
    return 0


def result_record(name: str, result: TestResult) -> dict[str, Any]:
    """A run's test scores as plain JSON data."""
    return {
        "name": name,
        "checkpoint": result.checkpoint,
        "val_mIoU": result.val_miou,
        "mIoU": result.miou,
        "pixel_acc": result.pixel_acc,
        "iou": result.iou,
        "classes": result.classes,
    }


def results_table(results: Sequence[tuple[str, TestResult]], title: str) -> Table:
    """mIoU and per-class IoU of several runs side by side."""
    table = Table(title=title)
    table.add_column("class")
    for name, _ in results:
        table.add_column(name, justify="right")
    for i, cls in enumerate(results[0][1].classes):
        table.add_row(cls, *[f"{r.iou[i]:.3f}" for _, r in results])
    table.add_section()
    table.add_row("mIoU", *[f"{r.miou:.3f}" for _, r in results])
    table.add_row("pixel acc", *[f"{r.pixel_acc:.3f}" for _, r in results])
    return table
