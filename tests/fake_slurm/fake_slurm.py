"""Stand-in SLURM commands for tests on machines without SLURM.

One file implements ``sbatch``, ``srun``, ``sacct``, ``squeue``, ``scancel`` and
``scontrol``; the executable wrappers next to it (``tests/fake_slurm/sbatch`` ...) run
``"$FAKE_SLURM_PYTHON" -S fake_slurm.py <command> ...``. Standard library only.

Use from a test::

    PATH=<repo>/tests/fake_slurm:$PATH      # the wrappers come first
    FAKE_SLURM_DIR=<tmp>/slurm              # required: the cluster's state lives here
    FAKE_SLURM_PYTHON=<python>              # interpreter for the wrappers (default python3)
    FAKE_SLURM_KILL_WAIT=1                  # optional: SIGTERM -> SIGKILL grace (s), default 5
    FAKE_SLURM_MAX_RUNNING=2                # optional: cap on running tasks per job
    FAKE_SLURM_FIRST_JOB_ID=1000            # optional: first job id (default: random)

With submitit, also give each test a fresh ``SlurmJob.watcher`` (class-level; it caches
finished states by job id and calls sacct at most every 600 s), e.g.
``monkeypatch.setattr(submitit.SlurmJob, "watcher", SlurmInfoWatcher(delay_s=1))``, and
stop what is left at the end: ``cancel_all(root)`` then ``wait_idle(root)`` (helpers
below; tests/test_fake_slurm.py loads this file with importlib).

What it emulates
----------------
* ``sbatch [options] script [args]`` (or ``--wrap``): reads ``#SBATCH`` lines (command
  line options win), ``--array`` (``0-3%2``, ``1,4``, ``0-15:4``), ``--output``,
  ``--error``, ``--open-mode``, ``--job-name``, ``--chdir``, ``--parsable``, ``--wait``.
  It prints ``Submitted batch job <id>`` and starts a detached supervisor process
  (own session, log in ``FAKE_SLURM_DIR/jobs/<id>/supervisor.log``) that runs the
  array tasks, at most ``%P`` at once, each through the script's ``#!`` interpreter in
  its own process group, stdout/stderr in the expanded ``--output``/``--error`` files
  (``%A %a %j %J %t %x %u %N %n %s %%`` and zero padding like ``%4a``). Every task gets
  its own SLURM_JOB_ID (the array id for the first task, then +1 ...) and the usual
  variables: SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID/COUNT/MIN/MAX/STEP, SLURM_NTASKS=1,
  SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0, SLURM_JOB_NUM_NODES=1,
  SLURM_JOB_NODELIST=localhost, SLURM_JOB_NAME, SLURM_SUBMIT_DIR, SLURM_RESTART_COUNT
  (after a requeue), SLURM_OPEN_MODE (when ``--open-mode`` is given) ...; SLURM_*
  variables of the submitting process are not passed on.
* ``srun [options] cmd ...`` inside a job: one job step. The command runs in its own
  process group with ``--output``/``--error`` (``none`` too) honoured, appended when
  ``--open-mode=append`` or SLURM_OPEN_MODE=a (set by sbatch ``--open-mode=append``);
  it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCONT, SIGUSR1 and SIGUSR2 to the
  step, kills what is left of the step when the command exits, and exits with its
  status (128+N when killed by signal N). Outside a job it just runs the command.
* ``sacct``: ``-j`` (``id``, ``id_task``, ``id_[1-3]``, a task's own job id),
  ``-o/--format``, ``-P``/``-p``, ``--delimiter``, ``-n``, ``-X``, ``-b``, ``-s``.
  One line per task (pending never-started tasks collapse into ``id_[2-3%2]`` like
  SLURM), plus ``id_task.batch`` and ``id_task.<step>`` lines; an unknown id prints
  the header only. States: PENDING RUNNING REQUEUED COMPLETED FAILED NODE_FAIL and
  ``CANCELLED by <uid>``.
* ``squeue``: pending/running tasks, ``-h``, ``-j``, ``-o`` (``%i %A %F %K %j %T %t %u
  %P %M %D %C %R %N %r %l %V %S %%`` with ``%.10i`` widths), ``-t``, ``-r``, ``-n``;
  pending array tasks collapse into one ``id_[4-7%2]`` line unless ``-r``.
* ``scancel ids [-s/--signal SIG] [-b/--batch] [-f/--full]`` and ``scancel -u USER`` /
  ``--me`` (every job). With a signal (as in SLURM): to the job steps' process groups
  only; ``--batch``: to the batch script's process only; ``--full``: to the batch
  script's process group and the steps. Without a signal (or with KILL): the task is
  CANCELLED at once (pending tasks never run); SIGCONT + SIGTERM go to the batch
  process group (srun passes them to its step) and the supervisor sends SIGKILL to
  everything left after FAKE_SLURM_KILL_WAIT seconds.
* ``scontrol requeue ids`` (comma lists): a running task becomes REQUEUED and is
  terminated like a cancel (SIGTERM, SIGKILL after the grace period); once all its
  processes are gone it is PENDING again with the restart count + 1 and is rerun
  (its output files are then appended to). A finished task is put back to PENDING at
  once. ``scontrol show job <id>`` and ``scontrol show hostnames <list>`` too.
* Like SLURM's cgroups, a task that ends takes its processes with it: once the batch
  script is gone, what is left is killed at once (after the grace period when the task
  is being cancelled or requeued): the process groups of the script and of its steps
  and, on Linux, every process whose environment names the task (FAKE_SLURM_TASK),
  even one that called setsid. The supervisor is a child subreaper, so orphans are
  reaped, never left as zombies. It survives the submitting process; when it is killed
  or its state folder is deleted, the job's processes are killed and the unfinished
  tasks become NODE_FAIL.

What it does not emulate
------------------------
One partition (``fake``), one node (``localhost``), one task per job: ``--nodes``,
``--ntasks`` or ``--ntasks-per-node`` above 1 are refused like an unsatisfiable request.
No resource accounting or limits (cpus, memory, gpus, ``--time``: no TIMEOUT, no
``--signal=SIG@T`` delivery), no priorities, dependencies, holds, reservations, QOS,
accounts or users (all ignored); ``--export`` is ignored (the submitter's environment
is passed on). The state is a folder of JSON files, not a database: ``sacct`` lists
every job of FAKE_SLURM_DIR. Heterogeneous jobs, ``salloc``, ``sattach``, ``sbcast``
and most ``scontrol`` subcommands do not exist.

State layout: ``FAKE_SLURM_DIR/counter`` (next job id) and ``jobs/<id>/`` with
``job.json``, ``script``, ``supervisor.log`` and ``tasks/<id>[_<task>].json`` (state,
pid, restart_count, exit_code, signal, steps, history of runs ...). Files are replaced
atomically (temporary file + os.replace); writers hold an fcntl lock on
``jobs/<id>/lock``. A job's supervisor holds ``jobs/<id>/supervisor.lock`` while it
lives; when it is gone (killed) the job's unfinished tasks turn NODE_FAIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import getpass
import itertools
import json
import math
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

Task = dict[str, Any]

NODE = "localhost"
PARTITION = "fake"
CLUSTER = "fake"
ACCOUNT = "fake"
NO_ARRAY_INDEX = "4294967294"  # what SLURM puts in %a for a job that is not an array
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL"})
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED"})
COMPACT_STATES = {
    "PENDING": "PD",
    "RUNNING": "R",
    "REQUEUED": "RQ",
    "COMPLETING": "CG",
    "COMPLETED": "CD",
    "FAILED": "F",
    "CANCELLED": "CA",
    "NODE_FAIL": "NF",
}
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCONT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
GIVE_UP_AFTER_KILL_S = 2.0  # processes that survive SIGKILL this long (zombies) are ignored


class SlurmError(Exception):
    """A command failed: printed as ``<command>: error: <message>``, exit status 1."""


# ----------------------------------------------------------------------------- helpers


def state_root() -> Path:
    value = os.environ.get("FAKE_SLURM_DIR", "")
    if not value:
        raise SlurmError(
            "FAKE_SLURM_DIR is not set: point it at a folder for the fake cluster's state "
            "(for instance a pytest tmp_path)"
        )
    root = Path(value).absolute()
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    return root


def kill_wait_s() -> float:
    return float(os.environ.get("FAKE_SLURM_KILL_WAIT", "5"))


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``path`` (created when missing)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, data: Any) -> None:
    """Write atomically: readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "Unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def fmt_elapsed(seconds: float, compact: bool = False) -> str:
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if compact:  # squeue style: 0:05, 1:02:03, 1-00:00:00
        if days:
            return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
        if hours:
            return f"{hours}:{minutes:02d}:{secs:02d}"
        return f"{minutes}:{secs:02d}"
    prefix = f"{days}-" if days else ""
    return f"{prefix}{hours:02d}:{minutes:02d}:{secs:02d}"


