"""The comparison harness: train every variant × seed, resumably, then write the report.

``rgbx-fusion compare --config configs/compare/synthetic_depth.yaml`` trains each
variant of the compare config with every seed (same data, split, augmentation,
schedule and budget), chooses each run's checkpoint on val, tests it, and writes
``results.csv``, ``results.md``, ``report.html`` and plots into ``--out``. The runs
train here, in parallel local processes or on SLURM (:mod:`rgbx_fusion.compare.executors`),
each as one self-contained job (:mod:`rgbx_fusion.compare.jobs`).

Layout of ``--out``::

    compare.json                          the variants' settings and seeds of this folder
    runs/<variant>/seed<k>/               Lightning's folder of the run (logs, resolved config)
    runs/<variant>/seed<k>/checkpoints/   best-*.ckpt (chosen on val) and last.ckpt
    runs/<variant>/seed<k>/metrics.json   written atomically when the run has finished
    runs/<variant>/seed<k>/failed.json    the run crashed (error, log); retried by a rerun
    jobs/                                 submitit's job files and logs (local, slurm)
    results.csv, results.md, report.html, runs.csv, miou_vs_gflops.png, per_class_iou.png
    robustness.csv, robustness.png        with ``--robustness``

Convention:
    A run whose ``metrics.json`` exists is done and is never retrained; any other run
    is tried again by the next call: it continues from its ``last.ckpt`` (Lightning's
    ``--ckpt_path`` resume) or, without a usable one, starts again. A folder written by
    a compare config with other variants, variant settings or seeds is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgbx_fusion.bench.flops import count_flops, count_parameters
from rgbx_fusion.compare.executors import (
    ExecutorSettings,
    run_local,
    run_sequential,
    submit_slurm,
)
from rgbx_fusion.compare.grid import CompareConfig, Variant
from rgbx_fusion.compare.jobs import (
    BOOKKEEPING,
    STATES,
    RunJob,
    RunState,
    failure_row,
    label,
    read_json,
    run_state,
    slurm_states,
)
from rgbx_fusion.console import console
from rgbx_fusion.data.atomic import write_text_atomic
from rgbx_fusion.errors import ConfigError

RunHook = Callable[[Variant, int, dict[str, Any]], None]


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


def train_or_resume(
    config: CompareConfig, variant: Variant, seed: int, folder: Path, speed: bool, resume: bool
) -> dict[str, Any]:
    """Train one run, continuing from its ``last.ckpt`` when an earlier attempt left one."""
    name = label(variant, seed)
    last = last_checkpoint(folder) if resume and folder.exists() else None
    if last is not None:
        console.print(f"[yellow]{name}: interrupted, resuming from {last}[/yellow]")
        try:
            return train_one(config, variant, seed, folder, speed, resume_from=last)
        except (RuntimeError, OSError, EOFError, KeyError) as exc:  # e.g. a truncated file
            console.print(f"[yellow]{name}: cannot resume ({exc}); restarting[/yellow]")
    leftovers = (
        [p for p in folder.iterdir() if p.name not in BOOKKEEPING] if folder.exists() else []
    )
    if leftovers:
        console.print(f"[yellow]{name}: unfinished run folder, restarting it[/yellow]")
        for path in leftovers:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return train_one(config, variant, seed, folder, speed)


def manifest(config: CompareConfig) -> dict[str, Any]:
    """What defines a compare folder: each variant's run arguments and the seeds."""
    return {
        "variants": {
            v.name: [a for a in config.run_args(v, 0) if not a.startswith("--seed_everything=")]
            for v in config.variants
        },
        "seeds": list(config.seeds),
    }


