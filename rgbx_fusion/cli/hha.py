"""``rgbx-fusion hha``: precompute HHA images for every depth file of a folder dataset.

Reads ``root/depth/<name>`` in the ``depth_format`` of ``root/dataset.json`` (or
``--depth-format``) with the intrinsics ``K`` of ``dataset.json`` (or ``--fx --fy
--cx --cy``) and writes ``root/<out-dir>/<name>.png`` (8-bit disparity, height,
angle). Outputs are written atomically and existing ones skipped, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console
from rgbx_fusion.data.depth import DEPTH_FORMATS
from rgbx_fusion.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rgbx-fusion hha",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="dataset root (generic folder layout)")
    p.add_argument("--out-dir", default="hha", help="output folder, relative to --root")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument(
        "--depth-format", choices=DEPTH_FORMATS, default=None, help="overrides dataset.json"
    )
    p.add_argument("--raw-dir", default=None, help="raw depth folder: its zeros = missing")
    for name in ("fx", "fy", "cx", "cy"):
        p.add_argument(f"--{name}", type=float, default=None, help="overrides dataset.json K")
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.data.hha_folder import precompute_hha

    args = parser().parse_args(list(argv))
    given = [getattr(args, n) for n in ("fx", "fy", "cx", "cy")]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise ConfigError("give all four of --fx --fy --cx --cy, or none")
    K = None
    if all(v is not None for v in given):
        fx, fy, cx, cy = given
        K = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
    report = precompute_hha(
        args.root,
        args.out_dir,
        args.workers,
        args.depth_format,
        K,
        args.raw_dir,
        args.overwrite,
        not args.no_progress,
    )
    console.print(
        f"HHA: {report.written} written, {report.skipped} already present, in {report.out_dir}"
    )
    return 0
