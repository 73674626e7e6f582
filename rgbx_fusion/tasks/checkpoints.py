"""Checkpoints for resuming: periodic ``last.ckpt``, a save on SIGTERM, ``--ckpt_path last``.

With :class:`ResumeCheckpoint` in a fit run (the CLI adds it, options under
``--resume.*``):

* every ``every_n_train_steps`` optimiser steps, ``last.ckpt`` is rewritten
  (atomically) next to the best checkpoint, so a run killed with SIGKILL loses at
  most that many steps;
* on SIGTERM (preemption, ``scancel``, ``kill``) Lightning stops after the current
  training batch and ``last.ckpt`` is written before the process exits; a SIGTERM
  during validation is held until the validation epoch ends, so the checkpoint never
  holds half-accumulated metrics;
* the global random states (torch, numpy, random) travel in the checkpoint.

``fit --ckpt_path last`` then resumes from the newest ``last*.ckpt`` of any
version under the run's root directory (:func:`find_last_checkpoint`). Together
with the resumable training loader (:mod:`rgbx_fusion.data.resumable_loader`) the resumed
run ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from rich.console import Console

from rgbx_fusion.data.atomic import atomic_path
from rgbx_fusion.errors import ConfigError


class ResumeCheckpoint(Callback):
    """Keep ``last.ckpt`` current enough to resume a killed run exactly.

    Args:
        every_n_train_steps: rewrite ``last.ckpt`` every this many optimiser steps
            (0: only at the end of each epoch and on SIGTERM).
        on_sigterm: write ``last.ckpt`` when the run is stopped by SIGTERM.
    """

    def __init__(self, every_n_train_steps: int = 0, on_sigterm: bool = True) -> None:
        if every_n_train_steps < 0:
            raise ConfigError(f"resume.every_n_train_steps must be ≥ 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.on_sigterm = on_sigterm
        self._held_sigterm = False
        self._pending_rng: dict[str, Any] | None = None
        self.saved: list[Path] = []

    # ---- where last.ckpt lives -----------------------------------------------------------
    @staticmethod
    def _checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
        cb = trainer.checkpoint_callback
        return cb if isinstance(cb, ModelCheckpoint) and cb.dirpath else None

    def last_path(self, trainer: pl.Trainer) -> Path | None:
        """``<checkpoint dir>/last.ckpt``, or ``None`` without a ``ModelCheckpoint``."""
        cb = self._checkpoint(trainer)
        if cb is None:
            return None
        return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"  # type: ignore[arg-type]

    def save_last(self, trainer: pl.Trainer) -> Path | None:
        """Write ``last.ckpt`` now through the trainer's checkpoint writer (atomic in runs)."""
        path = self.last_path(trainer)
        if path is None or trainer.sanity_checking or bool(getattr(trainer, "fast_dev_run", False)):
            return None
        cb = self._checkpoint(trainer)
        assert cb is not None
        cb.last_model_path = str(path)  # recorded in the checkpoint's callback state
        trainer.save_checkpoint(path, weights_only=False)
        self.saved.append(path)
        return path

    # ---- hooks ---------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not trainer.received_sigterm:
            self.save_last(trainer)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        # Lightning stops validation at the next batch after SIGTERM; finish it instead,
        # so the checkpoint is written after a whole validation epoch. Lightning has no
        # public way to defer a received SIGTERM, hence its signal connector here.
        connector = trainer._signal_connector
        if trainer.state.fn == "fit" and self.on_sigterm and connector.received_sigterm:
            connector.received_sigterm, self._held_sigterm = False, True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._held_sigterm:
            trainer._signal_connector.received_sigterm, self._held_sigterm = True, False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.on_sigterm and isinstance(exception, SIGTERMException):
            path = self.save_last(trainer)
            if path is not None:
                Console(stderr=True).print(
                    f"SIGTERM at step {trainer.global_step}: saved {path}; resume with "
                    "'fit --ckpt_path last' (same config)"
                )

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
            "python": _python_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at the first training batch: building the loader's iterator draws from
        # the torch generator, which the uninterrupted run did at the start of the epoch.
        self._pending_rng = dict(state_dict) if "torch" in state_dict else None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        state, self._pending_rng = self._pending_rng, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if state.get("numpy") is not None:
            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if state.get("python") is not None:
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))


def _numpy_state() -> list[Any]:
    """numpy's global state as plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [
        str(kind),
        torch.from_numpy(np.asarray(keys).astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(gauss),
    ]


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def find_last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """Newest ``last*.ckpt`` of this run's checkpoint folder or of any earlier version.

    A resumed run logs into a new version folder (``version_1``, ...), so Lightning's
    own ``ckpt_path="last"`` would look only there; this also searches the sibling
    ``version_*/checkpoints`` folders of the logger and ``<default_root_dir>/checkpoints``.
    """
    folders: set[Path] = {Path(trainer.default_root_dir) / "checkpoints"}
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        folders.add(Path(cb.dirpath))
    for logger in trainer.loggers:
        if logger.save_dir is not None and logger.name is not None:
            folders.update(Path(logger.save_dir, str(logger.name)).glob("*/checkpoints"))
    found = [
        p
        for folder in folders
        if folder.is_dir()
        for p in folder.glob("last*.ckpt")
        if not p.name.startswith(".")
    ]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file renamed into place.

    A run killed while a checkpoint is written leaves the previous file intact, never a
    truncated one that ``--ckpt_path`` would later fail to read.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
