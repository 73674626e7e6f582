"""``rgbx-fusion benchmark``: network costs, operator scaling, data loading, HHA, registration,
the cost of more modalities.

Six modes, each printed as a table and saved as JSON/CSV with ``--out``:

* default (``--config``): the configured network vs plain add fusion vs the bare
  backbones (:mod:`rgbx_fusion.bench.benchmark`), with the fusion + alignment
  overhead and, on CUDA, the largest training batch that fits;
* ``--scaling``: time and peak memory of every attention-type fusion operator
  at three feature-map sizes, per pixel relative to the smallest
  (:mod:`rgbx_fusion.bench.scaling`);
* ``--data`` (with ``--config``): the config's loader throughput against its
  training throughput (:mod:`rgbx_fusion.bench.data_rate`);
* ``--hha``: milliseconds per image of the HHA encoding
  (:func:`rgbx_fusion.geometry.hha.bench_hha`, one thread by default);
* ``--registration``: end-point error and seconds per pair of
  :func:`rgbx_fusion.geometry.registration.register` on random known warps of registered
  pairs (:mod:`rgbx_fusion.bench.registration`);
* ``--modality-cost`` (with a ``MultiModalSegmenter`` ``--config``): parameters, GFLOPs and
  latency with 1, 2, ... aux modalities, one encoder per modality vs one shared
  (:mod:`rgbx_fusion.bench.modality_cost`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from rgbx_fusion.bench.flops import parse_size
from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console
from rgbx_fusion.errors import ConfigError


def _save(
    out: str | None, name: str, report: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> None:
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2))
    # The CSV has one scalar per cell; lists (the timed repeats) stay in the JSON.
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    if flat:
        with (folder / f"{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
    console.print(f"saved {folder / (name + '.json')} and {folder / (name + '.csv')}")


def _load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def run_networks(args: argparse.Namespace) -> None:
    """The default mode: model vs plain vs backbones at every resolution and batch."""
    import torch

    from rgbx_fusion.bench.benchmark import (
        as_dicts,
        largest_batch,
        measure_group,
        network_builders,
        network_init_args,
        overhead,
    )
    from rgbx_fusion.bench.speed import Speed

    device = torch.device(args.device)
    speed = Speed(args.precision, args.channels_last)
    builders = network_builders(network_init_args(args.config), args.num_classes, args.aux_channels)
    rows = []
    report: dict[str, Any] = {
        "config": " + ".join(args.config),
        "device": str(device),
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "precision": speed.precision,
        "channels_last": speed.channels_last,
        "overhead": [],
    }
    sizes = [parse_size(s) for s in args.resolutions.split(",")]
    for size in sizes:
        for batch in (int(b) for b in args.batch.split(",")):
            console.print(
                f"[dim]measuring {', '.join(builders)} at {size[0]}×{size[1]}, batch {batch}[/dim]"
            )
            group = measure_group(
                builders,
                size,
                batch,
                args.aux_channels,
                device,
                args.warmup,
                args.iters,
                args.clock,
                speed,
            )
            rows.extend(group)
            report["overhead"].append(
                {"height": size[0], "width": size[1], "batch": batch, **overhead(group)}
            )
    largest: dict[str, int | None] = {}
    for variant, build in builders.items():
        if device.type == "cuda":
            console.print(f"[dim]searching the largest training batch of {variant}[/dim]")
        largest[variant] = largest_batch(build, sizes[0], args.aux_channels, device, speed=speed)
        for r in rows:
            if r.variant == variant and (r.height, r.width) == sizes[0]:
                r.max_train_batch = largest[variant]
    report["max_train_batch"] = {"height": sizes[0][0], "width": sizes[0][1], **largest}
    report["load"] = _load_text()
    report["rows"] = as_dicts(rows)
    layout = ", channels_last" if speed.channels_last else ""
    table = Table(
        title=f"benchmark: {' + '.join(args.config)} on {device}, {speed.precision}{layout}"
    )
    for col in (
        "variant",
        "size",
        "batch",
        "params",
        "GFLOPs",
        "latency ms",
        "train img/s",
        "peak MB",
        "max batch",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        first = (r.height, r.width) == sizes[0]
        table.add_row(
            r.variant,
            f"{r.height}×{r.width}",
            str(r.batch),
            f"{r.params:,}",
            f"{r.gflops:.2f}",
            f"{r.latency_ms:.1f}",
            f"{r.train_images_per_s:.2f}",
            f"{r.peak_memory_mb:.0f}",
            ("n/a" if r.max_train_batch is None else str(r.max_train_batch)) if first else "",
        )
    console.print(table)
    for o in report["overhead"]:
        if len(o) > 3:
            paired = (
                f" (median of per-repeat ratios: inference {o['latency_paired']:+.1%}, "
                f"training step {o['train_step_paired']:+.1%})"
                if "train_step_paired" in o and "latency_paired" in o
                else ""
            )
            console.print(
                f"fusion + alignment overhead at {o['height']}×{o['width']} batch {o['batch']}: "
                f"inference {o['latency']:+.1%}, training step {o['train_step']:+.1%}, "
                f"params {o['params']:+.1%}, GFLOPs {o['gflops']:+.1%}{paired}"
            )
    console.print(report["load"])
    _save(args.out, "benchmark", report, report["rows"])


def run_scaling(args: argparse.Namespace) -> None:
    """``--scaling``: every attention-type operator alone at three map sizes."""
    import torch

    from rgbx_fusion.bench.scaling import attention_operators, measure_scaling, scaling_report

    device = torch.device(args.device)
    operators = attention_operators()
    if args.operators:
        names = args.operators.split(",")
        unknown = [n for n in names if n not in operators]
        if unknown:
            raise ConfigError(
                f"unknown or element-wise operators {unknown}; choose from {sorted(operators)}"
            )
        operators = {n: operators[n] for n in names}
    stride = args.scaling_stride
    images = [parse_size(s) for s in args.scaling_images.split(",")]
    sizes = [(max(1, h // stride), max(1, w // stride)) for h, w in images]
    rows = []
    for name, factory in operators.items():
        console.print(f"[dim]measuring {name} at {', '.join(f'{h}×{w}' for h, w in sizes)}[/dim]")
        rows.extend(
            measure_scaling(
                name,
                factory,
                sizes,
                args.scaling_channels,
                args.scaling_batch,
                device,
                args.warmup,
                args.iters,
                args.clock,
            )
        )
    table = Table(
        title=f"operator scaling on {device}: C={args.scaling_channels}, "
        f"batch {args.scaling_batch}, maps at 1/{stride} of {args.scaling_images}"
    )
    for col in ("operator", "map", "fwd ms", "train ms", "peak MB", "fwd/px ×", "train/px ×"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    table.add_column("mem/px ×", justify="right")
    for r in rows:
        table.add_row(
            r.operator,
            f"{r.height}×{r.width}",
            f"{r.forward_ms:.2f}",
            f"{r.train_ms:.2f}",
            f"{r.peak_memory_mb:.2f}",
            f"{r.forward_per_pixel_ratio:.2f}",
            f"{r.train_per_pixel_ratio:.2f}",
            f"{r.memory_per_pixel_ratio:.2f}",
        )
    console.print(table)
    console.print("ratios: cost per pixel relative to the smallest map (1 = linear growth)")
    console.print(_load_text())
    table_rows = scaling_report(rows)
    report = {
        "device": str(device),
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "load": _load_text(),
        "rows": table_rows,
    }
    _save(args.out, "scaling", report, table_rows)


def run_data(args: argparse.Namespace) -> None:
    """``--data``: loader throughput vs training throughput of ``--config``."""
    import torch

    from rgbx_fusion.bench.data_rate import data_rate_report, measure_data_rate

    overrides = [f"--data.dataset.init_args.root={args.root}"] if args.root else []
    device = torch.device(args.device)
    rate = measure_data_rate(
        args.config, overrides, device, args.warmup, args.iters, args.data_batches
    )
    size = "×".join(map(str, rate.train_size)) if rate.train_size else "full images"
    console.print(
        f"data loading ({rate.num_workers} workers, batch {rate.batch_size}, {size}): "
        f"{rate.loader_images_per_s:.1f} images/s; training on {device}: "
        f"{rate.train_images_per_s:.1f} images/s; ratio {rate.ratio:.2f}×"
    )
    console.print(_load_text())
    report = data_rate_report(rate)
    _save(args.out, "data", report, [report])


def run_hha(args: argparse.Namespace) -> None:
    """``--hha``: milliseconds per image of ``depth_to_hha`` at each resolution and batch."""
    from rgbx_fusion.geometry.hha import bench_hha

    rows = []
    for h, w in (parse_size(s) for s in args.resolutions.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            for missing in (float(f) for f in args.hha_missing.split(",")):
                seconds = bench_hha(
                    h,
                    w,
                    batch,
                    repeats=max(args.iters, 1),
                    device=args.device,
                    threads=args.hha_threads,
                    missing_fraction=missing,
                )
                row = {"height": h, "width": w, "batch": batch, "missing_fraction": missing}
                rows.append({**row, "ms_per_image": seconds * 1e3})
                console.print(
                    f"HHA {h}×{w}, batch {batch}, {missing:.0%} missing, {args.device}, "
                    f"{args.hha_threads or 'all'} thread(s): {seconds * 1e3:.1f} ms/image"
                )
    console.print(_load_text())
    _save(args.out, "hha", {"device": args.device, "load": _load_text(), "rows": rows}, rows)


def run_registration(args: argparse.Namespace) -> None:
    """``--registration``: EPE and time of ``geometry.register`` on known random warps."""
    from pathlib import Path

    from rgbx_fusion.bench.registration import read_pair, run_trials, summarise, synthetic_pairs
    from rgbx_fusion.geometry.registration import MODELS

    models = tuple(m for m in args.reg_models.split(",") if m)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"--reg-models: unknown {unknown}; choose from {MODELS}")
    pairs = []
    for spec in args.reg_pair or []:
        rgb_path, _, aux_path = spec.partition(",")
        if not aux_path:
            raise ConfigError(f"--reg-pair expects RGB,AUX (two paths), got {spec!r}")
        pairs.append(read_pair(Path(rgb_path), Path(aux_path)))
    pairs += list(synthetic_pairs(args.reg_synthetic))
    console.print(
        f"[dim]registering {len(pairs)} pairs × {args.reg_warps} random warps × "
        f"{len(models)} models at their native size[/dim]"
    )
    trials = run_trials(pairs, models, warps=args.reg_warps) if models else []
    if args.reg_aligner:
        from functools import cache

        from rgbx_fusion.bench.registration import learned_trials, load_learned_aligner

        aligner = cache(lambda channels: load_learned_aligner(args.reg_aligner, channels))
        refine = args.reg_refine or None
        width = args.reg_aligner_width
        trials += learned_trials(pairs, aligner, width, refine, warps=args.reg_warps)
    rows = summarise(trials)
    table = Table(title="register: end-point error on known warps (px, over the RGB image)")
    for col in (
        "pairs",
        "model",
        "warps",
        "EPE before",
        "median",
        "p95",
        "max",
        "low conf.",
        "s/pair",
    ):
        table.add_column(col, justify="left" if col in ("pairs", "model") else "right")
    for r in rows:
        table.add_row(
            str(r["pairs"]),
            str(r["model"]),
            str(r["warps"]),
            f"{r['epe_before_median']:.2f}",
            f"{r['epe_median']:.2f}",
            f"{r['epe_p95']:.2f}",
            f"{r['epe_max']:.2f}",
            str(r["low_confidence"]),
            f"{r['seconds_per_pair']:.2f}",
        )
    console.print(table)
    console.print(_load_text())
    _save(args.out, "registration", {"load": _load_text(), "rows": rows}, rows)


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the modes the arguments ask for (see the module docstring)."""
    alone = args.scaling or args.hha or args.registration
    if (args.data or not alone) and not args.config:
        raise ConfigError(
            "benchmark: --config is required (except with --scaling, --hha or --registration)"
        )
    if args.registration:
        run_registration(args)
    if args.scaling:
        run_scaling(args)
    if args.hha:
        run_hha(args)
    if args.data:
        run_data(args)
    if args.modality_cost:
        run_modality_cost(args)
    if not (alone or args.data or args.modality_cost):
        run_networks(args)
    return 0


