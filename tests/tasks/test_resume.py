"""Exact resume: runs killed mid-epoch (SIGTERM, SIGKILL) and resumed with ``--ckpt_path last``.

Each run is a separate ``rgbx-fusion fit`` process on the tiny generated data
(2 epochs × 6 steps, batch 2, one CPU thread, deterministic). A test callback
signals the process after a known step; the resumed run must end with exactly
the weights and validation score of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_overrides import small_cli_args

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "synthetic" / "base.yaml"
STEPS_PER_EPOCH = 6  # 12 training samples, batch 2


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    args = [
        "fit",
        "--config",
        str(CONFIG),
        *small_cli_args(data, out),
        "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
        "--seed_everything=0",
        "--resume.every_n_train_steps=2",
        "--model.network.init_args.backbone=resnet10t",
        "--model.network.init_args.decoder.init_args.channels=32",
        *extra,
    ]
    code = "import sys; from rgbx_fusion.cli import main; main(sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _fit(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(data, out, *extra), env=_env(), capture_output=True, text=True, timeout=120
    )


def _kill_config(tmp: Path, step: int, name: str) -> str:
    path = tmp / f"kill_{name}.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_at_step.SignalAtStep\n"
        f"      init_args: {{step: {step}, signal_name: {name}}}\n"
    )
    return str(path)


def _final(out: Path) -> dict:
    """``last.ckpt`` of the run (a resumed run keeps writing into the folder of the run it
    continues): global step, weights, best val score."""
    ckpt = torch.load(
        out / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    scores = [s["best_model_score"] for s in ckpt["callbacks"].values() if "best_model_score" in s]
    return {"step": ckpt["global_step"], "weights": ckpt["state_dict"], "score": scores[0]}


class _Reference:
    """The uninterrupted run, started in the background and awaited on first use."""

    def __init__(self, data: Path, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            _command(data, out),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._final: dict | None = None

    def final(self) -> dict:
        if self._final is None:
            _, err = self.process.communicate(timeout=120)
            assert self.process.returncode == 0, err[-3000:]
            self._final = _final(self.out)
        return self._final


@pytest.fixture(scope="module")
def uninterrupted(tiny_depth_root: Path, module_tmp: Path):
    reference = _Reference(tiny_depth_root, module_tmp)
    yield reference
    if reference.process.poll() is None:
        reference.process.kill()
        reference.process.wait()


def _assert_same(resumed: dict, reference: dict) -> None:
    assert resumed["step"] == reference["step"] == 2 * STEPS_PER_EPOCH
    assert resumed["weights"].keys() == reference["weights"].keys()
    for key, value in reference["weights"].items():
        # bitwise on CPU with one thread and deterministic algorithms
        assert torch.equal(resumed["weights"][key], value), key
    assert torch.equal(resumed["score"], reference["score"])


@pytest.mark.parametrize(
    ("signal_name", "step", "saved_step"),
    [
        ("SIGTERM", 4, 4),  # epoch 0, mid-epoch: last.ckpt written on the way out
        ("SIGKILL", 9, 8),  # epoch 1, mid-epoch: only the periodic last.ckpt (every 2) exists
    ],
)
def test_killed_run_resumes_to_the_same_result(
    signal_name: str,
    step: int,
    saved_step: int,
    uninterrupted: _Reference,
    tiny_depth_root: Path,
    tmp_path: Path,
) -> None:
    killed = _fit(tiny_depth_root, tmp_path, "--config", _kill_config(tmp_path, step, signal_name))
    expected_rc = {"SIGTERM": 128 + signal.SIGTERM, "SIGKILL": -signal.SIGKILL}[signal_name]
    assert killed.returncode == expected_rc, killed.stderr[-3000:]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == saved_step
    assert not list(last.parent.glob(".last*")), "no temporary checkpoint left behind"

    resumed = _fit(tiny_depth_root, tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stdout
    assert (tmp_path / "lightning_logs" / "version_1" / "metrics.csv").is_file()
    _assert_same(_final(tmp_path), uninterrupted.final())
