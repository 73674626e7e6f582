"""``rgbx-fusion export``: the command line around :mod:`rgbx_fusion.export`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rgbx_fusion.data.atomic import write_text_atomic
from rgbx_fusion.export import (
    DEFAULT_SIZE,
    FORMATS,
    SUFFIXES,
    TOLERANCE,
    export_network,
    load_trained_network,
)


def run_export(args: argparse.Namespace) -> int:
    """``rgbx-fusion export``: rebuild, export, check parity, write the JSON description."""
    from rgbx_fusion.bench.flops import parse_size
    from rgbx_fusion.commands import console

    trained = load_trained_network(args.ckpt)
    size = parse_size(args.size) if args.size else trained.eval_size or DEFAULT_SIZE
    out = Path(args.out) if args.out else Path(args.ckpt).with_suffix(SUFFIXES[args.format])
    console.print(
        f"exporting {type(trained.net).__name__} from {args.ckpt} to {args.format} at "
        f"{size[0]}×{size[1]}" + (", dynamic batch" if args.dynamic_batch else "")
    )
    report = export_network(
        trained.net,
        out,
        args.format,
        size,
        trained.aux_channels,
        dynamic_batch=args.dynamic_batch,
        batch=args.batch,
        opset=args.opset,
        tolerance=args.tolerance,
    )
    report.normalization = trained.normalization
    report.class_names = trained.class_names
    meta = out.with_name(out.name + ".json")
    write_text_atomic(meta, json.dumps(asdict(report), indent=2))
    against = "onnxruntime" if args.format == "onnx" else "reloaded ExportedProgram"
    batches = ", ".join(str(b) for b in report.parity_batches)
    console.print(f"wrote {out} ({report.export_seconds:.1f} s) and {meta}")
    console.print(
        f"parity ({against} vs PyTorch, batch {batches}): max |Δlogit| = "
        f"{report.max_abs_diff:.2e} ≤ {report.tolerance:g} OK"
    )
    return 0


def add_export_parser(sub: Any) -> None:
    """Register ``export`` on the subcommand parsers of ``rgbx-fusion``."""
    exp = sub.add_parser(
        "export", help="export a checkpoint's network to ONNX / torch.export, with parity check"
    )
    exp.add_argument("--ckpt", required=True, help="checkpoint written by `rgbx-fusion fit`")
    exp.add_argument("--format", choices=FORMATS, default="onnx")
    exp.add_argument("--out", default=None, help="output file (default: next to the checkpoint)")
    exp.add_argument(
        "--size",
        default=None,
        help="input HxW (default: the run's data.eval_size, else 480x640)",
    )
    exp.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    exp.add_argument("--batch", type=int, default=1, help="batch size of a static export")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (exporter default)")
    exp.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |Δlogit| allowed")
    exp.set_defaults(func=run_export)
