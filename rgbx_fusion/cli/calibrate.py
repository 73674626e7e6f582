"""``rgbx-fusion calibrate``: one ``aux_from_rgb`` for a camera rig, from unlabelled pairs.

Registers up to ``--max-pairs`` pairs of a split of a folder dataset jointly (the aux
files as stored; a transform already declared is ignored), prints every pair's residual
and the pairs it rejected with the reason, and writes the transform into the dataset's
``dataset.json`` (atomically; the old file is kept as ``dataset.json.bak``). From then on
every reader resamples aux onto the RGB grid at load time. ``--dry-run`` only prints;
``--out`` also writes the full report as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rgbx-fusion calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="dataset root (generic folder layout)")
    p.add_argument("--split", default="train", help="split whose pairs are used")
    p.add_argument(
        "--model",
        default="affine",
        choices=("translation", "similarity", "affine", "homography"),
        help="transform model",
    )
    p.add_argument(
        "--modality",
        default=None,
        choices=("depth", "thermal"),
        help="aux modality (default: dataset.json)",
    )
    p.add_argument("--max-pairs", type=int, default=64, help="pairs read, spread over the split")
    p.add_argument("--min-pairs", type=int, default=4, help="fewer usable pairs is an error")
    p.add_argument(
        "--max-residual",
        type=float,
        default=2.0,
        help="reject a reliable pair whose own transform is farther than this (px)",
    )
    p.add_argument("--max-rotation", type=float, default=9.0, help="search range (degrees)")
    p.add_argument("--max-scale", type=float, default=0.16, help="search range (scale 1 ± this)")
    p.add_argument(
        "--max-shift", type=float, default=0.08, help="search range (fraction of the long side)"
    )
    p.add_argument("--out", default=None, help="also write the report to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="print only; leave dataset.json as is")
    return p


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.data.calibration import RELIABLE, calibrate, write_calibration

    args = parser().parse_args(list(argv))
    result = calibrate(
        args.root,
        args.split,
        args.model,
        args.modality,
        args.max_pairs,
        args.min_pairs,
        args.max_residual,
        args.max_rotation,
        args.max_scale,
        args.max_shift,
        progress=lambda line: console.print(f"[dim]{line}[/dim]"),
    )
    table = Table(title=f"calibrate {args.root} ({args.split}, {args.model})")
    for col in ("pair", "residual px", "confidence", "status"):
        table.add_column(col, justify="left" if col in ("pair", "status") else "right")
    for pair in result.pairs:
        trusted = pair.confidence >= RELIABLE
        residual = "" if pair.residual_px is None else f"{pair.residual_px:.2f}"
        table.add_row(
            pair.name,
            residual + ("" if trusted else " (weak)"),
            f"{pair.confidence:.2f}",
            "used" if pair.used else f"rejected: {pair.reason}",
        )
    console.print(table)
    matrix = result.aux_from_rgb
    console.print("aux_from_rgb =")
    for row in matrix:
        console.print("  [" + ", ".join(f"{v: .6g}" for v in row) + "]")
    console.print(
        f"{len(result.used)} pairs used, {len(result.rejected)} rejected; RMS residual of the "
        f"reliable pairs used: {result.rms_px:.2f} px"
    )
    if args.out:
        report = {
            "aux_from_rgb": matrix.tolist(),
            "model": result.model,
            "split": result.split,
            "rms_residual_px": result.rms_px,
            "pairs": [vars(p) for p in result.pairs],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        console.print(f"report written to {args.out}")
    if args.dry_run:
        console.print("dry run: dataset.json left unchanged")
        return 0
    backup = write_calibration(args.root, result)
    kept = f" (previous version: {backup})" if backup else ""
    console.print(f"wrote aux_from_rgb to {Path(args.root) / 'dataset.json'}{kept}")
    return 0