def run_modality_cost(args: argparse.Namespace) -> None:
    """``--modality-cost``: separate vs shared aux encoders for 1..M aux modalities."""
    import torch

    from rgbx_fusion.bench.modality_cost import (
        modality_cost,
        multimodal_init_args,
        parse_modalities,
    )

    init_args, modalities = multimodal_init_args(args.config)
    if args.modalities:
        modalities = parse_modalities(args.modalities)
    size = parse_size(args.resolutions.split(",")[0])
    device = torch.device(args.device)
    console.print(
        f"[dim]measuring 1 to {len(modalities)} aux modalities at {size[0]}×{size[1]}[/dim]"
    )
    rows = modality_cost(
        init_args, modalities, args.num_classes, size, device, args.warmup, args.iters, args.clock
    )
    table = Table(title=f"cost of more modalities: {' + '.join(args.config)} on {device}")
    for col in ("aux modalities", "streams", "aux encoder", "params (M)", "GFLOPs", "latency ms"):
        table.add_column(col, justify="left" if col == "aux modalities" else "right")
    for r in rows:
        table.add_row(
            r["modalities"],
            str(r["streams"]),
            r["aux_encoder"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.2f}",
            f"{r['latency_ms']:.1f}",
        )
    console.print(table)
    console.print(_load_text())
    _save(args.out, "modality_cost", {"load": _load_text(), "rows": rows}, rows)


