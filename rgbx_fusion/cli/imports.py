"""``rgbx-fusion import cmx``: a released CMX model (dual MiT + FRM/FFM + MLP decoder) → .ckpt.

The written checkpoint evaluates with ``rgbx-fusion test --config <data config>
--ckpt_path <out>`` and loads with :func:`rgbx_fusion.load_model`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="rgbx-fusion import", description=__doc__)
    fmt = p.add_subparsers(dest="format", required=True, metavar="{cmx}")
    cmx = fmt.add_parser("cmx", help="a released CMX model → .ckpt", description=__doc__)
    cmx.add_argument("--ckpt", required=True, help="the released .pth file")
    cmx.add_argument("--out", required=True, help="the rgbx-fusion .ckpt to write")
    cmx.add_argument(
        "--variant",
        choices=("b0", "b1", "b2", "b3", "b4", "b5"),
        default=None,
        help="MiT variant (default: detected from the weights' shapes)",
    )
    cmx.add_argument("--class-names", default=None, help="text file, one class name per line")
    cmx.add_argument("--ignore-index", type=int, default=255, help="label value to ignore")
    cmx.add_argument(
        "--ignore",
        action="append",
        help="regular expression of keys to drop (repeatable; dropped keys are listed)",
    )
    return p


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.tasks.imported_checkpoint import convert_cmx_checkpoint

    args = parser().parse_args(list(argv))
    names = None
    if args.class_names:
        names = [n.strip() for n in Path(args.class_names).read_text().splitlines() if n.strip()]
    conv = convert_cmx_checkpoint(
        args.ckpt, args.out, args.variant, names, args.ignore_index, args.ignore or ()
    )
    params = sum(v.numel() for k, v in conv.state_dict.items() if v.is_floating_point())
    console.print(
        f"CMX MiT-{conv.variant.upper()}: {conv.num_classes} classes, decoder width "
        f"{conv.embed_dim}, {len(conv.state_dict)} tensors ({params / 1e6:.1f} M values) "
        f"written to {args.out}"
    )
    if conv.ignored:
        console.print(f"dropped {len(conv.ignored)} keys matching --ignore: {conv.ignored}")
    console.print(
        "evaluate: rgbx-fusion test --config <data config> "
        f"--ckpt_path {args.out} [--eval.scales 0.5,0.75,1,1.25,1.5 --eval.flip]"
    )
    return 0
