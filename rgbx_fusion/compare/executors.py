"""Where the runs of a compare grid train: here one after another, in parallel local
processes, or as a SLURM job array (the last two through submitit).

``--executor sequential`` (the default) trains in this process. ``local`` runs
``--jobs N`` runs at once through submitit's local executor: one per GPU
(``CUDA_VISIBLE_DEVICES`` pinned) on a CUDA machine, else the CPU cores split between
them. ``slurm`` submits one job array over every unfinished run (submitit's
``map_array``); its options (``--slurm.partition`` ...) map onto ``sbatch`` flags.
The defaults can sit in the compare config::

    executor:
      kind: slurm
      slurm: {partition: gpu, time: "06:00:00", gpus_per_task: 1, cpus_per_task: 8, mem: 64G}

Options given on the command line win over the config's.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rgbx_fusion.compare.jobs import (
    RunJob,
    read_json,
    write_job_record,
)
from rgbx_fusion.console import console
from rgbx_fusion.errors import ConfigError

KINDS = ("sequential", "local", "slurm")
INSTALL = "pip install 'rgbx-fusion[cluster]'"
#: A local job's time limit: submitit's local executor stops a job after it (default 2 min).
LOCAL_TIMEOUT_MIN = 60 * 24 * 30


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM settings of every job of the array (``None``: the cluster's default).

    ``time``: minutes, or ``[D-]HH:MM[:SS]``. ``mem``: e.g. ``64G``. ``gpus_per_task``:
    GPUs of one run; with more than one, the run is one SLURM task per GPU and the
    recipe's ``trainer.devices`` must be that number (Lightning's SLURM environment
    makes the DDP ranks of the tasks). ``additional``: any other ``sbatch`` flag,
    ``{"constraint": "a100"}`` or ``--slurm.additional constraint=a100``.
    """

    partition: str | None = None
    time: str | int | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    account: str | None = None
    qos: str | None = None
    additional: dict[str, str] = field(default_factory=dict)


SLURM_KEYS = tuple(f.name for f in fields(SlurmOptions))
_INT_KEYS = ("gpus_per_task", "cpus_per_task", "array_parallelism")


@dataclass(frozen=True)
class ExecutorSettings:
    """Which executor runs the grid, and its options."""

    kind: str = "sequential"
    jobs: int | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


