"""The toolkit's own subcommands: ``prepare``, ``quickstart`` and ``list``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rgbx_fusion.bench.flops import count_flops, count_parameters, parse_size

# Wide enough for class paths when the output is a pipe or a file (rich assumes 80 there).
console = Console(width=None if Console().is_terminal else 160)


def _prepare(args: argparse.Namespace) -> int:
    from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic

    spec = SyntheticSpec(
        modality=args.modality,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        height=args.height,
        width=args.width,
        misalign=args.misalign,
        misalign_strength=args.misalign_strength,
        misalign_per=args.misalign_per,
    )
    start = time.perf_counter()
    root = prepare_synthetic(args.root, spec, workers=args.workers)
    console.print(
        f"synthetic {spec.modality} dataset ready in {root} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from rgbx_fusion.models.align import ALIGNERS
    from rgbx_fusion.models.decoders import DECODERS
    from rgbx_fusion.models.fusion import FUSIONS, RECTIFIERS

    catalogue: dict[str, dict[str, Any]] = {
        "fusions": {**FUSIONS, **RECTIFIERS},
        "aligners": dict(ALIGNERS),
        "decoders": dict(DECODERS),
    }
    if args.what == "datasets":
        from rgbx_fusion.data.plugins import dataset_registry

        catalogue["datasets"] = dataset_registry()
    costs = args.what in ("fusions", "aligners")
    h, w = parse_size(args.size)
    title = args.what + (f" (costs at C={args.channels}, {h}×{w}, batch 1)" if costs else "")
    table = Table(title=title)
    for col in ("name", "class", "summary") + (("params", "GFLOPs") if costs else ()):
        table.add_column(col, justify="right" if col in ("params", "GFLOPs") else "left")
    for name, cls in catalogue[args.what].items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = getattr(cls, "summary", "") or (doc[0] if doc else "")
        row = [name, cls.__qualname__, summary.strip()]
        if costs:
            row += _operator_costs(cls, args.what, args.channels, h, w)
        table.add_row(*row)
    console.print(table)
    return 0


def _operator_costs(cls: Any, kind: str, channels: int, h: int, w: int) -> list[str]:
    """Parameters and GFLOPs of one fusion/aligner on two C×H×W maps."""
    import torch

    x = torch.randn(1, channels, h, w)
    if kind == "fusions":
        module, aux = cls(channels), x.clone()
    else:
        # depth-level aligners (reprojection) take a single-channel aux image
        aux_channels = 1 if getattr(cls, "input_level", False) else channels
        module, aux = cls(channels, aux_channels), torch.randn(1, aux_channels, h, w)
    flops = count_flops(module, x, aux)
    return [f"{count_parameters(module):,}", f"{flops / 1e9:.3f}"]


def run_experiment(config: str | Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train with a config, then test the best-on-val checkpoint; return test scores."""
    from rgbx_fusion.cli import build_cli

    cli = build_cli(["--config", str(config), *extra], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = cli.trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") or None
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)
    scores = cli.model.last_scores["test"]
    return {
        "config": str(config),
        "checkpoint": best,
        "mIoU": float(scores["mIoU"]),
        "pixel_acc": float(scores["pixel_acc"]),
        "iou": [float(v) for v in scores["iou"].tolist()],
        "classes": list(cli.model.class_names),
    }


def run_configs(
    runs: Sequence[tuple[str, str]], extra: Sequence[str], out: Path | None
) -> list[dict[str, Any]]:
    """Train and test ``(name, config)`` pairs in turn; save the results after each run."""
    results = []
    for name, cfg in runs:
        console.rule(f"training: {name} ({cfg})")
        res = run_experiment(cfg, extra)
        res["name"] = name
        results.append(res)
        if out is not None:  # after every run, so an interrupted sweep keeps what it did
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    return results


def _quickstart(args: argparse.Namespace) -> int:
    from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic

    start = time.perf_counter()
    prepare_synthetic(args.root, SyntheticSpec(modality="depth"), workers=args.workers)
    console.print(
        f"synthetic RGB-D data ready in {args.root} ({time.perf_counter() - start:.0f} s)"
    )
    out = Path(args.out) / "results.json"
    runs = [("RGB-D mid fusion (add)", args.fusion_config), ("RGB only", args.rgb_config)]
    results = run_configs(runs, [f"--data.dataset.init_args.root={args.root}"], out)
    console.print(results_table(results, "test set (model chosen on val)"))
    console.print(f"total time {time.perf_counter() - start:.0f} s; results in {out}")
    return 0