def check_manifest(config: CompareConfig, out: Path) -> None:
    """Write ``compare.json``, or refuse a folder another compare config wrote.

    Raises:
        ConfigError: ``out`` holds runs of different variants, variant settings or seeds.
    """
    path = out / "compare.json"
    mine = manifest(config)
    before = read_json(path)
    if before is None:
        if not path.exists() and (out / "runs").is_dir():
            # A folder from before manifests: check what can be checked, the variant names.
            found = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir())
            extra = sorted(set(found) - set(mine["variants"]))
            if extra:
                raise ConfigError(_mismatch(out, [f"runs of variants {extra} not in the config"]))
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(mine, indent=2))
        return
    problems = []
    old, new = before.get("variants", {}), mine["variants"]
    if set(old) - set(new):
        problems.append(f"variants {sorted(set(old) - set(new))} were removed")
    if set(new) - set(old):
        problems.append(f"variants {sorted(set(new) - set(old))} were added")
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    if changed:
        problems.append(f"the settings of variants {changed} changed")
    if before.get("seeds") != mine["seeds"]:
        problems.append(f"seeds {before.get('seeds')} became {mine['seeds']}")
    if problems:
        raise ConfigError(_mismatch(out, problems))


def _mismatch(out: Path, problems: list[str]) -> str:
    return (
        f"{out} was written by a different compare config ({'; '.join(problems)}). Nothing "
        "was changed: compare into a new folder with --out, or delete this one to start over"
    )


def grid_jobs(config: CompareConfig, out: Path, speed: bool) -> list[RunJob]:
    return [RunJob(config, v, s, str(out), speed) for v in config.variants for s in config.seeds]


def grid_states(jobs: list[RunJob]) -> dict[str, RunState]:
    """The state of every run of the grid (SLURM runs through one ``sacct`` call)."""
    records = {job.label: read_json(job.folder / "job.json") for job in jobs}
    slurm_ids = [str(r["job_id"]) for r in records.values() if r and r.get("executor") == "slurm"]
    slurm = slurm_states(slurm_ids) if slurm_ids else None
    return {job.label: run_state(job.folder, slurm) for job in jobs}


def print_status(config: CompareConfig, out: Path) -> dict[str, RunState]:
    """``compare --status``: one line per run, then the count of each state."""
    from rich.table import Table

    jobs = grid_jobs(config, out, speed=False)
    states = grid_states(jobs)
    table = Table(title=f"compare {out}")
    for column in ("run", "state", "detail"):
        table.add_column(column)
    colours = {"done": "green", "failed": "red", "running": "cyan", "queued": "blue"}
    for name, st in states.items():
        colour = colours.get(st.state, "yellow")
        table.add_row(name, f"[{colour}]{st.state}[/{colour}]", st.detail)
    console.print(table)
    counts = {k: sum(st.state == k for st in states.values()) for k in STATES}
    console.print(" · ".join(f"{n} {k}" for k, n in counts.items() if n))
    return states


def wait_for(jobs: list[RunJob], poll_s: float = 5.0) -> dict[str, RunState]:
    """Poll until no run of ``jobs`` is queued or running; show the counts as they change."""
    with console.status("waiting for the grid") as status:
        while True:
            states = grid_states(jobs)
            counts = {k: sum(st.state == k for st in states.values()) for k in STATES}
            status.update(" · ".join(f"{n} {k}" for k, n in counts.items() if n))
            if not counts["queued"] and not counts["running"]:
                return states
            time.sleep(poll_s)


