"""How the cost of each attention-type fusion operator grows with the feature-map size.

Every operator of the catalogue except the element-wise ones (``add``, ``concat``,
``weighted_sum``, ``max``) is built at ``C`` channels and run alone on random
maps at several sizes, by default the stride-8 maps of 120×160, 240×320 and
480×640 images (15×20, 30×40, 60×80). For each size the report gives the median
inference time, the median training time (forward + backward), the peak memory
of a training pass and, relative to the smallest size, the **time per pixel**
and **memory per pixel** ratios: 1 means the cost grows linearly with the pixel
count, above 1 faster than linearly (global attention is quadratic in time).

Repeats are interleaved over the sizes, so a change of machine load during the
run affects every size alike. Memory is CUDA's peak allocation on GPUs; on CPU
it is the peak of tensor storage allocated during the pass, tracked op by op
(:class:`~rgbx_fusion.bench.memory.TensorMemory`), which unlike the process's resident size does not
depend on the allocator's caching.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from rgbx_fusion.bench.memory import peak_memory_mb

#: Operators without attention: their cost is one element-wise op or a 1×1 conv.
ELEMENTWISE = ("add", "concat", "weighted_sum", "max")

#: Stride-8 maps of 120×160, 240×320 and 480×640 images.
DEFAULT_MAP_SIZES = ((15, 20), (30, 40), (60, 80))


@dataclass
class ScalingRow:
    """One operator at one map size; ratios are per pixel, relative to the smallest size."""

    operator: str
    height: int
    width: int
    channels: int
    batch: int
    forward_ms: float
    train_ms: float
    peak_memory_mb: float
    forward_per_pixel_ratio: float = 1.0
    train_per_pixel_ratio: float = 1.0
    memory_per_pixel_ratio: float = 1.0


def attention_operators() -> dict[str, Callable[[int], nn.Module]]:
    """The fusion and rectification operators of the catalogue that are not element-wise."""
    from rgbx_fusion.models.fusion import FUSIONS, RECTIFIERS

    catalogue: dict[str, Callable[[int], nn.Module]] = {**FUSIONS, **RECTIFIERS}
    return {name: cls for name, cls in catalogue.items() if name not in ELEMENTWISE}


def _scalar(out: Tensor | tuple[Tensor, ...]) -> Tensor:
    parts = out if isinstance(out, tuple) else (out,)
    return torch.stack([p.float().mean() for p in parts]).sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_training_memory(module: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> float:
    """Peak memory (MB) of one forward + backward pass above what was allocated before."""
    module.train()
    module.zero_grad(set_to_none=True)
    peak = peak_memory_mb(lambda: _scalar(module(x, y)).backward(), device)
    module.zero_grad(set_to_none=True)
    return peak


def measure_scaling(
    name: str,
    factory: Callable[[int], nn.Module],
    sizes: Sequence[tuple[int, int]] = DEFAULT_MAP_SIZES,
    channels: int = 64,
    batch: int = 2,
    device: torch.device | None = None,
    warmup: int = 2,
    iters: int = 5,
    clock: str = "wall",
) -> list[ScalingRow]:
    """Time and peak memory of one operator at each map size, with per-pixel ratios.

    Timings are medians of ``iters`` repeats after ``warmup``; each repeat runs
    every size once (interleaved), inference (eval, no grad) then a training pass.
    ``batch`` is at least 2 for operators with batch norm on pooled features.
    ``clock`` is ``wall`` or ``cpu`` (:data:`rgbx_fusion.bench.benchmark.CLOCKS`).
    """
    from rgbx_fusion.bench.benchmark import timer

    timed = timer(clock, device or torch.device("cpu"))
    device = device or torch.device("cpu")
    module = factory(channels).to(device)
    inputs = [
        (
            torch.randn(batch, channels, h, w, device=device),
            torch.randn(batch, channels, h, w, device=device),
        )
        for h, w in sizes
    ]

    def forward(x: Tensor, y: Tensor) -> None:
        module.eval()
        with torch.no_grad():
            module(x, y)

    def train(x: Tensor, y: Tensor) -> None:
        module.train()
        module.zero_grad(set_to_none=True)
        _scalar(module(x, y)).backward()

    fwd: list[list[float]] = [[] for _ in sizes]
    trn: list[list[float]] = [[] for _ in sizes]
    for repeat in range(warmup + iters):
        for i, (x, y) in enumerate(inputs):
            t_fwd = timed(partial(forward, x, y))
            t_trn = timed(partial(train, x, y))
            if repeat >= warmup:
                fwd[i].append(t_fwd)
                trn[i].append(t_trn)
    rows = [
        ScalingRow(
            name,
            h,
            w,
            channels,
            batch,
            statistics.median(fwd[i]) * 1e3,
            statistics.median(trn[i]) * 1e3,
            peak_training_memory(module, *inputs[i], device),
        )
        for i, (h, w) in enumerate(sizes)
    ]
    return with_ratios(rows)


def with_ratios(rows: Sequence[ScalingRow]) -> list[ScalingRow]:
    """Set each row's per-pixel ratios against the row with the fewest pixels."""
    first = min(rows, key=lambda r: r.height * r.width)
    n0 = first.height * first.width
    out = []
    for r in rows:
        scale = n0 / (r.height * r.width)
        r.forward_per_pixel_ratio = r.forward_ms / first.forward_ms * scale
        r.train_per_pixel_ratio = r.train_ms / first.train_ms * scale
        r.memory_per_pixel_ratio = r.peak_memory_mb / max(first.peak_memory_mb, 1e-12) * scale
        out.append(r)
    return out


def scaling_report(rows: Sequence[ScalingRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
