"""FLOP counting with ``torch.utils.flop_counter``.

Convention: one multiply-add counts as **2 FLOPs** (PyTorch's counter; fvcore and
many papers count multiply-adds instead, i.e. half of this number). Only matmul,
convolution and attention kernels are counted; element-wise work is not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (eval mode, no grad)."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def parse_size(text: str) -> tuple[int, int]:
    """``"120x160"`` → ``(120, 160)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"expected a size like 120x160, got {text!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return h, w