def parser() -> argparse.ArgumentParser:
    """The options of ``rgbx-fusion benchmark``."""
    import torch

    bench = ArgumentParser(
        prog="rgbx-fusion benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--config",
        action="append",
        default=None,
        help="training config layers (repeatable, stacked as in fit)",
    )
    bench.add_argument("--resolutions", default="240x320", help="comma-separated HxW list")
    bench.add_argument("--batch", default="1", help="comma-separated batch sizes")
    bench.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    bench.add_argument("--num-classes", type=int, default=40, help="classes of the head")
    bench.add_argument("--aux-channels", type=int, default=1, help="channels of the aux input")
    bench.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    bench.add_argument("--iters", type=int, default=5, help="timed repeats")
    bench.add_argument("--out", default=None, help="folder for the JSON / CSV results")
    bench.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed", "16-mixed"),
        default="32-true",
        help="as --trainer.precision (16-mixed: CUDA only). Default 32-true whatever the "
        "config trains with, so CPU ratios compare float32 work",
    )
    bench.add_argument(
        "--channels-last",
        action="store_true",
        help="networks and inputs in channels_last memory, as --model.channels_last",
    )
    bench.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (CPU only; steadier on a "
        "machine shared with other jobs). --data always uses wall time",
    )
    cost = bench.add_argument_group("cost of more modalities (--modality-cost)")
    cost.add_argument(
        "--modality-cost",
        action="store_true",
        help="separate vs shared aux encoders of a MultiModalSegmenter config, 1..M modalities",
    )
    cost.add_argument(
        "--modalities",
        default=None,
        help="name:channels list (default: the config's dataset modalities), e.g. "
        "depth:1,thermal:1,events:3",
    )
    scaling = bench.add_argument_group("operator scaling (--scaling)")
    scaling.add_argument(
        "--scaling", action="store_true", help="time and memory of attention fusions vs map size"
    )
    scaling.add_argument("--operators", default=None, help="comma-separated names (default: all)")
    scaling.add_argument(
        "--scaling-images", default="120x160,240x320,480x640", help="comma-separated HxW list"
    )
    scaling.add_argument("--scaling-stride", type=int, default=8, help="map = image / stride")
    scaling.add_argument("--scaling-channels", type=int, default=64, help="map channels")
    scaling.add_argument("--scaling-batch", type=int, default=2, help="batch size")
    data = bench.add_argument_group("data-loading throughput (--data)")
    data.add_argument(
        "--data", action="store_true", help="loader images/s vs training images/s of --config"
    )
    data.add_argument("--root", default=None, help="override data.dataset.init_args.root")
    data.add_argument("--data-batches", type=int, default=8, help="batches timed per repeat")
    hha = bench.add_argument_group("HHA encoding speed (--hha)")
    hha.add_argument(
        "--hha",
        action="store_true",
        help="ms per image of depth_to_hha at --resolutions and --batch, on --device",
    )
    hha.add_argument("--hha-threads", type=int, default=1, help="torch threads (0: all; default 1)")
    hha.add_argument(
        "--hha-missing",
        default="0,0.1",
        help="fractions of pixels marked missing (0: hole-filled depth; default 0,0.1)",
    )
    reg = bench.add_argument_group("registration accuracy (--registration)")
    reg.add_argument(
        "--registration",
        action="store_true",
        help="EPE and time of geometry.register on random known warps (CPU threads as set)",
    )
    reg.add_argument(
        "--reg-pair",
        action="append",
        metavar="RGB,AUX",
        help="a registered pair of files (8-bit RGB; depth .npy metres / PNG mm); repeatable",
    )
    reg.add_argument(
        "--reg-synthetic", type=int, default=4, help="synthetic RGB-T scenes (day and night)"
    )
    reg.add_argument("--reg-warps", type=int, default=8, help="random warps per pair")
    reg.add_argument(
        "--reg-models",
        default="translation,similarity,affine,homography",
        help="comma-separated registration models (empty: none)",
    )
    reg.add_argument(
        "--reg-aligner",
        default=None,
        metavar="RUN_OR_CKPT",
        help="also a learned CorrelationAlign (an alignment run's folder or checkpoint) on "
        "the same warps, alone and refined by register",
    )
    reg.add_argument(
        "--reg-aligner-width",
        type=int,
        default=160,
        help="width the learned aligner runs at (its training scale); its matrix is scaled up",
    )
    reg.add_argument(
        "--reg-refine",
        default="affine",
        help="register model that refines the learned estimate ('' for none)",
    )
    return bench


def run(argv: Sequence[str]) -> int:
    return run_benchmark(parser().parse_args(list(argv)))
