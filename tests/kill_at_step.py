"""A callback that signals its own process after a given training step (resume tests)."""

from __future__ import annotations

import os
import signal
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
