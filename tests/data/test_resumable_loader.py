"""The resumable training loader: order and augmentation seeds from (seed, epoch, position)."""

from __future__ import annotations

import numpy as np

from rgbx_fusion.data.resumable_loader import ResumableLoader, ResumableSampler


def test_sampler_order_depends_only_on_seed_epoch_and_position() -> None:
    full = list(ResumableSampler(10, seed=3, epoch=2))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full == list(ResumableSampler(10, seed=3, epoch=2))
    assert full != list(ResumableSampler(10, seed=3, epoch=1))
    restarted = ResumableSampler(10, seed=3, epoch=2, start=4)
    assert list(restarted) == full[4:]
    assert list(restarted) == full, "only the first iteration after a restart is partial"


class _Keys:
    """A dataset that returns the ``(index, seed)`` key it is asked for."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[0]


def test_loader_state_restarts_after_the_batches_handed_out() -> None:
    data = list(range(12))

    def loader() -> ResumableLoader:
        return ResumableLoader(_Keys(), batch_size=2, seed=1, collate_fn=list)

    first = loader()
    first.sampler.set_epoch(1)  # type: ignore[attr-defined]
    it = iter(first)
    seen = [next(it) for _ in range(2)]
    state = first.position()
    assert state == {"seed": 1, "epoch": 1, "batches": 2}
    rest = list(it)

    second = loader()
    second.seek(state)
    assert list(second) == rest
    assert np.concatenate(seen + rest).tolist() != data  # shuffled

    finished = loader()
    finished.seek({"seed": 1, "epoch": 1, "batches": 6})  # epoch was complete
    assert finished.sampler.epoch == 2 and finished.sampler.start == 0  # type: ignore[attr-defined]
