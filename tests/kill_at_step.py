"""A callback that signals its own process after a given training step (resume tests)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` (``SIGTERM``, ``SIGKILL``) to this process once ``step`` is done.

    Args:
        step: global step after which the signal is sent (once; a resumed run past it
            does not signal again).
        signal_name: name of the signal in :mod:`signal`.
    """

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signum = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class PauseAtStep(Callback):
    """Hold the first run that reaches ``step`` until it is stopped from outside.

    The run writes its root folder into ``marker`` (created exclusively, so only the first
    run of a grid pauses) and sleeps for up to ``seconds``; a requeued SLURM job
    (``SLURM_RESTART_COUNT`` > 0) never pauses. Tests preempt the paused run at a known point.
    """

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step != self.step or os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(trainer.default_root_dir))
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
