"""submitit's SlurmExecutor end to end on the stand-in SLURM commands of tests/fake_slurm."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

pytestmark = pytest.mark.timeout(90)

TESTS_DIR = Path(__file__).resolve().parent
FAKE_DIR = TESTS_DIR / "fake_slurm"

_spec = importlib.util.spec_from_file_location("fake_slurm", FAKE_DIR / "fake_slurm.py")
assert _spec is not None and _spec.loader is not None
fake_slurm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fake_slurm  # dataclasses look their module up there
_spec.loader.exec_module(fake_slurm)


# module-level, hence importable by the jobs (PYTHONPATH has tests/ in the fixture)
def describe(x: int) -> dict[str, Any]:
    env = submitit.JobEnvironment()
    return {
        "square": x * x,
        "job_id": env.job_id,
        "raw_job_id": os.environ["SLURM_JOB_ID"],
        "num_tasks": env.num_tasks,
        "global_rank": env.global_rank,
        "hostnames": list(env.hostnames),
        "task_count": os.environ["SLURM_ARRAY_TASK_COUNT"],
        "step": os.environ.get("SLURM_STEP_ID"),
    }


def fail(x: int) -> int:
    raise ValueError(f"no luck with {x}")


def sleep_forever(progress: str) -> None:
    while True:
        with open(progress, "a") as handle:
            handle.write("tick\n")
        time.sleep(0.1)


class Counter(submitit.helpers.Checkpointable):
    """Counts (0.1 s a step) to ``steps``; a checkpoint resumes from the current count.

    With ``until_requeued`` the first run (no SLURM_RESTART_COUNT) only ends when it is
    preempted, so the test does not depend on how fast the machine is.
    """

    def __init__(self, progress: str, steps: int, until_requeued: bool = False) -> None:
        self.progress = progress
        self.steps = steps
        self.until_requeued = until_requeued
        self.count = 0

    def __call__(self) -> int:
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        limit = 600 if self.until_requeued and restart == "0" else self.steps
        while True:
            with open(self.progress, "a") as handle:
                handle.write(f"{restart} {self.count}\n")
            time.sleep(0.1)
            self.count += 1
            if self.count >= limit:
                return self.count


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


def wait_state(jobs: list[submitit.Job[Any]], prefix: str) -> None:
    """Poll sacct (a process per call, hence not too often) until every job is in a state."""
    wait_for(
        lambda: all(sacct_state(job).startswith(prefix) for job in jobs), interval=0.25, what=prefix
    )


def results(jobs: list[submitit.Job[Any]]) -> list[Any]:
    """job.result() polls once a second: wait for the result files first."""
    wait_for(lambda: all(job.paths.result_pickle.exists() for job in jobs), what="results")
    return [job.result() for job in jobs]


def sacct_state(job: submitit.Job[Any]) -> str:
    return str(job.get_info(mode="force").get("State", "UNKNOWN"))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake commands first on PATH, their state in tmp_path, a fresh sacct watcher."""
    root = tmp_path / "fake-slurm"
    monkeypatch.setenv("PATH", f"{FAKE_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(root))
    monkeypatch.setenv("FAKE_SLURM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_SLURM_KILL_WAIT", "1")
    # SlurmJob.watcher is class-level, caches finished states and waits up to 600 s
    # between sacct calls: one per test, at most one sacct call a second
    monkeypatch.setattr(submitit.SlurmJob, "watcher", SlurmInfoWatcher(delay_s=1))
    # the jobs get this module's functions by value (they need not import the test module)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield root
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        fake_slurm.cancel_all(root)
        assert fake_slurm.wait_idle(root, timeout=15), "fake SLURM jobs still running"


def make_executor(tmp_path: Path, **parameters: Any) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=tmp_path / "logs")
    executor.update_parameters(**parameters)
    return executor


def test_map_array_runs_every_task_with_slurm_variables(slurm: Path, tmp_path: Path) -> None:
    executor = make_executor(tmp_path, array_parallelism=2)
    jobs = executor.map_array(describe, [1, 2, 3, 4])
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]
    assert "#SBATCH --array=0-3%2" in jobs[0].paths.submission_file.read_text().splitlines()

    outputs = results(jobs)
    assert [r["square"] for r in outputs] == [1, 4, 9, 16]
    assert [r["job_id"] for r in outputs] == [job.job_id for job in jobs]
    assert len({r["raw_job_id"] for r in outputs}) == 4  # one SLURM_JOB_ID per task
    assert all(r["num_tasks"] == 1 and r["global_rank"] == 0 for r in outputs)
    assert all(r["hostnames"] == ["localhost"] and r["task_count"] == "4" for r in outputs)
    assert all(r["step"] == "0" for r in outputs)  # run by srun, as step 0

    wait_state(jobs, "COMPLETED")
    tasks = [fake_slurm.read_task(slurm, job.job_id) for job in jobs]
    events = sorted([(t["start_time"], 1) for t in tasks] + [(t["end_time"], -1) for t in tasks])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most <= 2  # %2
    assert all(t["restart_count"] == 0 and t["exit_code"] == 0 for t in tasks)


def test_failing_job_is_failed(slurm: Path, tmp_path: Path) -> None:
    job = make_executor(tmp_path).submit(fail, 3)  # a single job, not an array
    assert "_" not in job.job_id
    error = job.exception()
    assert isinstance(error, submitit.core.utils.FailedJobError)
    assert "no luck with 3" in str(error)
    wait_state([job], "FAILED")
    assert job.get_info(mode="force")["NodeList"] == "localhost"
    assert fake_slurm.read_task(slurm, job.job_id)["exit_code"] == 1


