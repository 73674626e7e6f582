"""The comparison harness: train every variant × seed, resumably, then write the report.

``rgbx-fusion compare --config configs/compare/synthetic_depth.yaml`` trains each
variant of the compare config with every seed (same data, split, augmentation,
schedule and budget), chooses each run's checkpoint on val, tests it, and writes
``results.csv``, ``results.md`` and plots into ``--out``.

Layout of ``--out``::

    runs/<variant>/seed<k>/   Lightning's folder of the run (logs, resolved config)
    runs/<variant>/seed<k>/checkpoints/   best-*.ckpt (chosen on val) and last.ckpt
    runs/<variant>/seed<k>/metrics.json   written atomically when the run has finished
    results.csv, results.md, runs.csv, miou_vs_gflops.png, per_class_iou.png
    robustness.csv, robustness.png        with ``--robustness``

Convention:
    A run whose ``metrics.json`` exists is done and is never retrained; a run folder
    without one was interrupted: it continues from its ``last.ckpt`` (Lightning's
    ``--ckpt_path`` resume) or, without a usable one, is deleted and trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgbx_fusion.bench.flops import count_flops, count_parameters
from rgbx_fusion.compare.grid import CompareConfig, Variant
from rgbx_fusion.console import console
from rgbx_fusion.data.atomic import write_text_atomic

RunHook = Callable[[Variant, int, dict[str, Any]], None]


def run_dir(out: Path, variant: Variant, seed: int) -> Path:
    return out / "runs" / variant.name / f"seed{seed}"


def describe_network(net: nn.Module) -> dict[str, str]:
    """Fusion stage and the (distinct) fusion / rectify / aligner classes inside ``net``."""
    from rgbx_fusion.models.align.base import AlignBase
    from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase

    def names(kind: type) -> str:
        found = dict.fromkeys(type(m).__name__ for m in net.modules() if isinstance(m, kind))
        return "+".join(found) or "-"

    rectify = names(RectifyBase)
    fusion = names(FusionBase)
    return {
        "stage": str(getattr(net, "fusion_stage", "?")),
        "fusion": fusion if rectify == "-" else f"{fusion}+{rectify}",
        "aligner": names(AlignBase),
    }


def _input_size(dm: Any) -> tuple[int, int]:
    size = getattr(dm, "train_size", None) or getattr(dm, "eval_size", None)
    if size:
        return int(size[0]), int(size[1])
    rgb = dm.dataset("test")[0]["rgb"]
    return int(rgb.shape[-2]), int(rgb.shape[-1])


def _costs(net: nn.Module, dm: Any, name: str, speed: bool) -> dict[str, float]:
    """Params and GFLOPs at the training resolution; latency at batch 1, peak memory of
    one inference at batch 1 and one training step at batch 2."""
    h, w = _input_size(dm)
    device = next(net.parameters()).device
    aux_channels = int(dm.aux_channels)
    rgb = torch.randn(1, 3, h, w, device=device)
    aux = torch.randn(1, aux_channels, h, w, device=device)
    costs = {"params": float(count_parameters(net)), "gflops": count_flops(net, rgb, aux) / 1e9}
    if speed:
        from rgbx_fusion.bench.benchmark import measure

        # measure() takes optimiser steps: it runs after the scores are taken, on a copy.
        m = measure(name, lambda: _copy(net), (h, w), 1, aux_channels, device, 1, 3)
        costs |= {"latency_ms": m.latency_ms, "peak_memory_mb": m.peak_memory_mb}
    return costs


def _copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest ``last.ckpt`` under a run folder (Lightning's ``save_last``), if any."""
    found = sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_args(config: CompareConfig, variant: Variant, seed: int, folder: Path) -> list[str]:
    """The config arguments of one run: its layers and overrides, then its folders."""
    return [
        *config.run_args(variant, seed),
        f"--trainer.default_root_dir={folder}",
        # A fixed folder, so a resumed run restores the best score and path (Lightning
        # forgets them when the dirpath changes, as it would with a new log version).
        f"--checkpoint.dirpath={folder / 'checkpoints'}",
    ]


