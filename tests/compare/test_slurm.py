"""The SLURM executor end to end, on stand-in ``sbatch``/``srun``/``sacct``/``squeue``/
``scancel``/``scontrol`` (tests/fake_slurm) that run the array tasks on this machine.

A 3 variant × 1 seed grid (× 2 seeds in the ``slow`` run) is queued with
``submit_only``; one run is held at step 2 and preempted there (SIGTERM, then
submitit's USR2: it is requeued and resumes from its ``last.ckpt``); one variant fails.
A later ``compare`` collects the finished and the failed runs (4 and 2 for 3 × 2); a
rerun submits the failed variant only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from compare_grids import BROKEN, MID, RGB, write_grid

from rgbx_fusion.compare import load_compare_config, run_compare
from rgbx_fusion.compare.executors import ExecutorSettings, SlurmOptions
from rgbx_fusion.compare.jobs import run_dir, run_state
from rgbx_fusion.compare.runner import print_status

pytest.importorskip("submitit", reason="the [cluster] extra is part of the dev install")
FAKE = Path(__file__).resolve().parents[1] / "fake_slurm"


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "slurm"
    monkeypatch.setenv("PATH", f"{FAKE}:{Path(sys.executable).parent}:" + str(_path()))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("FAKE_SLURM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_SLURM_KILL_WAIT", "10")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tests = Path(__file__).resolve().parents[1]  # the jobs import the pause callback from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tests), _pythonpath()])))
    return state


def _path() -> str:
    return os.environ.get("PATH", "")


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def _wait_for(condition: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the grid")


def _restarts(state: Path, job_id: str) -> int:
    main = job_id.partition("_")[0]
    record = json.loads((state / "jobs" / main / "tasks" / f"{job_id}.json").read_text())
    return int(record["restart_count"])


@pytest.mark.parametrize(
    "seeds",
    [pytest.param([0], id="3x1"), pytest.param([0, 1], id="3x2", marks=pytest.mark.slow)],
)
def test_slurm_grid_with_a_preemption_and_a_failing_variant(
    seeds: list[int], fake_slurm: Path, tiny_depth_root: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "paused"
    pause = {
        "class_path": "kill_at_step.PauseAtStep",
        "init_args": {"step": 2, "marker": str(marker)},
    }
    mid = {**MID, "overrides": {"trainer.callbacks": [pause]}}
    extra = {"trainer.limit_train_batches": 4, "resume.every_n_train_steps": 1}
    config = load_compare_config(
        write_grid(tiny_depth_root, tmp_path, [mid, RGB, BROKEN], seeds, **extra)
    )
    out = tmp_path / "out"
    slurm = ExecutorSettings("slurm", slurm=SlurmOptions(time=20, array_parallelism=2, qos="low"))
    queued = run_compare(config, out, speed=False, gallery=0, executor=slurm, submit_only=True)
    n = 3 * len(seeds)
    assert len(queued["submitted"]) == n and queued["rows"] == []
    scripts = list((out / "jobs").rglob("*_submission.sh"))
    assert len(scripts) == 1
    script = scripts[0].read_text()
    for flag in (f"--array=0-{n - 1}%2", "--time=20", "--qos=low", "--signal=USR2@90"):
        assert f"#SBATCH {flag}" in script
    for v in config.variants:
        for s in config.seeds:
            assert json.loads((run_dir(out, v, s) / "job.json").read_text())["executor"] == "slurm"

    # The first mid_add run to reach step 2 holds there; preempt it: SIGTERM, then USR2.
    _wait_for(marker.is_file)
    first = Path(marker.read_text())
    job_id = json.loads((first / "job.json").read_text())["job_id"]
    assert any(first.rglob("last.ckpt"))
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", "--signal", sig, job_id], check=True)
        time.sleep(0.3)

    done = run_compare(config, out, speed=False, gallery=0, executor=slurm, poll_s=0.5)
    finished = [f"{v}/seed{s}" for v in ("mid_add", "rgb_only") for s in seeds]
    # runs that ended between the two calls are found done ("skipped"), the others awaited
    assert sorted(done["trained"] + done["skipped"]) == finished
    broken = [f"broken/seed{s}" for s in seeds]
    assert done["failed"] == broken
    assert _restarts(fake_slurm, job_id) == 1
    assert "Requeued" in "".join(p.read_text() for p in (out / "jobs").rglob("*_log.*"))
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None  # the requeued job continued from last.ckpt
    failed = json.loads((run_dir(out, config.variants[2], 0) / "failed.json").read_text())
    assert "no_such_net" in failed["error"] and failed["log"].endswith("_log.err")
    assert Path(failed["log"]).is_file() and "no_such_net" in Path(failed["log"]).read_text()
    assert "broken" in (out / "results.md").read_text()
    states = print_status(config, out)
    assert sorted(s.state for s in states.values()) == ["done"] * (2 * len(seeds)) + [
        "failed"
    ] * len(seeds)

    # A rerun submits the failed variant only; the finished runs are not touched.
    stamp = (first / "metrics.json").stat().st_mtime_ns
    again = run_compare(config, out, speed=False, gallery=0, executor=slurm, poll_s=0.5)
    assert again["submitted"] == broken
    assert again["trained"] == [] and again["failed"] == broken
    assert (first / "metrics.json").stat().st_mtime_ns == stamp
    assert run_state(first).state == "done"