def run_compare(
    config: CompareConfig,
    out: str | Path,
    robustness: bool = False,
    speed: bool = True,
    after_run: RunHook | None = None,
    resume: bool = True,
    executor: ExecutorSettings | None = None,
    submit_only: bool = False,
    gallery: int = 6,
    poll_s: float = 5.0,
    robustness_groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train what is not done yet, then write the report.

    Returns ``{"trained", "skipped", "failed", "submitted", "rows", ...}`` (run labels).
    Runs already done are skipped; failed and interrupted ones are tried again (an
    interrupted run continues from its ``last.ckpt`` when ``resume`` and one loads).
    Runs queued or running in SLURM from an earlier call are waited for, not submitted
    again. ``submit_only`` returns once the SLURM array is queued (no report).
    ``after_run(variant, seed, metrics)`` is called after each run the sequential
    executor finishes (a hook for progress reporting, and for tests).
    ``robustness_groups`` limits ``robustness`` to these groups of perturbations
    (:data:`~rgbx_fusion.compare.robustness.GROUPS`).
    """
    settings = executor or ExecutorSettings()
    out = Path(out)
    check_manifest(config, out)
    jobs = grid_jobs(config, out, speed)
    before = grid_states(jobs)
    skipped = [job.label for job in jobs if before[job.label].state == "done"]
    active = [job for job in jobs if before[job.label].state in ("queued", "running")]
    todo = [job for job in jobs if before[job.label].state not in ("done", "queued", "running")]
    for name in skipped:
        console.print(f"[dim]{name}: done, skipped[/dim]")
    for job in active:
        console.print(f"[dim]{job.label}: {before[job.label].detail}, waiting for it[/dim]")
    summary: dict[str, Any] = {"skipped": skipped, "submitted": [j.label for j in todo]}
    jobs_folder = out / "jobs"
    if settings.kind == "slurm" and submit_only and not todo and not active:
        console.print("slurm: nothing to submit")
    if todo and settings.kind == "sequential":

        def after(job: RunJob, result: dict[str, Any] | None) -> None:
            if result is not None and after_run is not None:
                after_run(job.variant, job.seed, result)

        run_sequential([replace(job, speed=speed) for job in todo], after)
    elif todo and settings.kind == "local":
        run_local(todo, settings.jobs, jobs_folder, poll_s=min(poll_s, 0.5))
    elif todo and settings.kind == "slurm":
        submit_slurm(todo, settings.slurm, jobs_folder)
    if settings.kind == "slurm" and submit_only:
        console.print(
            "slurm: queued; `rgbx-fusion compare --config ... --status` shows the runs, "
            "and `rgbx-fusion compare --config ...` collects them into the report"
        )
        return {**summary, "trained": [], "failed": [], "rows": []}
    states = wait_for(jobs, poll_s) if active or settings.kind == "slurm" else grid_states(jobs)
    groups = tuple(robustness_groups) if robustness_groups else None
    return _collect(config, out, jobs, states, summary, robustness, gallery, groups)


def _collect(
    config: CompareConfig,
    out: Path,
    jobs: list[RunJob],
    states: dict[str, RunState],
    summary: dict[str, Any],
    robustness: bool,
    gallery: int,
    robustness_groups: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Read every finished run, report the failed ones, write the report."""
    from rgbx_fusion.compare.report import write_report

    metrics = [
        json.loads((job.folder / "metrics.json").read_text())
        for job in jobs
        if states[job.label].state == "done"
    ]
    failed = [
        failure_row(job.variant, job.seed, states[job.label].record or {})
        for job in jobs
        if states[job.label].state == "failed"
    ]
    unfinished = [job.label for job in jobs if states[job.label].state not in ("done", "failed")]
    summary["trained"] = [
        job.label
        for job in jobs
        if states[job.label].state == "done" and job.label not in summary["skipped"]
    ]
    summary["failed"] = [f"{row['variant']}/seed{row['seed']}" for row in failed]
    summary["unfinished"] = unfinished
    for row in failed:
        name = f"{row['variant']}/seed{row['seed']}"
        console.print(f"[red]{name} failed: {row['error']} (log: {row['log']})[/red]")
    for name in unfinished:
        console.print(f"[yellow]{name}: {states[name].state}; a rerun continues it[/yellow]")
    if robustness and metrics:
        from rgbx_fusion.compare.robustness import GROUPS, run_robustness

        summary["robustness"] = run_robustness(metrics, out, groups=robustness_groups or GROUPS)
    has_any = bool(metrics or failed)
    summary["rows"] = write_report(metrics, out, failed=failed, gallery=gallery) if has_any else []
    return summary
