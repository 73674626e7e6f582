"""Autograd functions of CMX's feature rectification (FRM) with hand-written backwards.

Both compute exactly what the autograd graph of their forward would, with fewer
full-size passes over the (B, C, H, W) maps in the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgbx_fusion.models.layout import memory_format_of


class MeanMax(torch.autograd.Function):
    """Global average and max pooling. Shape: (B, C, H, W) -> ((B, C), (B, C)).

    The backward writes the map-sized gradient once: the mean's share broadcast,
    the max's added at the arg-max (autograd's would divide a broadcast, zero-fill
    a second map, scatter into it and add the two).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.flatten(2)
        peak, where = flat.max(dim=2)
        # x itself, not its shape and layout as ctx attributes: those hold symbolic
        # sizes under torch.compile with dynamic shapes, which its tracer cannot pass
        # to the backward. x costs no memory: the FRM's cross-over saves it too.
        ctx.save_for_backward(x, where)
        return flat.mean(dim=2), peak

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g_mean: Tensor, g_max: Tensor) -> Tensor:
        x, where = ctx.saved_tensors  # type: ignore[attr-defined]
        shape = x.shape
        fmt = memory_format_of(x)
        grad = torch.empty(shape, dtype=g_mean.dtype, device=g_mean.device, memory_format=fmt)
        grad.copy_((g_mean / (shape[2] * shape[3]))[..., None, None].expand(shape))
        # flatten(2) of a contiguous or channels_last map is a view: the scatter lands in grad.
        grad.flatten(2).scatter_add_(2, where[..., None], g_max[..., None].to(grad.dtype))
        return grad


def corrected(base: Tensor, other: Tensor, cw: Tensor, sw: Tensor, lc: float, ls: float) -> Tensor:
    """``base + other ⊙ (lc·cw + ls·sw)`` in two passes, the second in place when all
    operands share a dtype (so the result's dtype is the one out-of-place ops give)."""
    out = torch.addcmul(base, other, cw, value=lc)
    if other.dtype == out.dtype and sw.dtype == out.dtype:
        return out.addcmul_(other, sw, value=ls)
    return torch.addcmul(out, other, sw, value=ls)


class CrossOver(torch.autograd.Function):
    """The FRM's correction of each stream by the other::

        out_1 = x_1 + x_2 ⊙ (λ_c·cw_1 + λ_s·sw_1);  out_2 = x_2 + x_1 ⊙ (λ_c·cw_0 + λ_s·sw_0)

    Forward: two fused multiply-adds per output, no full-size weight map. Backward:
    one product ``g_i ⊙ x_j`` per side, reduced over H·W for ``cw`` and over C for
    ``sw``, and two multiply-adds per input gradient (autograd's backward of the
    four ``addcmul`` takes about twice the full-size passes).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x1: Tensor,
        x2: Tensor,
        cw0: Tensor,
        cw1: Tensor,
        sw0: Tensor,
        sw1: Tensor,
        lambda_c: float,
        lambda_s: float,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x1, x2, cw0, cw1, sw0, sw1)
        ctx.lambdas = (lambda_c, lambda_s)  # type: ignore[attr-defined]
        out1 = corrected(x1, x2, cw1, sw1, lambda_c, lambda_s)
        return out1, corrected(x2, x1, cw0, sw0, lambda_c, lambda_s)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, g1: Tensor, g2: Tensor
    ) -> tuple[Tensor | None, ...]:
        x1, x2, cw0, cw1, sw0, sw1 = ctx.saved_tensors  # type: ignore[attr-defined]
        lc, ls = ctx.lambdas  # type: ignore[attr-defined]

        def weight_grads(g: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
            q = g * other
            return q.sum(dim=(2, 3), keepdim=True).mul_(lc), q.sum(dim=1, keepdim=True).mul_(ls)

        g_cw1, g_sw1 = weight_grads(g1, x2)
        g_cw0, g_sw0 = weight_grads(g2, x1)
        # d out_1 / d x_1 = 1 and d out_2 / d x_1 = λ_c·cw_0 + λ_s·sw_0: the forward's form.
        g_x1 = corrected(g1, g2, cw0, sw0, lc, ls)
        g_x2 = corrected(g2, g1, cw1, sw1, lc, ls)
        return g_x1, g_x2, g_cw0, g_cw1, g_sw0, g_sw1, None, None
