"""``rgbx-fusion export``: a checkpoint's network as ONNX or a torch.export program.

The exported graph maps normalised ``(rgb, aux)`` to logits; its outputs are
compared with PyTorch's on seeded inputs (parity), and a JSON file beside it
records the normalisation, class names and input shapes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console
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
        modalities=trained.modalities,
    )
    report.normalization = trained.normalization
    report.class_names = trained.class_names
    meta = out.with_name(out.name + ".json")
    write_text_atomic(meta, json.dumps(asdict(report), indent=2))
    against = "onnxruntime" if args.format == "onnx" else "reloaded ExportedProgram"
    batches = ", ".join(str(b) for b in report.parity_batches)
    if trained.modalities:
        batches += f"; every presence pattern of {list(trained.modalities)}"
    console.print(f"wrote {out} ({report.export_seconds:.1f} s) and {meta}")
    console.print(
        f"parity ({against} vs PyTorch, batch {batches}): max |Δlogit| = "
        f"{report.max_abs_diff:.2e} ≤ {report.tolerance:g} OK"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    exp = ArgumentParser(prog="rgbx-fusion export", description=__doc__)
    exp.add_argument("--ckpt", required=True, help="checkpoint written by `rgbx-fusion fit`")
    exp.add_argument("--format", choices=FORMATS, default="onnx", help="output format")
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
    return exp


def run(argv: Sequence[str]) -> int:
    return run_export(parser().parse_args(list(argv)))