def train_one(
    config: CompareConfig,
    variant: Variant,
    seed: int,
    folder: Path,
    speed: bool = True,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train one run into ``folder``, test its best-on-val checkpoint, return its metrics.

    ``resume_from``: a ``last.ckpt`` of an interrupted run; training continues from it.
    """
    from rgbx_fusion.experiment import build, fit_and_test

    args = run_args(config, variant, seed, folder)
    start = time.perf_counter()
    exp = build(args=args)
    result = fit_and_test(exp, resume_from)
    net = exp.task.net
    log_dir = Path(exp.trainer.log_dir or folder)
    return {
        "variant": variant.name,
        "seed": seed,
        **describe_network(net),
        **_costs(net, exp.datamodule, variant.name, speed),
        "val_mIoU": result.val_miou,
        "test_mIoU": result.miou,
        "test_pixel_acc": result.pixel_acc,
        "iou": result.iou,
        "classes": result.classes,
        "checkpoint": result.checkpoint,
        "resolved_config": str(log_dir / "config.yaml"),
        "overrides": args,
        "train_seconds": time.perf_counter() - start,
        "resumed_from": str(resume_from) if resume_from is not None else None,
    }


def _train_or_resume(
    config: CompareConfig, variant: Variant, seed: int, folder: Path, speed: bool, resume: bool
) -> dict[str, Any]:
    label = f"{variant.name}/seed{seed}"
    last = last_checkpoint(folder) if resume and folder.exists() else None
    if last is not None:
        console.print(f"[yellow]{label}: interrupted, resuming from {last}[/yellow]")
        try:
            return train_one(config, variant, seed, folder, speed, resume_from=last)
        except (RuntimeError, OSError, EOFError, KeyError) as exc:  # e.g. a truncated file
            console.print(f"[yellow]{label}: cannot resume ({exc}); restarting[/yellow]")
    if folder.exists():
        console.print(f"[yellow]{label}: unfinished run folder, restarting it[/yellow]")
        shutil.rmtree(folder)
    return train_one(config, variant, seed, folder, speed)


def run_compare(
    config: CompareConfig,
    out: str | Path,
    robustness: bool = False,
    speed: bool = True,
    after_run: RunHook | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train what is not done yet, then write the report; return ``{"rows", "trained", ...}``.

    An interrupted run (folder without ``metrics.json``) continues from its ``last.ckpt``
    when ``resume`` and one loads, else it is deleted and trained from scratch.
    ``after_run(variant, seed, metrics)`` is called after each newly finished run (a
    hook for progress reporting, and for tests that simulate an interruption).
    """
    from rgbx_fusion.compare.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(v, s) for v in config.variants for s in config.seeds]
    trained: list[str] = []
    skipped: list[str] = []
    metrics: list[dict[str, Any]] = []
    n_var = len(config.variants)
    for i, (variant, seed) in enumerate(runs, 1):
        folder = run_dir(out, variant, seed)
        done = folder / "metrics.json"
        label = f"{variant.name}/seed{seed}"
        k = config.variants.index(variant) + 1
        if done.is_file():
            console.print(f"[dim][{i}/{len(runs)}] {label}: done, skipped[/dim]")
            previous = json.loads(done.read_text())
            recorded = previous.get("overrides")
            if recorded is not None and recorded != run_args(config, variant, seed, folder):
                console.print(
                    f"[yellow]{label}: trained with other settings than the config's now; "
                    f"delete {folder} to train it again[/yellow]"
                )
            metrics.append(previous)
            skipped.append(label)
            continue
        console.rule(
            f"[bold]run {i}/{len(runs)}[/bold] · variant {k}/{n_var} [cyan]{variant.name}[/cyan]"
            f" · seed {seed}"
        )
        result = _train_or_resume(config, variant, seed, folder, speed, resume)
        write_text_atomic(done, json.dumps(result, indent=2))
        metrics.append(result)
        trained.append(label)
        if after_run is not None:
            after_run(variant, seed, result)
    summary: dict[str, Any] = {"trained": trained, "skipped": skipped}
    if robustness:
        from rgbx_fusion.compare.robustness import run_robustness

        summary["robustness"] = run_robustness(metrics, out)
    summary["rows"] = write_report(metrics, out)
    return summary
