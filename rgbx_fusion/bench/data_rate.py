"""Data-loading throughput of a training config against its training throughput.

The loader is the config's own training loader (dataset, decoding, augmentation,
normalisation, ``num_workers``, batch size and crop size); the training step is
the config's task (network and loss) with AdamW, on a batch of that loader. The
**ratio** ``loader images/s ÷ training images/s`` says by how much decoding and
augmentation outrun the model: below 1 the model waits for data.

Both are measured in the same process, alternately: each repeat first times
``batches`` loader batches (after taking out the batches the workers prefetched
meanwhile, so the rate is the workers' steady rate), then one training step
after an untimed one (which lets the workers fill their prefetch queue and go
idle). Medians over ``iters`` repeats after ``warmup``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class DataRate:
    """Loader and training throughput of one config (images per second)."""

    config: str
    batch_size: int
    num_workers: int
    train_size: list[int] | None
    loader_images_per_s: float
    train_images_per_s: float
    ratio: float
    load_average: list[float]  # 1-minute load average before and after the measurement


def _cycle(loader: Any) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def measure_data_rate(
    configs: Sequence[str],
    overrides: Sequence[str] = (),
    device: torch.device | None = None,
    warmup: int = 2,
    iters: int = 5,
    batches: int = 8,
) -> DataRate:
    """Loader vs training throughput of a config stack (with CLI ``overrides``)."""
    from rgbx_fusion.experiment import build
    from rgbx_fusion.tasks.optim import adamw

    device = device or torch.device("cpu")
    load_before = os.getloadavg()[0]
    exp = build(configs, overrides)
    dm, task = exp.datamodule, exp.task
    loader = dm.train_dataloader()
    prefetched = dm.num_workers * (loader.prefetch_factor or 0)
    stream = _cycle(loader)
    batch = _to(next(stream), device)
    task.to(device).train()
    opt = adamw(task.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        logits = task(batch["rgb"], batch["aux"])
        loss, _ = task._loss(logits, batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def load() -> float:
        for _ in range(prefetched):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return (time.perf_counter() - start) / batches

    loads: list[float] = []
    steps: list[float] = []
    for repeat in range(warmup + iters):
        t_load = load()
        step()  # untimed: the workers refill their queues meanwhile
        t_step = step()
        if repeat >= warmup:
            loads.append(t_load)
            steps.append(t_step)
    bs = dm.batch_size
    loader_rate = bs / statistics.median(loads)
    train_rate = bs / statistics.median(steps)
    size = list(dm.train_size) if dm.train_size is not None else None
    return DataRate(
        " + ".join(configs),
        bs,
        dm.num_workers,
        size,
        loader_rate,
        train_rate,
        loader_rate / train_rate,
        [load_before, os.getloadavg()[0]],
    )


def data_rate_report(rate: DataRate) -> dict[str, Any]:
    return asdict(rate)