def _fit_test(args: argparse.Namespace) -> int:
    extra = [f"--data.dataset.init_args.root={args.root}"] if args.root else []
    runs = [(Path(cfg).stem, cfg) for cfg in args.config]
    out = Path(args.out) if args.out else None
    results = run_configs(runs, extra + list(args.override or []), out)
    console.print(results_table(results, "test set (each model chosen on val)"))
    return 0


def results_table(results: Sequence[dict[str, Any]], title: str) -> Table:
    """mIoU and per-class IoU of several runs side by side."""
    table = Table(title=title)
    table.add_column("class")
    for res in results:
        table.add_column(res["name"], justify="right")
    for i, cls in enumerate(results[0]["classes"]):
        table.add_row(cls, *[f"{r['iou'][i]:.3f}" for r in results])
    table.add_section()
    table.add_row("mIoU", *[f"{r['mIoU']:.3f}" for r in results])
    table.add_row("pixel acc", *[f"{r['pixel_acc']:.3f}" for r in results])
    return table


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgbx-fusion")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write a dataset in the toolkit's layout")
    prep_sub = prep.add_subparsers(dest="dataset", required=True)
    syn = prep_sub.add_parser("synthetic", help="render the embedded synthetic RGB-D/RGB-T dataset")
    syn.add_argument("--root", default="datasets/synthetic")
    syn.add_argument("--modality", choices=("depth", "thermal"), default="depth")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--num-train", type=int, default=600)
    syn.add_argument("--num-val", type=int, default=100)
    syn.add_argument("--num-test", type=int, default=100)
    syn.add_argument("--height", type=int, default=240)
    syn.add_argument("--width", type=int, default=320)
    syn.add_argument("--misalign", choices=("none", "affine", "homography"), default="none")
    syn.add_argument("--misalign-strength", type=float, default=1.0)
    syn.add_argument(
        "--misalign-per",
        choices=("frame", "rig"),
        default="frame",
        help="draw the misregistration per frame, or once for the whole rig (a calibration error)",
    )
    syn.add_argument("--workers", type=int, default=2)
    syn.set_defaults(func=_prepare)
    from rgbx_fusion.data.sets.prepare_nyudv2 import add_prepare_parsers

    add_prepare_parsers(prep_sub)

    quick = sub.add_parser(
        "quickstart", help="prepare the synthetic data, train fusion and rgb-only, compare"
    )
    quick.add_argument("--root", default="datasets/synthetic")
    quick.add_argument("--fusion-config", default="configs/synthetic_mid_add.yaml")
    quick.add_argument("--rgb-config", default="configs/synthetic_rgb_only.yaml")
    quick.add_argument("--out", default="runs/quickstart")
    quick.add_argument("--workers", type=int, default=2)
    quick.set_defaults(func=_quickstart)

    fit_test = sub.add_parser(
        "fit-test",
        help="train each config, test its best-on-val checkpoint, print one table",
    )
    fit_test.add_argument("--config", action="append", required=True, help="repeat for several")
    fit_test.add_argument("--root", default=None, help="override data.dataset.init_args.root")
    fit_test.add_argument("--out", default=None, help="write the results as JSON here")
    fit_test.add_argument(
        "--override",
        action="append",
        help="extra CLI override, e.g. --override=--trainer.max_epochs=2",
    )
    fit_test.set_defaults(func=_fit_test)

    from rgbx_fusion.bench.command import add_benchmark_parser

    add_benchmark_parser(sub, "cuda" if _cuda() else "cpu")

    from rgbx_fusion.compare import add_compare_parser
    from rgbx_fusion.hha_command import add_hha_parser

    add_compare_parser(sub)

    add_hha_parser(sub)

    from rgbx_fusion.import_command import add_import_parser

    add_import_parser(sub)

    from rgbx_fusion.export_command import add_export_parser

    add_export_parser(sub)

    lst = sub.add_parser("list", help="show the catalogues")
    lst.add_argument("what", choices=("fusions", "aligners", "decoders", "datasets"))
    lst.add_argument("--channels", type=int, default=64, help="channel width for costs")
    lst.add_argument("--size", default="120x160", help="feature-map size HxW for costs")
    lst.set_defaults(func=_list)
    return parser


def run_extra(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.func(args))