def test_preempted_checkpointable_job_is_requeued(slurm: Path, tmp_path: Path) -> None:
    progress = [tmp_path / "short.txt", tmp_path / "long.txt"]
    jobs = make_executor(tmp_path).submit_array(
        [Counter(str(progress[0]), steps=3), Counter(str(progress[1]), 5, until_requeued=True)]
    )
    job = jobs[1]
    assert isinstance(job, submitit.SlurmJob)
    wait_for(lambda: len(lines(progress[1])) >= 3, what="the job to make progress")
    job._interrupt()  # preemption: SIGTERM then USR2 to the job step

    short, long = results(jobs)
    assert short == 3
    wait_state(jobs, "COMPLETED")
    task = fake_slurm.read_task(slurm, job.job_id)
    assert task["restart_count"] == 1
    assert [run["outcome"] for run in task["history"]] == ["REQUEUED", "COMPLETED"]
    records = [(restart, int(count)) for restart, count in map(str.split, lines(progress[1]))]
    first_run = [count for restart, count in records if restart == "0"]
    second_run = [count for restart, count in records if restart == "1"]
    assert first_run == list(range(len(first_run))) and len(first_run) >= 3
    # the second run resumed from the checkpoint instead of starting over
    assert 2 <= second_run[0] <= first_run[-1] + 1
    assert second_run == list(range(second_run[0], long))
    assert long >= 5
    assert "Bypassing signal SIGTERM" in (job.stderr() or "")
    assert re.search(rf"Requeued job {job.job_id} \(\d+ remaining timeouts\)", job.stdout() or "")
    assert fake_slurm.read_task(slurm, jobs[0].job_id)["restart_count"] == 0


def test_scancel_cancels_running_and_pending_tasks(slurm: Path, tmp_path: Path) -> None:
    progress = [tmp_path / f"sleep{i}.txt" for i in range(3)]
    jobs = make_executor(tmp_path, array_parallelism=1).map_array(
        sleep_forever, [str(p) for p in progress]
    )
    wait_for(lambda: lines(progress[0]), what="the first task to run")
    array_id = jobs[0].job_id.split("_")[0]
    squeue = subprocess.run(
        ["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert squeue.stdout.split("\n")[:3] == [
        f"{array_id}_0 RUNNING",
        f"{array_id}_1 PENDING",
        f"{array_id}_2 PENDING",
    ]

    subprocess.run(["scancel", array_id], check=True)
    wait_state(jobs, "CANCELLED")
    assert all(job.done() for job in jobs)
    tasks = [fake_slurm.read_task(slurm, job.job_id) for job in jobs]
    assert tasks[0]["start_time"] is not None
    assert [t["start_time"] for t in tasks[1:]] == [None, None]  # never ran
    # SIGTERM is ignored by submitit's handler: killed after FAKE_SLURM_KILL_WAIT
    wait_for(lambda: fake_slurm.read_task(slurm, jobs[0].job_id)["end_time"], what="the kill")
    size = len(lines(progress[0]))
    time.sleep(0.3)
    assert len(lines(progress[0])) == size
    assert not progress[1].exists() and not progress[2].exists()


def test_cli_array_output_patterns_and_listings(slurm: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=cli\n"
        "#SBATCH --array=1-5:2%2\n"
        "#SBATCH --output=out/%x-%A_%a.out --error=out/%x-%A_%a.err\n"
        'echo "task=$SLURM_ARRAY_TASK_ID job=$SLURM_JOB_ID array=$SLURM_ARRAY_JOB_ID"\n'
        "srun --output out/%x-%A_%a.step%s.out printenv SLURM_STEP_ID\n"
        "echo oops >&2\n"
        "sleep 0.3\n"
    )

    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True, cwd=tmp_path).stdout

    submitted = run("sbatch", str(script))
    match = re.fullmatch(r"Submitted batch job (\d+)\n", submitted)
    assert match is not None, submitted
    array_id = match[1]
    listing = run("squeue", "-h", "-j", array_id, "-o", "%i %T")
    for line in listing.splitlines():
        assert re.fullmatch(rf"{array_id}_(1|3|5|\[[-,135]+%2\]) (PENDING|RUNNING)", line), line
    wait_for(lambda: not run("squeue", "-h", "-j", array_id).strip(), interval=0.2, what="the end")

    sacct = run("sacct", "-P", "-n", "-o", "JobID,JobIDRaw,State,ExitCode", "-j", array_id)
    rows = [line.split("|") for line in sacct.splitlines()]
    first = int(array_id)
    for offset, index in enumerate([1, 3, 5]):
        key, raw = f"{array_id}_{index}", str(first + offset)
        assert [key, raw, "COMPLETED", "0:0"] in rows
        assert [f"{key}.batch", f"{raw}.batch", "COMPLETED", "0:0"] in rows
        assert [f"{key}.0", f"{raw}.0", "COMPLETED", "0:0"] in rows
        out = tmp_path / "out" / f"cli-{array_id}_{index}.out"
        assert out.read_text() == f"task={index} job={raw} array={array_id}\n"
        assert (tmp_path / "out" / f"cli-{array_id}_{index}.err").read_text() == "oops\n"
        assert (tmp_path / "out" / f"cli-{array_id}_{index}.step0.out").read_text() == "0\n"
    assert run("sacct", "-P", "-o", "JobID,State", "-j", "999999999") == "JobID|State\n"
    assert run("scontrol", "show", "hostnames", "node[1-2],gpu7").split() == [
        "node1",
        "node2",
        "gpu7",
    ]


def test_state_folder_is_required(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "FAKE_SLURM_DIR"}
    result = subprocess.run(
        [str(FAKE_DIR / "sacct")],
        env={**env, "FAKE_SLURM_PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "FAKE_SLURM_DIR is not set" in result.stderr
