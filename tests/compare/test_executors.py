"""Executors of a compare grid: sequential vs local parallel runs, failure isolation, a run
killed with SIGKILL, the folder manifest, ``--status`` and the option errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from compare_grids import BASE, BROKEN, MID, RGB, write_grid

from rgbx_fusion.cli import main
from rgbx_fusion.compare import load_compare_config, run_compare
from rgbx_fusion.compare.executors import (
    ExecutorSettings,
    SlurmOptions,
    minutes,
    parse_executor,
    require_submitit,
    slurm_parameters,
    with_cli,
)
from rgbx_fusion.compare.jobs import expand_job_ids, run_dir, run_state
from rgbx_fusion.compare.runner import print_status
from rgbx_fusion.errors import ConfigError


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}


def test_local_parallel_grid_equals_sequential(tiny_depth_root: Path, tmp_path: Path) -> None:
    config = load_compare_config(write_grid(tiny_depth_root, tmp_path, [MID, RGB], [0]))
    seq, loc = tmp_path / "sequential", tmp_path / "local"
    a = run_compare(config, seq, speed=False, gallery=0)
    b = run_compare(config, loc, speed=False, gallery=0, executor=ExecutorSettings("local", 2))
    for summary in (a, b):  # the local executor runs both variants at once
        assert sorted(summary["trained"]) == [f"{v}/seed0" for v in MID_RGB]
        assert summary["failed"] == []
    runs_a, runs_b = _rows(seq / "runs.csv"), _rows(loc / "runs.csv")
    assert runs_a.keys() == runs_b.keys() and len(runs_a) == 2
    for key, row in runs_a.items():
        for metric in ("val_mIoU", "test_mIoU"):
            assert float(runs_b[key][metric]) == pytest.approx(float(row[metric]), abs=1e-3)
    listing = {p.name for p in seq.iterdir()}
    assert listing - {"jobs"} == {p.name for p in loc.iterdir()} - {"jobs"}
    assert {"results.csv", "results.md", "runs.csv", "compare.json"} <= listing
    # The local runs ran as submitit jobs, each recorded in its run folder.
    job = json.loads((run_dir(loc, config.variants[0], 0) / "job.json").read_text())
    assert job["executor"] == "local" and (loc / "jobs").is_dir()


MID_RGB = ("mid_add", "rgb_only")


# Slow: its parts run in the default suite elsewhere. A SIGKILLed training resumes exactly
# (tests/tasks/test_resume.py), and a grid requeues a preempted run from its last.ckpt and
# isolates a failing variant (tests/compare/test_slurm.py).
@pytest.mark.slow
def test_a_killed_run_resumes_and_a_failing_one_is_isolated(
    tiny_depth_root: Path, tmp_path: Path
) -> None:
    """Under the local executor: one run is SIGKILLed mid-training, another variant fails;
    the rerun resumes the killed run from last.ckpt and retries only the unfinished ones."""
    path = write_grid(
        tiny_depth_root,
        tmp_path,
        [MID, BROKEN],
        [0],
        **{"trainer.limit_train_batches": 12, "resume.every_n_train_steps": 2},
    )
    config = load_compare_config(path)
    out = tmp_path / "out"
    folder = run_dir(out, config.variants[0], 0)
    killed: list[int] = []

    def kill_when_checkpointed(*_: Any) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = folder / "running.json"
            if list(folder.rglob("last.ckpt")) and running.is_file():
                pid = int(json.loads(running.read_text())["pid"])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    import threading

    watcher = threading.Thread(target=kill_when_checkpointed, daemon=True)
    watcher.start()
    first = run_compare(config, out, speed=False, gallery=0, executor=ExecutorSettings("local", 2))
    watcher.join()
    assert killed, "the run ended before it wrote a last.ckpt"
    assert first["trained"] == [] and first["unfinished"] == ["mid_add/seed0"]
    assert first["failed"] == ["broken/seed0"]
    assert run_state(folder).state == "interrupted"
    record = json.loads((run_dir(out, config.variants[1], 0) / "failed.json").read_text())
    assert "no_such_net" in record["error"] and "\n" not in record["error"]
    assert Path(record["log"]).is_file() and "no_such_net" in Path(record["log"]).read_text()
    md = (out / "results.md").read_text()
    assert "broken" in md and "no_such_net" in md

    second = run_compare(config, out, speed=False, gallery=0)
    assert second["submitted"] == ["mid_add/seed0", "broken/seed0"]
    assert second["trained"] == ["mid_add/seed0"] and second["failed"] == ["broken/seed0"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and "last" in metrics["resumed_from"]
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    third = run_compare(config, out, speed=False, gallery=0)  # only the failed run again
    assert third["submitted"] == ["broken/seed0"] and third["skipped"] == ["mid_add/seed0"]
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp


def test_a_folder_of_another_grid_is_refused_and_kept(
    tiny_depth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_compare_config(write_grid(tiny_depth_root, tmp_path, [BROKEN], [0]))
    out = tmp_path / "out"
    run_compare(config, out, speed=False, gallery=0)
    manifest = (out / "compare.json").read_text()
    for variants, seeds, what in (
        ([BROKEN, MID], [0], "added"),
        ([BROKEN], [0, 1], "seeds"),
        ([{**BROKEN, "overrides": {"model.lr": 0.5}}], [0], "changed"),
    ):
        other = load_compare_config(write_grid(tiny_depth_root, tmp_path / what, variants, seeds))
        with pytest.raises(ConfigError, match=f"different compare config.*{what}.*--out"):
            run_compare(other, out, speed=False, gallery=0)
    assert (out / "compare.json").read_text() == manifest
    assert (run_dir(out, config.variants[0], 0) / "failed.json").is_file()

    states = print_status(config, out)
    assert [s.state for s in states.values()] == ["failed"]
    assert "broken/seed0" in capsys.readouterr().out
    status = ["compare", "--config", str(tmp_path / "grid.yaml"), "--out", str(out), "--status"]
    with pytest.raises(SystemExit) as exit_info:
        main(status)
    assert exit_info.value.code == 0
    assert "1 failed" in capsys.readouterr().out


def test_executor_options_and_their_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = parse_executor(
        {"kind": "slurm", "slurm": {"partition": "gpu", "time": "06:00:00", "gpus_per_task": 2}}
    )
    assert settings.kind == "slurm" and settings.slurm.partition == "gpu"
    merged = with_cli(
        settings, jobs=None, slurm={"time": "90", "additional": {"constraint": "a100"}}
    )
    params = slurm_parameters(merged.slurm)
    assert params["time"] == 90 and params["partition"] == "gpu"
    assert params["ntasks_per_node"] == 2 and params["gpus_per_task"] == 1  # one task per GPU
    assert params["additional_parameters"] == {"constraint": "a100"}
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="true", folder=tmp_path / "%j", **params)
    for line in (
        "ntasks-per-node=2",
        "gpus-per-task=1",
        "partition=gpu",
        "time=90",
        "constraint=a100",
    ):
        assert f"#SBATCH --{line}" in script
    assert slurm_parameters(SlurmOptions(gpus_per_task=1))["gpus_per_task"] == 1
    assert (minutes("2-01:30:00"), minutes("45:00"), minutes(30)) == (2970, 45, 30)
    assert expand_job_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_job_ids("12_4") == ["12_4"]
    for bad, match in (
        ({"kind": "ray"}, "unknown executor 'ray'"),
        ({"kind": "slurm", "slurm": {"partitions": "gpu"}}, "unknown SLURM options"),
        ({"slurm": {"time": "soon"}}, "SLURM time"),
        ({"slurm": {"gpus_per_task": 0}}, "positive integer"),
        ({"jobs": 0}, "positive number"),
        ({"workers": 2}, "unknown keys"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_executor(bad)
    with pytest.raises(ConfigError, match="positive number"):
        with_cli(ExecutorSettings(), jobs=0)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ConfigError, match=r"pip install 'rgbx-fusion\[cluster\]'"):
        require_submitit("slurm")

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": str(BASE), "variants": [{"name": "a"}]}))
    for argv, message in (
        (["--jobs", "0"], "expected a positive number"),
        (["--executor", "ray"], "invalid choice"),
        (["--slurm.partitions", "gpu"], "unrecognized arguments"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", "--config", str(grid), *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(grid), "--submit-only"])
    assert exit_info.value.code == 1
    assert "--executor slurm" in capsys.readouterr().err
