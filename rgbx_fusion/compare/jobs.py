"""One (variant, seed) run as a self-contained job, and its state on disk.

Every executor (:mod:`rgbx_fusion.compare.executors`) runs the same :class:`RunJob`: in
this process, in a local worker process, or as one task of a SLURM job array. A job
needs nothing from the process that submitted it: it trains into its own run folder,
resumes from that folder's ``last.ckpt`` when it was interrupted, and leaves its outcome
in files, so any later ``compare`` (or ``compare --status``) can read it.

Files of a run folder (``<out>/runs/<variant>/seed<k>/``)::

    metrics.json   the run has finished: its scores (written atomically, last)
    failed.json    the run crashed: the error's first line, where its log is
    error.log      that crash's full traceback
    running.json   the run is in progress: host, pid, start time (removed when it ends)
    job.json       the scheduler job that owns the run (executor, job id, submitit folder)

Convention:
    A run is *done* once ``metrics.json`` exists and is never trained again. A run
    without it is retried by the next ``compare``: it continues from its ``last.ckpt``
    when it has one. A crash (any ``Exception``) is recorded, not raised further by the
    sequential executor; an interruption (SIGTERM, SIGKILL, Ctrl-C, a SLURM
    preemption) is not a failure: the run is left to resume.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rgbx_fusion.data.atomic import write_text_atomic

if TYPE_CHECKING:
    from rgbx_fusion.compare.grid import CompareConfig, Variant

#: Every state :func:`run_state` reports, in the order ``--status`` lists them.
STATES = ("done", "running", "queued", "failed", "interrupted", "not started")
#: Files that belong to the run's bookkeeping, kept when its training folder is reset.
BOOKKEEPING = ("job.json", "running.json")
#: SLURM states of a job that will still run (or runs now).
SLURM_QUEUED = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "RESV_DEL_HOLD",
}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
#: SLURM states of a job that ended without finishing its run (when it wrote no failed.json).
SLURM_ENDED = {
    "FAILED",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "CANCELLED",
    "PREEMPTED",
}


def run_dir(out: Path, variant: Variant, seed: int) -> Path:
    return out / "runs" / variant.name / f"seed{seed}"


def label(variant: Variant, seed: int) -> str:
    return f"{variant.name}/seed{seed}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or ``None`` when it is missing or unreadable (half-copied)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _rank() -> int:
    """This process's rank in a multi-process run (SLURM task or DDP worker), else 0."""
    for key in ("SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 0


def _submitit_log() -> str | None:
    """The stderr file of the submitit job this process runs in, if any."""
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # not inside a submitit job, or submitit missing
        return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def record_failure(folder: Path, exc: BaseException, log: str | None = None) -> dict[str, Any]:
    """Write ``error.log`` (traceback) and ``failed.json`` for a crashed run; return the record."""
    folder.mkdir(parents=True, exist_ok=True)
    error_log = folder / "error.log"
    write_text_atomic(error_log, "".join(traceback.format_exception(exc)))
    record = {
        "status": "failed",
        "error": first_line(exc),
        "log": log or str(error_log),
        "traceback": str(error_log),
        "host": socket.gethostname(),
        "time": time.time(),
    }
    write_text_atomic(folder / "failed.json", json.dumps(record, indent=2))
    return record


def execute_run(
    config: CompareConfig,
    variant: Variant,
    seed: int,
    out: Path,
    speed: bool = True,
    resume: bool = True,
    log: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run and write its ``metrics.json``; return its metrics.

    A run that is already done returns its recorded metrics. A crash writes
    ``failed.json`` and is raised again; an interruption leaves the folder to resume.
    """
    from rgbx_fusion.compare.runner import train_or_resume

    folder = run_dir(out, variant, seed)
    done = folder / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    rank0 = _rank() == 0
    if rank0:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("failed.json", "error.log"):
            (folder / name).unlink(missing_ok=True)
        stamp = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        write_text_atomic(folder / "running.json", json.dumps(stamp))
    try:
        result = train_or_resume(config, variant, seed, folder, speed, resume)
        if rank0:
            write_text_atomic(done, json.dumps(result, indent=2))
        return result
    except Exception as exc:
        if rank0:
            record_failure(folder, exc, log)
        raise
    finally:
        if rank0:
            (folder / "running.json").unlink(missing_ok=True)


@dataclass
class RunJob:
    """One (variant, seed) of a compare grid, picklable for any executor.

    ``threads``: intra-op threads of this run (local parallel runs split the cores).
    ``cwd``: the folder relative paths of the configs are read from (the submitter's).
    Calling it trains the run; :meth:`checkpoint` is submitit's hook on preemption or
    time-out: the job is requeued as it is and resumes from the run's ``last.ckpt``.
    """

    config: CompareConfig
    variant: Variant
    seed: int
    out: str
    speed: bool = True
    threads: int | None = None
    cwd: str = field(default_factory=os.getcwd)

    @property
    def label(self) -> str:
        return label(self.variant, self.seed)

    @property
    def folder(self) -> Path:
        return run_dir(Path(self.out), self.variant, self.seed)

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.cwd)
        if self.threads:
            import torch

            os.environ["OMP_NUM_THREADS"] = str(self.threads)
            torch.set_num_threads(self.threads)
        return execute_run(
            self.config, self.variant, self.seed, Path(self.out), self.speed, log=_submitit_log()
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def write_job_record(folder: Path, executor: str, job_id: str, jobs_folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "executor": executor,
        "job_id": job_id,
        "folder": str(jobs_folder),
        "submitted": time.time(),
    }
    write_text_atomic(folder / "job.json", json.dumps(record, indent=2))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM state of each job id (``<array>_<task>`` or plain), through ``sacct``."""
    import subprocess

    ids = sorted(set(job_ids))
    if not ids:
        return {}
    mains = sorted({i.split("_")[0] for i in ids})
    cmd = ["sacct", "-o", "JobID,State", "--parsable2", *(a for m in mains for a in ("-j", m))]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        job, _, state = line.partition("|")
        if job and "." not in job:
            word = state.split()[0] if state.split() else "UNKNOWN"
            found.update(dict.fromkeys(expand_job_ids(job), word))
    return {i: found.get(i, "UNKNOWN") for i in ids}


def expand_job_ids(job: str) -> list[str]:
    """``123_[0-2,5%2]`` (pending array tasks, as sacct groups them) → ``123_0 … 123_5``."""
    match = re.fullmatch(r"(\d+)_\[([\d,-]+)(?:%\d+)?\]", job)
    if match is None:
        return [job]
    ids = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            ids += [f"{match.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def slurm_log(job: dict[str, Any]) -> str:
    """The stderr file submitit gives the task-0 process of a recorded SLURM job."""
    try:
        from submitit.core.utils import JobPaths

        return str(JobPaths(job["folder"], job_id=str(job["job_id"]), task_id=0).stderr)
    except Exception:  # submitit missing: the folder is still the place to look
        return str(job.get("folder"))


@dataclass(frozen=True)
class RunState:
    """What :func:`run_state` found: one of :data:`STATES` and a detail for humans."""

    state: str
    detail: str = ""
    record: dict[str, Any] | None = None


def run_state(folder: Path, slurm: dict[str, str] | None = None) -> RunState:
    """The state of one run from its folder (and, for SLURM runs, ``slurm_states``)."""
    if (folder / "metrics.json").is_file():
        return RunState("done")
    job = read_json(folder / "job.json")
    if job is not None and job.get("executor") == "slurm" and slurm is not None:
        state = slurm.get(str(job.get("job_id")), "UNKNOWN")
        if state in SLURM_QUEUED:
            return RunState("queued", f"SLURM job {job['job_id']} {state}", job)
        if state in SLURM_RUNNING:
            return RunState("running", f"SLURM job {job['job_id']} {state}", job)
        if state in SLURM_ENDED and not (folder / "failed.json").is_file():
            log = slurm_log(job)
            record = {"error": f"SLURM job {job['job_id']} ended {state}", "log": log}
            return RunState("failed", f"{record['error']} (log: {log})", record)
    running = read_json(folder / "running.json")
    if running is not None:
        here = running.get("host") == socket.gethostname()
        pid = int(running.get("pid", -1))
        if (here and pid > 0 and _alive(pid)) or (not here and job is None):
            return RunState("running", f"pid {pid} on {running.get('host')}", running)
    failed = read_json(folder / "failed.json")
    if failed is not None:
        return RunState("failed", f"{failed.get('error')} (log: {failed.get('log')})", failed)
    if folder.is_dir() and any(folder.rglob("last.ckpt")):
        return RunState("interrupted", "resumes from its last.ckpt")
    if folder.is_dir() and any(p.name not in BOOKKEEPING for p in folder.iterdir()):
        return RunState("interrupted", "restarts (no last.ckpt)")
    return RunState("not started")


def failure_row(variant: Variant, seed: int, record: dict[str, Any]) -> dict[str, Any]:
    """A failed run for the report: variant, seed, its error's first line and its log."""
    return {
        "variant": variant.name,
        "seed": seed,
        "status": "failed",
        "error": str(record.get("error", "")),
        "log": str(record.get("log", "")),
    }
