"""Training order that a resumed run reproduces exactly, down to the augmentation.

The training loader of :class:`~rgbx_fusion.data.datamodule.RGBXDataModule` draws
sample ``i`` of epoch ``e`` from a permutation and an augmentation seed that
depend only on ``(seed, e, i)``: not on the number of loader workers, on the
global random state, or on where a run was interrupted. Its position (seed, epoch,
batches handed out) travels in every checkpoint with the data module's state and is
restored by ``fit --ckpt_path``, so a run resumed mid-epoch sees the remaining
batches of that epoch, with the same crops and flips, and then the same later
epochs as an uninterrupted run.

Convention:
    The sampler yields ``(index, augmentation_seed)`` pairs; datasets that
    accept them (:class:`~rgbx_fusion.data.datamodule.TransformedDataset`) seed
    their random transforms with the second item.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """32-bit augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed``.

    >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 2)
    True
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def epoch_permutation(seed: int, epoch: int, length: int) -> np.ndarray:
    """Order of the ``length`` samples in ``epoch``: a permutation fixed by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(length)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(index, augmentation_seed)`` pairs, restartable mid-epoch.

    Args:
        length: number of samples.
        seed: base seed of the permutations and augmentation seeds (non-negative).
        epoch: epoch of the next iteration (Lightning calls :meth:`set_epoch`).
        start: samples of that epoch to skip (already trained on before a restart).
    """

    def __init__(self, length: int, seed: int, epoch: int = 0, start: int = 0) -> None:
        self.length = length
        self.seed = int(seed)
        self.epoch = epoch
        self.start = start

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        self.start = 0  # only the first iteration after a restart is partial
        order = epoch_permutation(self.seed, epoch, self.length)
        for i in order[start:].tolist():
            yield i, sample_seed(self.seed, epoch, i)


class ResumableLoader(DataLoader[Any]):
    """A training ``DataLoader`` over a :class:`ResumableSampler` that knows its position.

    ``position()`` is ``{"seed", "epoch", "batches"}`` with ``batches`` the
    number of batches of the current epoch handed out so far: Lightning does not
    pre-fetch from loaders with a length, so at a checkpoint this is the number
    of batches trained on. ``seek`` makes the next iteration start
    right after them (or at the next epoch when the epoch was complete).

    Args:
        dataset: map-style dataset accepting ``(index, seed)`` keys.
        batch_size: samples per batch; incomplete last batches are dropped.
        seed: base seed (see :class:`ResumableSampler`).
        epoch: epoch of the first iteration.
        **kwargs: further ``DataLoader`` arguments (workers, collate_fn, ...).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("shuffle", None)
        kwargs.pop("drop_last", None)
        sampler = kwargs.pop("sampler", None) or ResumableSampler(len(dataset), seed, epoch)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self.seed = int(seed)
        self._batches = 0
        self._epoch = epoch

    @property
    def resumable_sampler(self) -> ResumableSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, ResumableSampler) else None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.resumable_sampler
        self._epoch = sampler.epoch if sampler is not None else self._epoch
        self._batches = sampler.start // self.batch_size if sampler is not None else 0  # type: ignore[operator]
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def position(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self._epoch, "batches": self._batches}

    def seek(self, state: dict[str, int]) -> None:
        sampler = self.resumable_sampler
        if sampler is None:
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        sampler.seed = self.seed = int(state["seed"])
        sampler.epoch, sampler.start = epoch, batches * int(self.batch_size or 1)
