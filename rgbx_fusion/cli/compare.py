"""``rgbx-fusion compare``: train every variant × seed of a compare config, then report.

Each run trains with the same data, split, augmentation, schedule, budget and
seeds; its checkpoint is chosen on val and tested. The report (``results.csv``,
``results.md``, plots) is written to ``--out``; a rerun skips finished runs and
resumes interrupted ones. ``--robustness`` then evaluates each trained run
under perturbed inputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="rgbx-fusion compare", description=__doc__)
    p.add_argument("--config", required=True, help="compare config (configs/compare/*.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: runs/compare/<name>)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also evaluate each best checkpoint under aux misregistration (x/y shift, "
        "rotation, scale), aux noise / holes and dark / noisy RGB",
    )
    p.add_argument("--no-speed", action="store_true", help="skip latency / peak-memory timing")
    return p


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.compare.grid import load_compare_config
    from rgbx_fusion.compare.runner import run_compare

    args = parser().parse_args(list(argv))
    config = load_compare_config(args.config)
    out = Path(args.out) if args.out else Path("runs/compare") / Path(args.config).stem
    summary = run_compare(config, out, robustness=args.robustness, speed=not args.no_speed)
    console.print(
        f"compare: {len(summary['trained'])} run(s) trained, {len(summary['skipped'])} reused; "
        f"report in {out / 'results.md'}"
    )
    return 0
