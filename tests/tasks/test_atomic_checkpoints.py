"""Checkpoint files are written through a temporary file and a rename."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rgbx_fusion.experiment import build
from rgbx_fusion.tasks.checkpoints import AtomicCheckpointIO


def test_an_interrupted_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1

    def killed(self: TorchCheckpointIO, checkpoint: dict, target: Path, *args: object) -> None:
        Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_cli_trainer_writes_atomically(tiny_depth_root: Path, tmp_path: Path) -> None:
    from cli_overrides import small_cli_args

    config = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"
    cli = build(args=["--config", str(config), *small_cli_args(tiny_depth_root, tmp_path)])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
