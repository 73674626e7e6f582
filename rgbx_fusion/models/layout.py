"""Memory layouts of 4-D maps: which one a tensor uses, and changing it without a
mixed-layout backward."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D map is stored ``channels_last`` (and not also plain contiguous)."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels_last map, else ``torch.contiguous_format``."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


class _Relayout(torch.autograd.Function):
    """``x`` stored in a given layout; the backward stores the gradient like ``x``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, layout: torch.memory_format
    ) -> Tensor:
        ctx.source = memory_format_of(x)  # type: ignore[attr-defined]
        if x.is_contiguous(memory_format=layout):
            return x.view_as(x)  # a function's output must be a new tensor
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.contiguous(memory_format=ctx.source), None  # type: ignore[attr-defined]


def stored_as(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x.contiguous(memory_format=layout)`` whose gradient reaches ``x`` stored like ``x``.

    ``contiguous`` passes its gradient back unchanged, in the new layout: the layers
    before it would then run their backward on mixed layouts (batch norm's CPU
    backward is 5–25× slower so), or add it to a gradient in the other layout.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x.contiguous(memory_format=layout)
    return cast(Tensor, _Relayout.apply(x, layout))
