"""``rgbx-fusion list``: the fusions (two-stream and N-stream), aligners, decoders and
datasets the toolkit knows."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.bench.flops import parse_size
    from rgbx_fusion.models.align import ALIGNERS
    from rgbx_fusion.models.decoders import DECODERS
    from rgbx_fusion.models.fusion import FUSIONS, RECTIFIERS
    from rgbx_fusion.models.fusion.multi_pairwise import MULTI_FUSIONS

    p = ArgumentParser(prog="rgbx-fusion list", description=__doc__)
    p.add_argument("what", choices=("fusions", "multi-fusions", "aligners", "decoders", "datasets"))
    p.add_argument(
        "--streams", type=int, default=3, help="streams of the multi-fusion costs (RGB + aux)"
    )
    p.add_argument("--channels", type=int, default=64, help="channel width for costs")
    p.add_argument("--size", default="120x160", help="feature-map size HxW for costs")
    args = p.parse_args(list(argv))
    catalogue: dict[str, dict[str, Any]] = {
        "fusions": {**FUSIONS, **RECTIFIERS},
        "multi-fusions": dict(MULTI_FUSIONS),
        "aligners": dict(ALIGNERS),
        "decoders": dict(DECODERS),
    }
    if args.what == "datasets":
        from rgbx_fusion.data.plugins import dataset_registry

        catalogue["datasets"] = dataset_registry()
    costs = args.what in ("fusions", "multi-fusions", "aligners")
    h, w = parse_size(args.size)
    streams = f", {args.streams} streams" if args.what == "multi-fusions" else ""
    title = args.what + (
        f" (costs at C={args.channels}, {h}×{w}{streams}, batch 1)" if costs else ""
    )
    table = Table(title=title)
    for col in ("name", "class", "summary") + (("params", "GFLOPs") if costs else ()):
        table.add_column(col, justify="right" if col in ("params", "GFLOPs") else "left")
    for name, cls in catalogue[args.what].items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = getattr(cls, "summary", "") or (doc[0] if doc else "")
        row = [name, cls.__qualname__, summary.strip()]
        if costs:
            row += operator_costs(cls, args.what, args.channels, h, w, args.streams)
        table.add_row(*row)
    console.print(table)
    return 0


def operator_costs(
    cls: Any, kind: str, channels: int, h: int, w: int, streams: int = 3
) -> list[str]:
    """Parameters and GFLOPs of one fusion/aligner on two C×H×W maps (a multi-fusion on
    ``streams`` of them, all present)."""
    import torch

    from rgbx_fusion.bench.flops import count_flops, count_parameters

    x = torch.randn(1, channels, h, w)
    if kind == "multi-fusions":
        if "fusion" in inspect.signature(cls).parameters:
            return ["per pair", "per pair"]  # the costs of the pairwise fusion it wraps
        module = cls(channels, streams)
        maps = [torch.randn(1, channels, h, w) for _ in range(streams)]
        flops = count_flops(module, maps)  # type: ignore[arg-type]
        return [f"{count_parameters(module):,}", f"{flops / 1e9:.3f}"]
    if kind == "fusions":
        module, aux = cls(channels), x.clone()
    else:
        # depth-level aligners (reprojection) take a single-channel aux image
        aux_channels = 1 if getattr(cls, "input_level", False) else channels
        module, aux = cls(channels, aux_channels), torch.randn(1, aux_channels, h, w)
    flops = count_flops(module, x, aux)
    return [f"{count_parameters(module):,}", f"{flops / 1e9:.3f}"]