def parse_signal(value: str) -> int:
    name = value.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SlurmError(f"Invalid signal name: {value}") from None


def signal_group(pgid: int | None, sig: int) -> None:
    if pgid is None or pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_process(pid: int | None, sig: int) -> None:
    if pid is None or pid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def group_alive(pgid: int | None) -> bool:
    if pgid is None or pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def task_processes(root: Path, key: str) -> list[int]:
    """Processes started for a task (their environment names it), wherever they went:
    what SLURM finds through the job's cgroup. Empty without /proc."""
    markers = {f"FAKE_SLURM_TASK={key}".encode(), f"FAKE_SLURM_DIR={root}".encode()}
    found = []
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for name in entries:
        if int(name) == os.getpid():
            continue
        try:
            environ = set(Path("/proc", name, "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if markers <= environ:
            found.append(int(name))
    return found


def parse_array(spec: str) -> tuple[list[int], int | None]:
    """``0-3%2`` -> ([0, 1, 2, 3], 2); also ``1,5``, ``0-15:4``."""
    body, _, limit = spec.partition("%")
    indices: set[int] = set()
    for part in body.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if match is None:
            raise SlurmError(f"Invalid job array specification: {spec}")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
        step = int(match[3]) if match[3] else 1
        if high < low or step < 1:
            raise SlurmError(f"Invalid job array specification: {spec}")
        indices.update(range(low, high + 1, step))
    parallelism = None
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise SlurmError(f"Invalid job array specification: {spec}")
        parallelism = int(limit)
    return sorted(indices), parallelism


def collapse_indices(indices: Iterable[int]) -> str:
    """[2, 3, 4, 7] -> '2-4,7'."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def expand_hostlist(hostlist: str) -> list[str]:
    """``node[1-3,5],gpu7`` -> node1 node2 node3 node5 gpu7."""
    groups = [g for g in re.split(r",(?![^\[]*\])", hostlist) if g]
    hosts: list[str] = []
    for group in groups:
        names = [""]
        for text, inner in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            names = [name + text for name in names]
            if inner:
                suffixes = []
                for part in inner.split(","):
                    low, _, high = part.partition("-")
                    if high:
                        suffixes += [f"{i:0{len(low)}d}" for i in range(int(low), int(high) + 1)]
                    else:
                        suffixes.append(part)
                names = [name + suffix for name in names for suffix in suffixes]
        hosts += names
    return hosts


def expand_pattern(pattern: str, values: dict[str, str]) -> str:
    """Replace SLURM filename patterns (``%A``, ``%4a``, ``%%`` ...)."""

    def replace(match: re.Match[str]) -> str:
        width, key = match[1], match[2]
        if key == "%":
            return "%"
        value = values.get(key)
        if value is None:
            return match[0]
        if width and value.isdigit():
            value = value.zfill(int(width))
        return value

    return re.sub(r"%(\d*)([%AabjJNnstux])", replace, pattern)


def open_output(path: Path, truncate: bool) -> int:
    """An O_APPEND descriptor (several writers share the file), truncated first if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    if truncate:
        flags |= os.O_TRUNC
    return os.open(path, flags, 0o644)


def interpreter_argv(script: Path) -> list[str]:
    """Run the script through its ``#!`` line (like the kernel: one optional argument)."""
    with script.open() as handle:
        first = handle.readline().strip()
    interpreter, _, argument = first[2:].strip().partition(" ")
    argv = [interpreter]
    if argument.strip():
        argv.append(argument.strip())
    return [*argv, str(script)]


def become_subreaper() -> None:
    """Adopt orphaned descendants (so they are reaped here, never left as zombies)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


# ----------------------------------------------------------------------------- options


class Options:
    """Parsed command line options, in order; later occurrences win in ``get``."""

    def __init__(self, pairs: list[tuple[str, str | bool]] | None = None) -> None:
        self.pairs: list[tuple[str, str | bool]] = pairs if pairs is not None else []

    def get(self, name: str) -> str | bool | None:
        for key, value in reversed(self.pairs):
            if key == name:
                return value
        return None

    def text(self, name: str) -> str | None:
        value = self.get(name)
        return value if isinstance(value, str) else None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.pairs)

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name and isinstance(value, str)]


Short = dict[str, tuple[str, bool]]  # letter -> (long name, takes an argument)


def words(text: str) -> list[str]:
    return text.split()


def short_options(with_arg: str, flags: str = "") -> Short:
    """``"a:array o:output", "H:hold"`` -> {"a": ("array", True), ..., "H": ("hold", False)}."""
    table: Short = {}
    for text, takes_arg in ((with_arg, True), (flags, False)):
        for item in words(text):
            letter, _, name = item.partition(":")
            table[letter] = (name, takes_arg)
    return table


_LONG_WITH_ARG = frozenset(
    words(
        """account acctg-freq array batch begin bb bbf chdir cluster-constraint clusters
        comment constraint container container-id core-spec cores-per-socket cpu-bind cpu-freq
        cpus-per-gpu cpus-per-task deadline delay-boot dependency distribution epilog error
        exclude export export-file extra extra-node-info gid gpu-bind gpu-freq gpus
        gpus-per-node gpus-per-socket gpus-per-task gres gres-flags het-group input job-name
        jobid licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu
        mincpus mpi network nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu
        ntasks-per-node ntasks-per-socket open-mode output partition power prefer priority
        profile prolog qos relative reservation signal sockets-per-node switches task-epilog
        task-prolog thread-spec threads threads-per-core time time-min tmp tres-per-task uid
        wckey wrap"""
    )
)
_SHORT_WITH_ARG = """A:account B:extra-node-info C:constraint D:chdir F:nodefile G:gpus J:job-name
    L:licenses M:clusters N:nodes S:core-spec b:begin c:cpus-per-task d:dependency e:error
    i:input m:distribution n:ntasks o:output p:partition q:qos t:time w:nodelist x:exclude"""
_SHORT_FLAGS = "O:overcommit Q:quiet h:help k:no-kill s:oversubscribe v:verbose"
SBATCH_LONG_WITH_ARG = _LONG_WITH_ARG
SBATCH_SHORT = short_options(_SHORT_WITH_ARG + " a:array", _SHORT_FLAGS + " H:hold W:wait")
SRUN_LONG_WITH_ARG = _LONG_WITH_ARG | {"wait"}
SRUN_SHORT = short_options(
    _SHORT_WITH_ARG + " T:threads W:wait r:relative",
    _SHORT_FLAGS + " E:preserve-env I:immediate K:kill-on-bad-exit X:disable-status"
    " Z:no-allocate l:label u:unbuffered",
)
SACCT_LONG_WITH_ARG = frozenset(
    words("accounts clusters delimiter endtime format jobs name nodelist partition starttime")
    + words("state units user")
)
SACCT_SHORT = short_options(
    "A:accounts E:endtime M:clusters N:nodelist S:starttime j:jobs o:format r:partition"
    " s:state u:user",
    "D:duplicates L:allclusters P:parsable2 T:truncate X:allocations a:allusers b:brief"
    " l:long n:noheader p:parsable",
)
SQUEUE_LONG_WITH_ARG = frozenset(
    words("account clusters format iterate jobs name nodelist partition qos sort states user")
)
SQUEUE_SHORT = short_options(
    "A:account M:clusters S:sort i:iterate j:jobs n:name o:format p:partition q:qos"
    " t:states u:user w:nodelist",
    "a:all h:noheader l:long r:array v:verbose",
)
SCANCEL_LONG_WITH_ARG = frozenset(
    words("account clusters jobname name nodelist partition qos reservation sibling signal")
    + words("state user wckey")
)
SCANCEL_SHORT = short_options(
    "A:account M:clusters n:name p:partition q:qos s:signal t:state u:user w:nodelist",
    "H:hurry Q:quiet b:batch f:full i:interactive v:verbose",
)


def parse_options(
    argv: Sequence[str], short: Short, long_with_arg: frozenset[str], stop_at_positional: bool
) -> tuple[Options, list[str]]:
    """getopt-like parsing; returns the options and the positional arguments.

    With ``stop_at_positional`` everything from the first positional argument on is
    returned untouched (the script of sbatch, the command of srun).
    """
    options = Options()
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional.extend(argv[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if eq:
                options.pairs.append((name, value))
            elif name in long_with_arg:
                if i + 1 >= len(argv):
                    raise SlurmError(f"option '--{name}' requires an argument")
                i += 1
                options.pairs.append((name, argv[i]))
            else:
                options.pairs.append((name, True))
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                name, takes_arg = short.get(arg[j], (arg[j], False))
                if takes_arg:
                    value = arg[j + 1 :]
                    if not value:
                        if i + 1 >= len(argv):
                            raise SlurmError(f"option requires an argument -- '{arg[j]}'")
                        i += 1
                        value = argv[i]
                    options.pairs.append((name, value))
                    break
                options.pairs.append((name, True))
                j += 1
        elif stop_at_positional:
            positional.extend(argv[i:])
            break
        else:
            positional.append(arg)
        i += 1
    return options, positional


def split_ids(values: Iterable[str]) -> list[str]:
    """Split comma lists, keeping ``1234_[1,3]`` whole."""
    return [part for value in values for part in re.split(r",(?![^\[]*\])", value) if part]


# ----------------------------------------------------------------------------- storage


class JobStore:
    """One submitted job (an array or not): the folder ``FAKE_SLURM_DIR/jobs/<id>``."""

    def __init__(self, root: Path, job_id: int) -> None:
        self.root = root
        self.job_id = job_id
        self.dir = root / "jobs" / str(job_id)
        self._job: dict[str, Any] | None = None

    @property
    def tasks_dir(self) -> Path:
        return self.dir / "tasks"

    @property
    def supervisor_lock(self) -> Path:
        return self.dir / "supervisor.lock"

    @property
    def script(self) -> Path:
        return self.dir / "script"

    def exists(self) -> bool:
        return (self.dir / "job.json").is_file()

    def job(self) -> dict[str, Any]:
        if self._job is None:
            self._job = read_json(self.dir / "job.json")
        return self._job

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self.dir / "lock")

    def tasks(self) -> list[Task]:
        tasks = [read_json(path) for path in self.tasks_dir.glob("*.json")]
        return sorted(tasks, key=lambda t: t["array_task_id"] or 0)

    def task(self, key: str) -> Task:
        return read_json(self.tasks_dir / f"{key}.json")

    def write_task(self, task: Task) -> None:
        write_json(self.tasks_dir / f"{task['key']}.json", task)

    def supervised(self) -> bool:
        """Whether a supervisor holds the job (call with the job lock held)."""
        fd = os.open(self.supervisor_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def all_jobs(root: Path) -> list[JobStore]:
    jobs = root / "jobs"
    ids = sorted(int(p.name) for p in jobs.iterdir() if p.name.isdigit()) if jobs.is_dir() else []
    return [JobStore(root, job_id) for job_id in ids]


def resolve(root: Path, spec: str) -> list[tuple[JobStore, set[str] | None]]:
    """A job id spec -> (job, task keys or None for all); empty when unknown."""
    match = re.fullmatch(r"(\d+)(?:_(\d+)|_\[([^\]]*)\])?", spec.strip())
    if match is None:
        return []
    number = int(match[1])
    store = JobStore(root, number)
    if match[2] is not None:
        key = f"{number}_{int(match[2])}"
        return [(store, {key})] if (store.tasks_dir / f"{key}.json").is_file() else []
    if match[3] is not None:
        indices, _ = parse_array(match[3])
        keys = {f"{number}_{i}" for i in indices} & {p.stem for p in store.tasks_dir.glob("*.json")}
        return [(store, keys)] if keys else []
    if store.exists():
        return [(store, None)]
    # the own job id of an array task (like SLURM's JobIDRaw)
    for candidate in reversed(all_jobs(root)):
        if candidate.job_id < number:
            if number - candidate.job_id < candidate.job()["num_tasks"]:
                for task in candidate.tasks():
                    if task["job_id"] == number:
                        return [(candidate, {task["key"]})]
            break
    return []


def allocate_job_ids(root: Path, count: int) -> int:
    with flocked(root / "counter.lock"):
        counter = root / "counter"
        if counter.is_file():
            first = int(counter.read_text())
        else:
            configured = os.environ.get("FAKE_SLURM_FIRST_JOB_ID")
            first = int(configured) if configured else random.randint(10_000, 999_999)
        tmp = counter.with_name(f".counter.{os.getpid()}.tmp")
        tmp.write_text(f"{first + count}\n")
        os.replace(tmp, counter)
    return first


def reconcile(store: JobStore) -> None:
    """Unfinished tasks of a job without a living supervisor can never end: NODE_FAIL."""
    if all(task["state"] not in ACTIVE_STATES for task in store.tasks()):
        return
    with store.lock():
        if store.supervised():
            return
        now = time.time()
        for task in store.tasks():
            if task["state"] in ACTIVE_STATES:
                node_fail(store.root, task, now, "supervisor gone")
                store.write_task(task)


def node_fail(root: Path, task: Task, now: float, reason: str) -> None:
    """Kill what is left of a task whose supervisor is gone; its state becomes NODE_FAIL."""
    for pid in task_processes(root, task["key"]):
        signal_process(pid, signal.SIGKILL)
    for step in task["steps"]:
        signal_group(step["pgid"], signal.SIGKILL)
        if step["state"] == "RUNNING":
            step.update(state="CANCELLED", end_time=now, signal=signal.SIGKILL)
    signal_group(task["pid"], signal.SIGKILL)
    if task["pid"] is not None:
        task.update(exit_code=0, signal=signal.SIGKILL)
    task.update(state="NODE_FAIL", end_time=now, pid=None, reason=reason)


def spawn_supervisor(store: JobStore) -> None:
    """Start the job's supervisor unless one lives (call with the job lock held)."""
    fd = os.open(store.supervisor_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a supervisor is alive and will see the new pending tasks
        launch_supervisor(store, fd)
    finally:
        os.close(fd)


def launch_supervisor(store: JobStore, lock_fd: int) -> None:
    """Start a detached supervisor that inherits the (locked) supervisor lock: the lock
    never is free while the job has a supervisor, so readers never see it unsupervised."""
    # a job submitted from a job is independent of it: not one of its processes
    env = {key: value for key, value in os.environ.items() if key != "FAKE_SLURM_TASK"}
    with open(store.dir / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [
                sys.executable,
                "-S",
                str(Path(__file__).absolute()),
                "_supervise",
                str(store.root),
                str(store.job_id),
                str(lock_fd),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=store.dir,
            env=env,
            start_new_session=True,
            pass_fds=(lock_fd,),
        )


def new_task(key: str, job_id: int, array_job_id: int | None, index: int | None) -> Task:
    now = time.time()
    return {
        "key": key,
        "job_id": job_id,
        "array_job_id": array_job_id,
        "array_task_id": index,
        "state": "PENDING",
        "reason": None,
        "pid": None,
        "restart_count": 0,
        "exit_code": None,
        "signal": None,
        "submit_time": now,
        "queued_at": now,
        "start_time": None,
        "end_time": None,
        "cancel_requested": False,
        "requeue_requested": False,
        "kill_deadline": None,
        "steps": [],
        "next_step_id": 0,
        "history": [],
    }


def terminate(task: Task, now: float, immediate: bool = False) -> None:
    """SIGCONT + SIGTERM to the batch process group (srun passes them to its step);
    the supervisor sends SIGKILL at ``kill_deadline``."""
    task["kill_deadline"] = now if immediate else now + kill_wait_s()
    for step in task["steps"]:
        if step["state"] == "RUNNING":
            signal_group(step["pgid"], signal.SIGCONT)
    signal_group(task["pid"], signal.SIGCONT)
    signal_group(task["pid"], signal.SIGKILL if immediate else signal.SIGTERM)
    if immediate:
        for step in task["steps"]:
            if step["state"] == "RUNNING":
                signal_group(step["pgid"], signal.SIGKILL)


# ----------------------------------------------------------------------------- sbatch


def script_directives(text: str) -> list[str]:
    """The option tokens of the ``#SBATCH`` lines before the first command."""
    tokens: list[str] = []
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            body = stripped[len("#SBATCH") :]
            if body and not body[0].isspace():
                continue
            tokens.extend(shlex.split(body, comments=True))
        elif stripped and not stripped.startswith("#"):
            break
    return tokens


def _minimum_count(value: str | None) -> int:
    if not value:
        return 1
    match = re.match(r"\d+", value)
    return int(match[0]) if match else 1


def cmd_sbatch(argv: list[str]) -> int:
    root = state_root()
    cli, rest = parse_options(argv, SBATCH_SHORT, SBATCH_LONG_WITH_ARG, stop_at_positional=True)
    wrap = cli.text("wrap")
    if wrap is not None:
        text = f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{wrap}\n"
        script_args, default_name = list(rest), "wrap"
    elif rest:
        try:
            text = Path(rest[0]).read_text()
        except OSError as exc:
            raise SlurmError(f"Unable to open file {rest[0]}: {exc.strerror}") from None
        script_args, default_name = rest[1:], Path(rest[0]).name
    else:
        text, script_args, default_name = sys.stdin.read(), [], "sbatch"
    if not text.startswith("#!"):
        raise SlurmError(
            "This does not look like a batch script.  The first line must start with #! "
            "followed by the path to an interpreter.\nFor instance: #!/bin/sh"
        )
    directives, _ = parse_options(
        script_directives(text), SBATCH_SHORT, SBATCH_LONG_WITH_ARG, stop_at_positional=False
    )
    opts = Options(directives.pairs + cli.pairs)  # the command line wins

    for name in ("nodes", "ntasks", "ntasks-per-node"):
        if _minimum_count(opts.text(name)) > 1:
            raise SlurmError(
                "Batch job submission failed: Requested node configuration is not available "
                f"(the fake cluster runs one task on one node; got --{name}={opts.text(name)})"
            )
    for name in ("dependency", "hold", "begin", "export"):
        if opts.has(name):
            print(f"sbatch: warning: fake SLURM ignores --{name}", file=sys.stderr)

    array_spec = opts.text("array")
    indices: list[int | None]
    if array_spec is not None:
        array_indices, parallelism = parse_array(array_spec)
        indices = list(array_indices)
    else:
        indices, parallelism = [None], None
    is_array = array_spec is not None
    open_mode = opts.text("open-mode")
    if open_mode is not None:
        open_mode = "append" if open_mode.lower().startswith("a") else "truncate"
    workdir = Path(opts.text("chdir") or os.getcwd()).absolute()
    cpus = opts.text("cpus-per-task")

    first = allocate_job_ids(root, len(indices))
    store = JobStore(root, first)
    tmp_dir = root / "jobs" / f".{first}.tmp"
    (tmp_dir / "tasks").mkdir(parents=True)
    job = {
        "job_id": first,
        "is_array": is_array,
        "array_spec": array_spec,
        "indices": indices,
        "num_tasks": len(indices),
        "parallelism": parallelism,
        "name": opts.text("job-name") or default_name,
        "output": opts.text("output") or ("slurm-%A_%a.out" if is_array else "slurm-%j.out"),
        "error": opts.text("error"),
        "open_mode": open_mode,
        "workdir": str(workdir),
        "script_args": script_args,
        "cpus_per_task": cpus,
        "submit_time": time.time(),
        "submit_host": socket.gethostname(),
        "user": user_name(),
        "options": [[key, value] for key, value in opts.pairs],
    }
    write_json(tmp_dir / "job.json", job)
    (tmp_dir / "script").write_text(text)
    (tmp_dir / "script").chmod(0o755)
    for offset, index in enumerate(indices):
        key = f"{first}_{index}" if is_array else str(first)
        task = new_task(key, first + offset, first if is_array else None, index)
        write_json(tmp_dir / "tasks" / f"{key}.json", task)
    # take the supervisor lock before the job becomes visible, hand it to the supervisor
    fd = os.open(tmp_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp_dir, store.dir)
        launch_supervisor(store, fd)
    finally:
        os.close(fd)

    print(first if cli.has("parsable") else f"Submitted batch job {first}", flush=True)
    if cli.has("wait"):
        while True:
            reconcile(store)
            tasks = store.tasks()
            if all(t["state"] in FINAL_STATES and t["end_time"] is not None for t in tasks):
                return 0 if all(t["state"] == "COMPLETED" for t in tasks) else 1
            time.sleep(0.2)
    return 0


# ----------------------------------------------------------------------------- supervisor


class Running:
    """A task's batch script started by the supervisor."""

    def __init__(self, key: str, popen: subprocess.Popen[bytes]) -> None:
        self.key = key
        self.popen = popen
        self.status: int | None = None  # exit status once reaped (negative: a signal)
        self.killed_at: float | None = None
        self.groups: set[int] = {popen.pid}  # process groups: the batch script's, the steps'


class Supervisor:
    """Runs the tasks of one job, at most ``parallelism`` at once, until none is left."""

    def __init__(self, store: JobStore, lock_fd: int) -> None:
        self.store = store
        self.job = store.job()
        self.lock_fd = lock_fd
        self.running: dict[str, Running] = {}
        self.by_pid: dict[int, Running] = {}
        self.stop_signal: int | None = None
        self.timeout = 0.5
        limit = self.job["parallelism"] or math.inf
        cap = os.environ.get("FAKE_SLURM_MAX_RUNNING")
        if cap:
            limit = min(limit, max(1, int(cap)))
        self.limit = limit
        self.wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._on_child)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        pass  # the wakeup fd interrupts the wait

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum

    def log(self, message: str) -> None:
        print(f"[{fmt_time(time.time())}] {message}", flush=True)

    def run(self) -> int:
        become_subreaper()
        self.log(f"supervising job {self.store.job_id} ({self.job['num_tasks']} task(s))")
        while True:
            self.reap()
            if self.stop_signal is not None or not self.store.exists():
                self.shutdown()
                return 0
            try:
                with self.store.lock():
                    tasks = {task["key"]: task for task in self.store.tasks()}
                    for key in self.step(tasks):
                        self.store.write_task(tasks[key])
                    idle = not self.running and all(
                        t["state"] not in ACTIVE_STATES for t in tasks.values()
                    )
                    if idle:
                        os.close(self.lock_fd)  # released while the job lock is held
                        self.log("all tasks done")
                        return 0
            except OSError as exc:  # the state folder was removed under us
                self.log(f"state folder unusable ({exc}); stopping")
                self.shutdown()
                return 0
            self.wait(self.timeout)

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self.wakeup_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup_r, 512):
                pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.status = os.waitstatus_to_exitcode(status)
                run.popen.returncode = run.status

    def step(self, tasks: dict[str, Task]) -> set[str]:
        """One scheduling pass (job lock held); returns the keys of changed tasks."""
        changed: set[str] = set()
        now = time.time()
        self.timeout = 0.5
        for key, run in list(self.running.items()):
            task = tasks[key]
            run.groups.update(step["pgid"] for step in task["steps"])
            groups = [run.popen.pid] + [s["pgid"] for s in task["steps"] if s["state"] == "RUNNING"]
            deadline = task.get("kill_deadline")
            if run.status is None:  # the batch script still runs
                if deadline is not None:
                    if now >= deadline and run.killed_at is None:
                        for pgid in groups:
                            signal_group(pgid, signal.SIGKILL)
                        run.killed_at = now
                    self.timeout = min(self.timeout, max(0.01, deadline - now))
                continue
            # the batch script is over: SLURM ends the job, killing what is left of it
            # (after the grace period when the job is being cancelled or requeued)
            alive = [pgid for pgid in groups if group_alive(pgid)]
            strays = [] if alive else task_processes(self.store.root, key)
            if alive or strays:
                terminating = task["cancel_requested"] or task["requeue_requested"]
                kill_at = deadline if terminating and deadline is not None else now
                if now >= kill_at:
                    for pgid in alive:
                        signal_group(pgid, signal.SIGKILL)
                    for pid in strays:
                        signal_process(pid, signal.SIGKILL)
                    run.killed_at = run.killed_at or now
                if run.killed_at is None or now - run.killed_at < GIVE_UP_AFTER_KILL_S:
                    self.timeout = 0.05
                    continue
            self.finish(task, run, now)
            changed.add(key)
            del self.running[key]
        for key, task in tasks.items():
            if key in self.running:
                continue
            if task["state"] in ("RUNNING", "REQUEUED"):  # left by a supervisor that died
                node_fail(self.store.root, task, now, "supervisor gone")
                changed.add(key)
            elif task["state"] in FINAL_STATES and task["end_time"] is None:
                task["end_time"] = now
                changed.add(key)
        pending = sorted(
            (t for t in tasks.values() if t["state"] == "PENDING" and t["key"] not in self.running),
            key=lambda t: (t["queued_at"], t["array_task_id"] or 0),
        )
        for task in pending:
            if len(self.running) >= self.limit:
                break
            self.start(task, now)
            changed.add(task["key"])
        return changed

    def finish(self, task: Task, run: Running, now: float) -> None:
        status = run.status if run.status is not None else -signal.SIGKILL
        exit_code, sig = (status, 0) if status >= 0 else (0, -status)
        for step in task["steps"]:
            if step["state"] == "RUNNING":
                step.update(
                    state="CANCELLED" if task["cancel_requested"] else "FAILED",
                    end_time=now,
                    exit_code=0,
                    signal=signal.SIGKILL,
                )
        record = {
            "start_time": task["start_time"],
            "end_time": now,
            "exit_code": exit_code,
            "signal": sig,
            "pid": run.popen.pid,
        }
        task.update(exit_code=exit_code, signal=sig, pid=None, kill_deadline=None)
        if task["state"] == "PENDING":  # requeued (scontrol) after it had been finished
            record["outcome"] = "REQUEUED"
        elif task["cancel_requested"] or task["state"] in FINAL_STATES:
            record["outcome"] = task["state"]
            task["end_time"] = task["end_time"] or now
        elif task["requeue_requested"]:
            record["outcome"] = "REQUEUED"
            task.update(
                state="PENDING",
                restart_count=task["restart_count"] + 1,
                requeue_requested=False,
                queued_at=now,
                start_time=None,
                end_time=None,
                steps=[],
            )
        else:
            task["state"] = "COMPLETED" if status == 0 else "FAILED"
            task["end_time"] = now
            record["outcome"] = task["state"]
        task["history"].append(record)
        self.log(f"task {task['key']} ended: {record['outcome']} (status {status})")

    def task_env(self, task: Task) -> dict[str, str]:
        job = self.job
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
            and key != "FAKE_SLURM_TASK"
        }
        job_id = str(task["job_id"])
        env.update(
            {
                "FAKE_SLURM_DIR": str(self.store.root),
                "FAKE_SLURM_TASK": task["key"],
                "SLURM_CLUSTER_NAME": CLUSTER,
                "SLURM_GTIDS": "0",
                "SLURM_JOBID": job_id,
                "SLURM_JOB_ACCOUNT": ACCOUNT,
                "SLURM_JOB_ID": job_id,
                "SLURM_JOB_NAME": job["name"],
                "SLURM_JOB_NODELIST": NODE,
                "SLURM_JOB_NUM_NODES": "1",
                "SLURM_JOB_PARTITION": PARTITION,
                "SLURM_JOB_UID": str(os.getuid()),
                "SLURM_JOB_USER": job["user"],
                "SLURM_LOCALID": "0",
                "SLURM_NNODES": "1",
                "SLURM_NODEID": "0",
                "SLURM_NODELIST": NODE,
                "SLURM_NPROCS": "1",
                "SLURM_NTASKS": "1",
                "SLURM_PROCID": "0",
                "SLURM_SUBMIT_DIR": job["workdir"],
                "SLURM_SUBMIT_HOST": job["submit_host"],
                "SLURM_TASKS_PER_NODE": "1",
                "SLURMD_NODENAME": NODE,
            }
        )
        if job["cpus_per_task"]:
            env["SLURM_CPUS_PER_TASK"] = str(job["cpus_per_task"])
        if job["open_mode"]:
            env["SLURM_OPEN_MODE"] = "a" if job["open_mode"] == "append" else "t"
        if job["is_array"]:
            indices = job["indices"]
            gaps = {b - a for a, b in itertools.pairwise(indices)}
            env.update(
                {
                    "SLURM_ARRAY_JOB_ID": str(task["array_job_id"]),
                    "SLURM_ARRAY_TASK_ID": str(task["array_task_id"]),
                    "SLURM_ARRAY_TASK_COUNT": str(len(indices)),
                    "SLURM_ARRAY_TASK_MIN": str(min(indices)),
                    "SLURM_ARRAY_TASK_MAX": str(max(indices)),
                    "SLURM_ARRAY_TASK_STEP": str(gaps.pop() if len(gaps) == 1 else 1),
                }
            )
        if task["restart_count"]:
            env["SLURM_RESTART_COUNT"] = str(task["restart_count"])
        return env

    def start(self, task: Task, now: float) -> None:
        job = self.job
        values = pattern_values(
            array_job_id=task["array_job_id"] or task["job_id"],
            array_task_id=task["array_task_id"],
            job_id=task["job_id"],
            name=job["name"],
            step="batch",
        )
        workdir = Path(job["workdir"])
        # SLURM's truncate mode applies to the first run; a requeued run appends
        truncate = job["open_mode"] != "append" and task["restart_count"] == 0
        fds: list[int] = []
        try:
            stdout = open_output(workdir / expand_pattern(job["output"], values), truncate)
            fds.append(stdout)
            stderr = subprocess.STDOUT
            if job["error"]:
                error_path = workdir / expand_pattern(job["error"], values)
                if error_path != workdir / expand_pattern(job["output"], values):
                    stderr = open_output(error_path, truncate)
                    fds.append(stderr)
            popen = subprocess.Popen(
                [*interpreter_argv(self.store.script), *job["script_args"]],
                cwd=workdir,
                env=self.task_env(task),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self.log(f"task {task['key']} could not start: {exc}")
            task.update(state="FAILED", start_time=now, end_time=now, exit_code=1, signal=0)
            task["history"].append({"start_time": now, "end_time": now, "outcome": "FAILED"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        run = Running(task["key"], popen)
        self.running[task["key"]] = run
        self.by_pid[popen.pid] = run
        task.update(
            state="RUNNING",
            pid=popen.pid,
            start_time=now,
            end_time=None,
            exit_code=None,
            signal=None,
            steps=[],
            next_step_id=0,
            kill_deadline=None,
            cancel_requested=False,
            requeue_requested=False,
        )
        self.log(f"task {task['key']} started (pid {popen.pid}, restart {task['restart_count']})")

    def shutdown(self) -> None:
        """Stopped (signal) or state folder gone: kill everything, mark NODE_FAIL."""
        self.log(f"shutting down (signal {self.stop_signal})")
        for run in self.running.values():
            for pgid in run.groups:
                signal_group(pgid, signal.SIGKILL)
            for pid in task_processes(self.store.root, run.key):
                signal_process(pid, signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError), self.store.lock():
            now = time.time()
            for task in self.store.tasks():
                if task["state"] in ACTIVE_STATES:
                    node_fail(self.store.root, task, now, "supervisor stopped")
                elif task["end_time"] is None:
                    task.update(end_time=now, pid=None)
                else:
                    continue
                self.store.write_task(task)
        deadline = time.time() + 2
        while self.by_pid and time.time() < deadline:
            self.reap()
            time.sleep(0.02)


def pattern_values(
    array_job_id: int, array_task_id: int | None, job_id: int, name: str, step: str
) -> dict[str, str]:
    return {
        "A": str(array_job_id),
        "a": NO_ARRAY_INDEX if array_task_id is None else str(array_task_id),
        "b": "0" if array_task_id is None else str(array_task_id % 10),
        "j": str(job_id),
        "J": str(job_id) if step == "batch" else f"{job_id}.{step}",
        "N": NODE,
        "n": "0",
        "s": step,
        "t": "0",
        "u": user_name(),
        "x": name,
    }


def cmd_supervise(argv: list[str]) -> int:
    root, job_id, lock_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    return Supervisor(JobStore(root, job_id), lock_fd).run()


# ----------------------------------------------------------------------------- srun


def _current_task() -> tuple[JobStore, str] | None:
    key = os.environ.get("FAKE_SLURM_TASK")
    root = os.environ.get("FAKE_SLURM_DIR")
    if not key or not root:
        return None
    store = JobStore(Path(root).absolute(), int(key.split("_")[0]))
    return (store, key) if store.exists() else None


def cmd_srun(argv: list[str]) -> int:
    opts, command = parse_options(argv, SRUN_SHORT, SRUN_LONG_WITH_ARG, stop_at_positional=True)
    if not command:
        raise SlurmError("No command given to execute.")
    for name in ("nodes", "ntasks", "ntasks-per-node"):
        if _minimum_count(opts.text(name)) > 1:
            raise SlurmError(
                f"fake srun runs exactly one task on one node (got --{name}={opts.text(name)})"
            )
    current = _current_task()
    step_id = 0
    if current is not None:
        store, key = current
        try:
            with store.lock():
                task = store.task(key)
                step_id = task["next_step_id"]
                task["next_step_id"] = step_id + 1
                store.write_task(task)
        except OSError as exc:  # state folder gone: run the command all the same
            print(f"srun: warning: cannot record the step: {exc}", file=sys.stderr)
            current = None
    env = dict(os.environ)
    job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
    array_task = env.get("SLURM_ARRAY_TASK_ID")
    values = pattern_values(
        array_job_id=int(env.get("SLURM_ARRAY_JOB_ID") or job_id),
        array_task_id=int(array_task) if array_task else None,
        job_id=job_id,
        name=opts.text("job-name") or env.get("SLURM_JOB_NAME", "srun"),
        step=str(step_id),
    )
    if current is not None:
        env.update(
            {
                "SLURM_STEP_ID": str(step_id),
                "SLURM_STEPID": str(step_id),
                "SLURM_STEP_NODELIST": NODE,
                "SLURM_STEP_NUM_NODES": "1",
                "SLURM_STEP_NUM_TASKS": "1",
                "SLURM_STEP_TASKS_PER_NODE": "1",
                "SLURM_PROCID": "0",
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": "0",
            }
        )
    mode = opts.text("open-mode") or env.get("SLURM_OPEN_MODE") or "truncate"
    truncate = not mode.lower().startswith("a")
    cwd = opts.text("chdir")
    base = Path(cwd) if cwd else Path.cwd()
    fds: list[int] = []

    def target(pattern: str | None) -> int | None:
        if pattern is None:
            return None
        if pattern.lower() == "none":
            return subprocess.DEVNULL
        fd = open_output(base / expand_pattern(pattern, values), truncate)
        fds.append(fd)
        return fd

    output, error = opts.text("output"), opts.text("error")
    stdout = target(output)
    stderr = target(error) if error is not None and error != output else None
    if stderr is None and output is not None:
        stderr = subprocess.STDOUT  # like srun: stderr follows a given --output

    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
        else:
            signal_group(child.pid, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    try:
        child = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=stdout, stderr=stderr, start_new_session=True
        )
    except OSError as exc:
        print(f"slurmstepd: error: execve(): {command[0]}: {exc.strerror}", file=sys.stderr)
        print(f"srun: error: {NODE}: task 0: Exited with exit code 2", file=sys.stderr)
        return 2
    finally:
        for fd in fds:
            os.close(fd)
    if current is not None:
        store, key = current
        with contextlib.suppress(OSError), store.lock():
            task = store.task(key)
            task["steps"].append(
                {
                    "step_id": step_id,
                    "pgid": child.pid,
                    "srun_pid": os.getpid(),
                    "command": os.path.basename(command[0]),
                    "state": "RUNNING",
                    "start_time": time.time(),
                    "end_time": None,
                    "exit_code": None,
                    "signal": None,
                }
            )
            store.write_task(task)
    for signum in pending:
        signal_group(child.pid, signum)
    status = child.wait()
    signal_group(child.pid, signal.SIGKILL)  # what is left of the step ends with it
    if current is not None:
        store, key = current
        with contextlib.suppress(OSError), store.lock():
            task = store.task(key)
            for step in task["steps"]:
                if step["step_id"] == step_id and step["pgid"] == child.pid:
                    if status == 0:
                        state = "COMPLETED"
                    else:
                        state = "CANCELLED" if task["cancel_requested"] else "FAILED"
                    step.update(
                        state=state,
                        end_time=time.time(),
                        exit_code=max(status, 0),
                        signal=max(-status, 0),
                    )
            store.write_task(task)
    if status > 0:
        print(f"srun: error: {NODE}: task 0: Exited with exit code {status}", file=sys.stderr)
        return status
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        print(f"srun: error: {NODE}: task 0: killed by {name}", file=sys.stderr)
        return 128 - status
    return 0


# ----------------------------------------------------------------------------- sacct


SACCT_FIELDS = {
    name.lower(): name
    for name in words(
        "Account AllocCPUS AllocNodes Cluster Elapsed End ExitCode JobID JobIDRaw JobName "
        "NNodes NTasks NodeList Partition Start State Submit UID User WorkDir"
    )
}
SACCT_WIDTHS = {"JobID": 12, "JobIDRaw": 12, "ExitCode": 8, "NodeList": 15, "WorkDir": 30}
SACCT_WIDTHS.update({name: 19 for name in ("Submit", "Start", "End")})


def display_state(task: Task) -> str:
    if task["state"] == "CANCELLED":
        return f"CANCELLED by {os.getuid()}"
    return str(task["state"])


def sacct_rows(store: JobStore, keys: set[str] | None, allocations: bool) -> list[dict[str, str]]:
    job = store.job()
    tasks = [t for t in store.tasks() if keys is None or t["key"] in keys]
    now = time.time()
    rows: list[dict[str, str]] = []

    def row(task: Task, suffix: str, name: str, state: str, partition: str) -> dict[str, str]:
        start, end = task["start_time"], task["end_time"]
        elapsed = ((end or now) - start) if start is not None else 0.0
        code, sig = task["exit_code"] or 0, task["signal"] or 0
        return {
            "Account": ACCOUNT,
            "AllocCPUS": str(job["cpus_per_task"] or 1) if start is not None else "0",
            "AllocNodes": "1" if start is not None else "0",
            "Cluster": CLUSTER,
            "Elapsed": fmt_elapsed(elapsed),
            "End": fmt_time(end),
            "ExitCode": f"{code}:{sig}",
            "JobID": task["key"] + suffix,
            "JobIDRaw": str(task["job_id"]) + suffix,
            "JobName": name,
            "NNodes": "1",
            "NTasks": "1" if suffix else "",
            "NodeList": NODE if start is not None else "None assigned",
            "Partition": partition,
            "Start": fmt_time(start),
            "State": state,
            "Submit": fmt_time(task["submit_time"]),
            "UID": str(os.getuid()),
            "User": job["user"] if not suffix else "",
            "WorkDir": job["workdir"],
        }

    # never-started pending tasks of an array are one record in SLURM: 1234_[2-5%2]
    unsplit = [t for t in tasks if job["is_array"] and t["state"] == "PENDING" and not t["history"]]
    if keys is None and len(unsplit) > 1:
        throttle = f"%{job['parallelism']}" if job["parallelism"] else ""
        indices = collapse_indices(t["array_task_id"] for t in unsplit)
        record = row(unsplit[0], "", job["name"], "PENDING", PARTITION)
        record["JobID"] = f"{job['job_id']}_[{indices}{throttle}]"
        record["JobIDRaw"] = str(unsplit[0]["job_id"])
        tasks = [t for t in tasks if t not in unsplit]
        rows.append(record)
    for task in tasks:
        rows.append(row(task, "", job["name"], display_state(task), PARTITION))
        if allocations or task["start_time"] is None:
            continue
        if task["pid"] is not None:
            batch_state = "RUNNING"
        elif task["state"] == "CANCELLED":
            batch_state = "CANCELLED"
        elif task["exit_code"] == 0 and not task["signal"]:
            batch_state = "COMPLETED"
        else:
            batch_state = "FAILED"
        rows.append(row(task, ".batch", "batch", batch_state, ""))
        for step in task["steps"]:
            step_row = row(task, f".{step['step_id']}", step["command"], step["state"], "")
            step_row["ExitCode"] = f"{step['exit_code'] or 0}:{step['signal'] or 0}"
            step_row["Start"] = fmt_time(step["start_time"])
            step_row["End"] = fmt_time(step["end_time"])
            rows.append(step_row)
    return rows


def cmd_sacct(argv: list[str]) -> int:
    root = state_root()
    opts, positional = parse_options(argv, SACCT_SHORT, SACCT_LONG_WITH_ARG, False)
    if positional:
        raise SlurmError(f"Unknown arguments: {' '.join(positional)}")
    if opts.has("brief"):
        default_format = "JobID,State,ExitCode"
    else:
        default_format = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"
    formats = split_ids(opts.all("format")) or default_format.split(",")
    fields: list[tuple[str, int | None]] = []
    for spec in formats:
        name, _, width = spec.partition("%")
        canonical = SACCT_FIELDS.get(name.lower())
        if canonical is None:
            raise SlurmError(f'Invalid field requested: "{name}"')
        fields.append((canonical, int(width) if width.isdigit() else None))
    if opts.has("jobs"):
        targets = [target for spec in split_ids(opts.all("jobs")) for target in resolve(root, spec)]
    else:
        targets = [(store, None) for store in all_jobs(root)]
    wanted_states = {s.upper() for s in split_ids(opts.all("state"))}
    rows: list[dict[str, str]] = []
    for store, keys in targets:
        reconcile(store)
        rows += sacct_rows(store, keys, opts.has("allocations"))
    if wanted_states:
        rows = [
            r
            for r in rows
            if r["State"].split()[0] in wanted_states
            or COMPACT_STATES.get(r["State"].split()[0]) in wanted_states
        ]
    names = [name for name, _ in fields]
    lines: list[str] = []
    if opts.has("parsable2") or opts.has("parsable"):
        delimiter = opts.text("delimiter") or "|"
        end = delimiter if opts.has("parsable") else ""
        if not opts.has("noheader"):
            lines.append(delimiter.join(names) + end)
        lines += [delimiter.join(r[name] for name in names) + end for r in rows]
    else:
        widths = [width or max(SACCT_WIDTHS.get(name, 10), 1) for name, width in fields]

        def cell(value: str, width: int) -> str:
            return (value if len(value) <= width else value[: width - 1] + "+").rjust(width)

        if not opts.has("noheader"):
            lines.append(" ".join(cell(n, w) for n, w in zip(names, widths, strict=True)) + " ")
            lines.append(" ".join("-" * w for w in widths) + " ")
        for r in rows:
            lines.append(" ".join(cell(r[n], w) for n, w in zip(names, widths, strict=True)) + " ")
    if lines:
        print("\n".join(lines), flush=True)
    return 0


# ----------------------------------------------------------------------------- squeue


SQUEUE_HEADERS = {
    "i": "JOBID",
    "A": "JOBID",
    "F": "ARRAY_JOB_ID",
    "K": "ARRAY_TASK_ID",
    "j": "NAME",
    "T": "STATE",
    "t": "ST",
    "u": "USER",
    "P": "PARTITION",
    "M": "TIME",
    "D": "NODES",
    "C": "CPUS",
    "R": "NODELIST(REASON)",
    "N": "NODELIST",
    "r": "REASON",
    "l": "TIME_LIMIT",
    "V": "SUBMIT_TIME",
    "S": "START_TIME",
}
SQUEUE_DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"


def squeue_state(task: Task) -> str | None:
    """The squeue state of a task, None when squeue does not list it any more."""
    if task["state"] in ACTIVE_STATES:
        return str(task["state"])
    if task["end_time"] is None and task["pid"] is not None:
        return "COMPLETING"  # cancelled, its processes are still being terminated
    return None


def squeue_records(store: JobStore, keys: set[str] | None, expand: bool) -> list[dict[str, str]]:
    job = store.job()
    now = time.time()
    tasks = [t for t in store.tasks() if keys is None or t["key"] in keys]
    running = sum(1 for t in tasks if t["state"] in ("RUNNING", "REQUEUED"))
    throttled = job["parallelism"] is not None and running >= job["parallelism"]
    records: list[dict[str, str]] = []

    def record(task: Task, state: str, job_id_text: str) -> dict[str, str]:
        started = task["start_time"] is not None
        reason = "JobArrayTaskLimit" if throttled else "None"
        return {
            "i": job_id_text,
            "A": str(task["job_id"]),
            "F": str(task["array_job_id"] or task["job_id"]),
            "K": "N/A" if task["array_task_id"] is None else str(task["array_task_id"]),
            "j": job["name"],
            "T": state,
            "t": COMPACT_STATES.get(state, state[:2]),
            "u": job["user"],
            "P": PARTITION,
            "M": fmt_elapsed(now - task["start_time"], compact=True) if started else "0:00",
            "D": "1",
            "C": str(job["cpus_per_task"] or 1),
            "R": NODE if state != "PENDING" else f"({reason})",
            "N": NODE if state != "PENDING" else "",
            "r": "None" if state != "PENDING" else reason,
            "l": "UNLIMITED",
            "V": fmt_time(task["submit_time"]),
            "S": fmt_time(task["start_time"]) if started else "N/A",
        }

    # never-started pending tasks of an array are one record in SLURM: 1234_[4-7%2]
    pending = [t for t in tasks if t["state"] == "PENDING" and not t["history"]]
    if job["is_array"] and not expand and keys is None and len(pending) > 1:
        throttle = f"%{job['parallelism']}" if job["parallelism"] else ""
        indices = collapse_indices(t["array_task_id"] for t in pending)
        records.append(record(pending[0], "PENDING", f"{job['job_id']}_[{indices}{throttle}]"))
        records[-1]["K"] = f"[{indices}{throttle}]"
        tasks = [t for t in tasks if t not in pending]
    for task in tasks:
        state = squeue_state(task)
        if state is not None:
            records.append(record(task, state, task["key"]))
    return records


def render_squeue(fmt: str, record: dict[str, str] | None) -> str:
    def replace(match: re.Match[str]) -> str:
        right, width, key = match[1], match[2], match[3]
        if key == "%":
            return "%"
        value = SQUEUE_HEADERS.get(key, key) if record is None else record.get(key, "")
        if width:
            value = value[: int(width)]
            value = value.rjust(int(width)) if right else value.ljust(int(width))
        return value

    return re.sub(r"%(\.?)(\d*)([A-Za-z%])", replace, fmt).rstrip()


def cmd_squeue(argv: list[str]) -> int:
    root = state_root()
    opts, positional = parse_options(argv, SQUEUE_SHORT, SQUEUE_LONG_WITH_ARG, False)
    if positional:
        raise SlurmError(f"Unknown arguments: {' '.join(positional)}")
    fmt = opts.text("format") or SQUEUE_DEFAULT_FORMAT
    if opts.has("jobs"):
        specs = split_ids(opts.all("jobs"))
        targets = [target for spec in specs for target in resolve(root, spec)]
        if not targets:
            raise SlurmError("slurm_load_jobs error: Invalid job id specified")
    else:
        targets = [(store, None) for store in all_jobs(root)]
    names = set(split_ids(opts.all("name")))
    states = {s.upper() for s in split_ids(opts.all("states"))}
    lines = [] if opts.has("noheader") else [render_squeue(fmt, None)]
    for store, keys in targets:
        reconcile(store)
        if names and store.job()["name"] not in names:
            continue
        for record in squeue_records(store, keys, opts.has("array")):
            if states and "ALL" not in states and not {record["T"], record["t"]} & states:
                continue
            lines.append(render_squeue(fmt, record))
    if lines:
        print("\n".join(lines), flush=True)
    return 0


# ----------------------------------------------------------------------------- scancel


def cmd_scancel(argv: list[str]) -> int:
    # a job may cancel itself: do not die from the SIGTERM sent to its own processes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = state_root()
    opts, ids = parse_options(argv, SCANCEL_SHORT, SCANCEL_LONG_WITH_ARG, False)
    signal_text = opts.text("signal")
    sig = parse_signal(signal_text) if signal_text is not None else None
    errors: list[str] = []
    targets: list[tuple[JobStore, set[str] | None, str]] = []
    if ids:
        for spec in split_ids(ids):
            found = resolve(root, spec)
            if not found:
                errors.append(f"Kill job error on job id {spec}: Invalid job id specified")
            targets += [(store, keys, spec) for store, keys in found]
    elif opts.has("user") or opts.has("me") or opts.has("name") or opts.has("state"):
        targets = [(store, None, str(store.job_id)) for store in all_jobs(root)]
    else:
        raise SlurmError("No job identification provided")
    names = set(split_ids(opts.all("name") + opts.all("jobname")))
    states = {s.upper() for s in split_ids(opts.all("state"))}
    for store, keys, spec in targets:
        if names and store.job()["name"] not in names:
            continue
        with store.lock():
            now = time.time()
            selected = [t for t in store.tasks() if keys is None or t["key"] in keys]
            if states:
                selected = [
                    t for t in selected if {t["state"], COMPACT_STATES[t["state"]]} & states
                ]
            active = [t for t in selected if t["state"] in ACTIVE_STATES]
            if not active and ids:
                errors.append(
                    f"Kill job error on job id {spec}: Job/step already completing or completed"
                )
            for task in active:
                if sig is None or sig == signal.SIGKILL:
                    cancel_task(task, now, immediate=sig == signal.SIGKILL)
                elif task["state"] == "PENDING":
                    if keys is not None and len(keys) == 1:
                        errors.append(f"Signal job error on job id {spec}: Job is pending")
                    continue
                else:
                    signal_task(task, sig, opts)
                store.write_task(task)
    for error in errors:
        print(f"scancel: error: {error}", file=sys.stderr)
    # like SLURM, an already finished job is reported but is no failure
    return 1 if any("Invalid job id" in e for e in errors) else 0


def cancel_task(task: Task, now: float, immediate: bool) -> None:
    was_pending = task["state"] == "PENDING"
    task.update(state="CANCELLED", cancel_requested=True)
    if was_pending:
        task["end_time"] = now
        return
    terminate(task, now, immediate=immediate)


def signal_task(task: Task, sig: int, opts: Options) -> None:
    """Deliver ``sig`` like ``scancel --signal``: to the steps by default."""
    steps = [s["pgid"] for s in task["steps"] if s["state"] == "RUNNING"]
    if opts.has("batch"):
        signal_process(task["pid"], sig)
    elif opts.has("full"):
        signal_group(task["pid"], sig)
        for pgid in steps:
            signal_group(pgid, sig)
    elif steps:
        for pgid in steps:
            signal_group(pgid, sig)
    else:
        print(
            f"scancel: warning: job {task['key']} has no running step (srun) to signal; "
            "SLURM does not signal the batch script without --batch or --full",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------- scontrol


def cmd_scontrol(argv: list[str]) -> int:
    if not argv:
        raise SlurmError("fake scontrol supports: requeue, show job, show hostnames")
    sub = argv[0].lower()
    if sub == "requeue":
        return scontrol_requeue(split_ids(a for a in argv[1:] if not a.startswith("-")))
    if sub == "show" and len(argv) >= 2 and argv[1].lower() in ("hostnames", "hostname"):
        hostlist = argv[2] if len(argv) > 2 else os.environ.get("SLURM_JOB_NODELIST", "")
        if not hostlist:
            raise SlurmError("no hostlist given and SLURM_JOB_NODELIST is not set")
        print("\n".join(expand_hostlist(hostlist)), flush=True)
        return 0
    if sub == "show" and len(argv) >= 2 and argv[1].lower() == "job":
        return scontrol_show_job(argv[2:])
    raise SlurmError(f"fake scontrol does not support: {' '.join(argv)}")


def scontrol_requeue(specs: list[str]) -> int:
    # called from inside the job that is requeued: survive the SIGTERM sent to it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = state_root()
    if not specs:
        raise SlurmError("requeue needs a job id")
    errors: list[str] = []
    for spec in specs:
        found = resolve(root, spec)
        if not found:
            errors.append(f"Invalid job id specified for job {spec}")
        for store, keys in found:
            with store.lock():
                now = time.time()
                revived = False
                for task in store.tasks():
                    if keys is not None and task["key"] not in keys:
                        continue
                    if task["state"] == "RUNNING":
                        task.update(state="REQUEUED", requeue_requested=True)
                        terminate(task, now)
                    elif task["state"] in FINAL_STATES:
                        task.update(
                            state="PENDING",
                            restart_count=task["restart_count"] + 1,
                            cancel_requested=False,
                            requeue_requested=False,
                            queued_at=now,
                            start_time=None,
                            end_time=None,
                            steps=[],
                        )
                        revived = True
                    else:
                        continue  # pending or already being requeued
                    store.write_task(task)
                if revived:
                    spawn_supervisor(store)
    for error in errors:
        print(f"scontrol: error: {error}", file=sys.stderr)
    return 1 if errors else 0


def scontrol_show_job(specs: list[str]) -> int:
    root = state_root()
    targets = (
        [t for spec in split_ids(specs) for t in resolve(root, spec)]
        if specs
        else [(store, None) for store in all_jobs(root)]
    )
    if specs and not targets:
        raise SlurmError("Invalid job id specified")
    blocks = []
    for store, keys in targets:
        reconcile(store)
        job = store.job()
        for task in store.tasks():
            if keys is not None and task["key"] not in keys:
                continue
            values = pattern_values(
                task["array_job_id"] or task["job_id"],
                task["array_task_id"],
                task["job_id"],
                job["name"],
                "batch",
            )
            workdir = Path(job["workdir"])
            fields = {
                "JobId": task["job_id"],
                "ArrayJobId": task["array_job_id"],
                "ArrayTaskId": task["array_task_id"],
                "JobName": job["name"],
                "UserId": f"{job['user']}({os.getuid()})",
                "JobState": task["state"],
                "Reason": task["reason"] or "None",
                "Restarts": task["restart_count"],
                "ExitCode": f"{task['exit_code'] or 0}:{task['signal'] or 0}",
                "SubmitTime": fmt_time(task["submit_time"]),
                "StartTime": fmt_time(task["start_time"]),
                "EndTime": fmt_time(task["end_time"]),
                "Partition": PARTITION,
                "NodeList": NODE if task["start_time"] is not None else "(null)",
                "NumNodes": 1,
                "NumTasks": 1,
                "WorkDir": job["workdir"],
                "Command": store.script,
                "StdOut": workdir / expand_pattern(job["output"], values),
                "StdErr": workdir / expand_pattern(job["error"] or job["output"], values),
            }
            pairs = [f"{k}={v}" for k, v in fields.items() if v is not None]
            blocks.append("\n   ".join(" ".join(pairs[i : i + 4]) for i in range(0, len(pairs), 4)))
    print("\n\n".join(blocks), flush=True)
    return 0


# ----------------------------------------------------------------------------- for tests


def read_task(root: Path | str, key: str) -> Task:
    """The fake state of one task (``<id>`` or ``<id>_<index>``), for assertions."""
    return JobStore(Path(root), int(key.split("_")[0])).task(key)


def cancel_all(root: Path | str) -> None:
    """``scancel --me`` on the state folder, without going through PATH."""
    env = {**os.environ, "FAKE_SLURM_DIR": str(root)}
    subprocess.run(
        [sys.executable, "-S", str(Path(__file__).absolute()), "scancel", "--me"],
        env=env,
        check=False,
        capture_output=True,
    )


def wait_idle(root: Path | str, timeout: float = 20.0) -> bool:
    """Wait until no job of the state folder has a supervisor (all processes gone)."""
    deadline = time.time() + timeout
    while True:
        busy = False
        for store in all_jobs(Path(root)):
            with store.lock():
                busy = busy or store.supervised()
        if not busy:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.05)


# ----------------------------------------------------------------------------- main


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "sbatch": cmd_sbatch,
    "srun": cmd_srun,
    "sacct": cmd_sacct,
    "squeue": cmd_squeue,
    "scancel": cmd_scancel,
    "scontrol": cmd_scontrol,
    "_supervise": cmd_supervise,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: fake_slurm.py {{{','.join(sorted(COMMANDS))}}} [args...]", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    try:
        return COMMANDS[name](rest)
    except SlurmError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
