"""FLOP counting with ``torch.utils.flop_counter``.

Convention: one multiply-add counts as **2 FLOPs** (PyTorch's counter; fvcore and
many papers count multiply-adds instead, i.e. half of this number). Only matmul,
convolution and attention kernels are counted; element-wise work is not. The
in-place batched multiply-accumulate (``baddbmm_``, which the fusions use to sum
split-weight products into one output) is counted like its out-of-place form;
PyTorch's table leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def _baddbmm_flops(
    self_shape: Any, a_shape: Sequence[int], b_shape: Sequence[int], *args: Any, **kwargs: Any
) -> int:
    """``out += a @ b`` for (B, M, K) @ (B, K, N): 2·B·M·K·N (the add is element-wise)."""
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[-1]


#: Formulas PyTorch's counter lacks, keyed like its own table.
EXTRA_FORMULAS = {torch.ops.aten.baddbmm_: _baddbmm_flops}


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (eval mode, no grad)."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
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