def minutes(value: str | int, where: str = "slurm.time") -> int:
    """A SLURM time limit in whole minutes (seconds round up), read as ``sbatch --time`` does:
    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"{where}: expected a positive number of minutes, got {value}")
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
    parts = [int(p) for p in match.group(2).split(":")] if match else []
    if match is None or (match.group(1) is None and len(parts) > 3):
        raise ConfigError(
            f"{where}: expected minutes or a SLURM time (e.g. 360, 06:00:00, 2-00:00:00), "
            f"got {value!r}"
        )
    if match.group(1) is not None:  # D-H[:M[:S]]
        hours, mins, secs = [*parts, 0, 0][:3]
        total_s = ((int(match.group(1)) * 24 + hours) * 60 + mins) * 60 + secs
    elif len(parts) == 3:
        total_s = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    elif len(parts) == 2:
        total_s = parts[0] * 60 + parts[1]
    else:
        total_s = parts[0] * 60
    if total_s <= 0:
        raise ConfigError(f"{where}: the time limit must be positive, got {value!r}")
    return -(-total_s // 60)


def parse_slurm_options(data: Any, where: str = "executor.slurm") -> SlurmOptions:
    """Validate a mapping of SLURM options; unknown keys and wrong types are ConfigErrors."""
    if data is None:
        return SlurmOptions()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of SLURM options, got {data!r}")
    unknown = sorted(set(data) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown SLURM options {unknown}; expected some of {SLURM_KEYS}"
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
        elif key == "time":
            minutes(value, f"{where}.time")
        elif key == "additional":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.additional: expected a mapping of sbatch flags")
            value = {str(k): str(v) for k, v in value.items()}
        else:
            value = str(value)
        values[key] = value
    return SlurmOptions(**values)


def parse_executor(data: Any, where: str = "executor") -> ExecutorSettings:
    """The ``executor:`` section of a compare config."""
    if data is None:
        return ExecutorSettings()
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping (kind, jobs, slurm), got {data!r}")
    unknown = sorted(set(data) - {"kind", "jobs", "slurm"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of kind, jobs, slurm")
    kind = data.get("kind", "sequential")
    check_kind(kind, f"{where}.kind")
    jobs = data.get("jobs")
    if jobs is not None:
        check_jobs(jobs, f"{where}.jobs")
    return ExecutorSettings(kind, jobs, parse_slurm_options(data.get("slurm"), f"{where}.slurm"))


def check_kind(kind: Any, where: str = "--executor") -> None:
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown executor {kind!r}; expected one of {KINDS}")


def check_jobs(jobs: Any, where: str = "--jobs") -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{where}: expected a positive number of parallel runs, got {jobs!r}")


def with_cli(
    settings: ExecutorSettings,
    kind: str | None = None,
    jobs: int | None = None,
    slurm: Mapping[str, Any] | None = None,
) -> ExecutorSettings:
    """``settings`` with the options given on the command line put over them."""
    if kind is not None:
        check_kind(kind)
    if jobs is not None:
        check_jobs(jobs)
    merged = {k: v for k, v in vars(settings.slurm).items() if v is not None}
    for key, value in (slurm or {}).items():
        if value is not None:
            merged[key] = value if key != "additional" else {**merged.get(key, {}), **value}
    return replace(
        settings,
        kind=kind or settings.kind,
        jobs=jobs if jobs is not None else settings.jobs,
        slurm=parse_slurm_options(merged, "--slurm"),
    )


def require_submitit(kind: str) -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError(
            f"--executor {kind} runs the grid through submitit, which is not installed: {INSTALL}"
        ) from exc
    return submitit


# ---- sequential ---------------------------------------------------------------------------
def run_sequential(jobs: Sequence[RunJob], after: Callable[[RunJob, Any], None]) -> None:
    """Run every job here, one after another; a crash is recorded and the next run starts."""
    for i, job in enumerate(jobs, 1):
        console.rule(f"[bold]run {i}/{len(jobs)}[/bold] · [cyan]{job.label}[/cyan]")
        try:
            result = job()
        except Exception as exc:  # recorded in failed.json by the job
            console.print(f"[red]{job.label} failed: {exc}[/red]")
            after(job, None)
            continue
        after(job, result)


# ---- local, in parallel -------------------------------------------------------------------
def local_slots(jobs: int | None) -> tuple[int, list[int | None], int | None]:
    """``(parallel runs, GPU of each slot or None, threads per run or None)``."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = jobs or max(1, gpus)
    if gpus:
        return n, [i % gpus for i in range(n)], None
    return n, [None] * n, max(1, (os.cpu_count() or 1) // n)


def run_local(
    jobs: Sequence[RunJob],
    n_jobs: int | None,
    folder: Path,
    poll_s: float = 0.5,
    on_start: Callable[[RunJob, Any], None] | None = None,
) -> None:
    """Run the jobs ``n_jobs`` at a time in worker processes (submitit's local executor).

    A worker that crashes or is killed ends its run only; the others go on.
    """
    submitit = require_submitit("local")
    n, gpus, threads = local_slots(n_jobs)
    executor = submitit.LocalExecutor(folder=folder / "%j")
    pending = [replace(job, threads=threads) for job in jobs]
    running: dict[int, tuple[RunJob, Any]] = {}
    where = (
        "GPUs " + ",".join(str(g) for g in gpus)
        if gpus[0] is not None
        else f"{threads} threads each"
    )
    console.print(f"local executor: {len(pending)} run(s), {n} at a time ({where})")
    try:
        while pending or running:
            for slot in range(n):
                if slot in running or not pending:
                    continue
                job = pending.pop(0)
                gpu = gpus[slot]
                executor.update_parameters(
                    timeout_min=LOCAL_TIMEOUT_MIN,
                    gpus_per_node=0 if gpu is None else 1,
                    visible_gpus=() if gpu is None else (gpu,),
                )
                handle = executor.submit(job)
                write_job_record(job.folder, "local", str(handle.job_id), folder / "%j")
                console.print(f"[cyan]{job.label}[/cyan]: started (local job {handle.job_id})")
                running[slot] = (job, handle)
                if on_start is not None:
                    on_start(job, handle)
            for slot, (job, handle) in list(running.items()):
                if handle.done():
                    del running[slot]
                    _report_local(job, handle)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for _job, handle in running.values():
            handle.cancel(check=False)
        raise


def _report_local(job: RunJob, handle: Any) -> None:
    if (job.folder / "metrics.json").is_file():
        console.print(f"[green]{job.label}: done[/green]")
        return
    error = handle.exception()
    if error is not None and read_json(job.folder / "failed.json") is None:
        # The worker died before the run could record anything (killed, out of memory).
        console.print(f"[yellow]{job.label}: stopped ({str(error).splitlines()[0]})[/yellow]")
        return
    record = read_json(job.folder / "failed.json") or {}
    console.print(f"[red]{job.label}: failed: {record.get('error')}[/red]")


# ---- SLURM --------------------------------------------------------------------------------
def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters for ``options``."""
    params: dict[str, Any] = {}
    if options.partition:
        params["partition"] = options.partition
    if options.time is not None:
        params["time"] = minutes(options.time)
    gpus = options.gpus_per_task
    if gpus is not None and gpus > 1:
        params["ntasks_per_node"] = gpus  # one task per GPU: Lightning's DDP over SLURM tasks
        params["gpus_per_task"] = 1
    elif gpus is not None:
        params["gpus_per_task"] = gpus
    for key in ("cpus_per_task", "mem", "account", "qos", "array_parallelism"):
        value = getattr(options, key)
        if value is not None:
            params[key] = value
    if options.additional:
        params["additional_parameters"] = dict(options.additional)
    return params


def submit_slurm(jobs: Sequence[RunJob], options: SlurmOptions, folder: Path) -> list[str]:
    """Submit one job array over ``jobs``; record each run's job id; return the ids."""
    submitit = require_submitit("slurm")
    try:
        executor = submitit.SlurmExecutor(folder=folder / "%j")
    except RuntimeError as exc:  # no srun on PATH
        raise ConfigError(f"--executor slurm: {exc} (sbatch/srun must be on PATH)") from exc
    try:
        executor.update_parameters(job_name="rgbx-compare", **slurm_parameters(options))
    except ValueError as exc:
        raise ConfigError(f"--slurm options: {exc}") from exc
    handles = executor.submit_array(list(jobs))
    ids = [str(h.job_id) for h in handles]
    for job, job_id in zip(jobs, ids, strict=True):
        write_job_record(job.folder, "slurm", job_id, folder / "%j")
    console.print(
        f"slurm: submitted {len(ids)} run(s) as job array {ids[0].split('_')[0]} (logs in {folder})"
    )
    return ids
