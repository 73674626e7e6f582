"""CMX's feature rectification (FRM) and feature fusion (FFM) modules.

Written from the equations of Zhang et al., "CMX: Cross-Modal Fusion for RGB-X
Semantic Segmentation with Transformers". Sub-module names are the official
implementation's, so its checkpoints map one-to-one (``C' = C / reduction``):

    FRM  channel_weights.mlp.{0,2}            Linear 4C→4C', 4C'→2C
         spatial_weights.mlp.{0,2}            Conv1×1 2C→C', C'→2
    FFM  cross.channel_proj1/2                Linear C→2C'
         cross.cross_attn.kv1/kv2             Linear C'→2C', no bias
         cross.end_proj1/2                    Linear 2C'→C
         cross.norm1/2                        LayerNorm(C), eps 1e-5
         channel_emb.residual                 Conv1×1 2C→C, no bias
         channel_emb.channel_embed.{0,1,3,4}  Conv1×1 2C→C', dw3×3, Conv1×1 C'→C, BN
         channel_emb.norm                     BatchNorm2d(C)

The FFM is computed with the same algebra in a cheaper order (see
:class:`ContextCrossAttention` and :class:`CrossPath`): no token permutes,
no per-head reshapes and no concatenation of full-size maps. Its output is
stored like its inputs, and every batch norm sees input and gradient in one
layout (mixed layouts make batch norm's CPU backward 5–25× slower). Every 1×1
conv runs as a matmul on token views, writing its result in the layout asked for
and returning gradients in its inputs' layouts (:func:`project_to_map`), so no
layout copy is made inside the FFM. The FRM's pooling and cross-over have
hand-written backwards (:mod:`~rgbx_fusion.models.fusion.rectify_ops`) that make
about half the full-size passes of autograd's.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase, check_pair
from rgbx_fusion.models.fusion.cross_attention import (
    default_heads,
    matmul_sum,
    project_to_map,
    project_tokens,
    to_map,
    to_tokens,
    tokens_linear,
    tokens_of,
)
from rgbx_fusion.models.fusion.rectify_ops import CrossOver, MeanMax


class ChannelWeights(nn.Module):
    """FRM channel weights. Shape: x1, x2: (B, C, H, W) -> (cw0, cw1): (B, C, 1, 1) each."""

    def __init__(self, channels: int, reduction: int = 1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4 * channels, 4 * channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(4 * channels // reduction, 2 * channels),
            nn.Sigmoid(),
        )

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        # Pooling concat(x1, x2) is pooling each stream: the full 2C map is never built.
        mean1, max1 = cast(tuple[Tensor, Tensor], MeanMax.apply(x1))
        mean2, max2 = cast(tuple[Tensor, Tensor], MeanMax.apply(x2))
        pooled = torch.cat([mean1, mean2, max1, max2], dim=1)
        w = self.mlp(pooled)[..., None, None]
        cw0, cw1 = w.chunk(2, dim=1)
        return cw0, cw1


class SpatialWeights(nn.Module):
    """FRM spatial weights. Shape: x1, x2: (B, C, H, W) -> (sw0, sw1): (B, 1, H, W) each."""

    def __init__(self, channels: int, reduction: int = 1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        first, second = (cast(nn.Conv2d, self.mlp[i]) for i in (0, 2))
        size = (x1.shape[-2], x1.shape[-1])
        # The 1×1 convs as matmuls on the maps' token views, stored like x1: conv(concat)
        # accumulates both halves into one output, and the backward neither zero-fills
        # nor reorders an input-sized gradient (thnn's 1×1 conv backward does both).
        # Out-of-place ReLU: in place on the map view of a custom function's output,
        # autograd would zero-fill and copy a full-size gradient.
        hidden = project_to_map(first, (to_tokens(x1), to_tokens(x2)), size, x1).relu()
        sw = project_to_map(second, (to_tokens(hidden),), size, x1).sigmoid()
        sw0, sw1 = sw.chunk(2, dim=1)
        return sw0, sw1


class FeatureRectify(RectifyBase):
    """CMX feature rectification module (FRM): each stream is corrected by the other.

    Equation, with ``P = [GAP(X_1); GAP(X_2); GMP(X_1); GMP(X_2)]`` (4C)::

        (cw_0, cw_1) = split_C(sigmoid(W_2 ReLU(W_1 P + b_1) + b_2))            (B, C, 1, 1)
        (sw_0, sw_1) = split(sigmoid(V_2 ReLU(V_1 [X_1; X_2] + c_1) + c_2))    (B, 1, H, W)
        X_1' = X_1 + λ_c · cw_1 · X_2 + λ_s · sw_1 · X_2
        X_2' = X_2 + λ_c · cw_0 · X_1 + λ_s · sw_0 · X_1

    ``X_1`` is the RGB stream and ``X_2`` the auxiliary one.

    Args:
        channels: channel count ``C`` of both streams.
        reduction: hidden-width divisor of both weight MLPs (CMX: 1).
        lambda_c: weight of the channel-wise correction (CMX: 0.5).
        lambda_s: weight of the spatial correction (CMX: 0.5).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> ((B, C, H, W), (B, C, H, W))
    """

    summary = "CMX FRM: channel- and spatial-weighted cross-over of the two streams"

    def __init__(
        self, channels: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5
    ) -> None:
        super().__init__(channels)
        if channels <= 0:
            raise ValueError(f"FeatureRectify: channels must be positive, got {channels}")
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        self.channel_weights = ChannelWeights(channels, reduction)
        self.spatial_weights = SpatialWeights(channels, reduction)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        check_pair(self, x_rgb, x_aux, self.channels)
        cw0, cw1 = self.channel_weights(x_rgb, x_aux)
        sw0, sw1 = self.spatial_weights(x_rgb, x_aux)
        out = CrossOver.apply(x_rgb, x_aux, cw0, cw1, sw0, sw1, self.lambda_c, self.lambda_s)
        return cast(tuple[Tensor, Tensor], out)


class _Gram(torch.autograd.Function):
    """``uᵀu`` per batch item, whose gradient ``u (g + gᵀ)`` is one matmul (autograd's
    backward of ``bmm(uᵀ, u)`` takes two and a strided add)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.bmm(u.transpose(1, 2), u)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.bmm(u, (grad + grad.transpose(1, 2)).to(u.dtype))


class ContextCrossAttention(nn.Module):
    """CMX's cross attention with a global d×d context per head (cost linear in N).

    Per head ``h`` (``d = C'/heads``), with ``K_i = U_i W_k,iᵀ`` and ``V_i = U_i W_v,iᵀ``
    the bias-free ``kv_i`` projections::

        ctx_i = softmax_over_key_channels(K_iᵀ V_i / √d)   (d × d)

    Because the projections have no bias, ``K_iᵀ V_i = W_k,i (U_iᵀ U_i) W_v,iᵀ``:
    one C'×C' Gram matrix per stream replaces the N×2C' key/value tensor. The
    per-head blocks are the diagonal blocks of the full C'×C' product; the others
    are masked out of the softmax (they are exactly zero after it).
    """

    head_mask: Tensor

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.kv1 = nn.Linear(channels, 2 * channels, bias=False)
        self.kv2 = nn.Linear(channels, 2 * channels, bias=False)
        block = torch.ones(channels // num_heads, channels // num_heads, dtype=torch.bool)
        off_head = ~torch.block_diag(*[block] * num_heads)
        self.register_buffer("head_mask", off_head, persistent=False)

    def context(self, kv: nn.Linear, u: Tensor) -> Tensor:
        """Block-diagonal context of one stream. Shape: (B, N, C') -> (B, C', C')."""
        w_k, w_v = kv.weight.chunk(2, dim=0)
        if u.shape[1] >= u.shape[2]:
            # Many tokens: the C'×C' Gram matrix costs B·N·C'² once, then B·C'³.
            gram = cast(Tensor, _Gram.apply(u))
            ctx = (w_k @ gram @ w_v.t()) * self.scale
        else:
            # Few tokens (deep stages): K and V directly, B·N·C'² each, no C'³ term.
            ctx = torch.bmm((u @ w_k.t()).transpose(1, 2), u @ w_v.t()) * self.scale
        if self.num_heads > 1:
            ctx = ctx.masked_fill(self.head_mask, float("-inf"))
        return ctx.softmax(dim=-2)

    def forward(self, u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
        """Contexts of both streams. Queries are the tokens themselves: ``v1 = u1 · ctx2``,
        ``v2 = u2 · ctx1``; the caller folds that product into its output projection.
        """
        return self.context(self.kv1, u1), self.context(self.kv2, u2)


class CrossPath(nn.Module):
    """FFM stage 1 on tokens (``C' = C / reduction``)::

        [Y_i | U_i] = ReLU(T_i P_iᵀ + p_i)                 (B, N, 2C'), channel_proj_i
        V_1 = U_1 · ctx_2;  V_2 = U_2 · ctx_1               ctx from ContextCrossAttention
        O_i = LN_i(T_i + [Y_i | V_i] E_iᵀ + e_i)            end_proj_i, norm_i

    Computed as ``Y_i E_i,yᵀ + U_i (ctx_j E_i,vᵀ)``, accumulated into one output:
    neither ``V_i`` nor the concatenation is materialised.

    Shape:
        t1, t2: (B, N, C) -> (B, N, C) each
    """

    def __init__(self, channels: int, reduction: int = 1, num_heads: int = 1) -> None:
        super().__init__()
        inner = channels // reduction
        self.channel_proj1 = nn.Linear(channels, 2 * inner)
        self.channel_proj2 = nn.Linear(channels, 2 * inner)
        self.cross_attn = ContextCrossAttention(inner, num_heads)
        self.end_proj1 = nn.Linear(2 * inner, channels)
        self.end_proj2 = nn.Linear(2 * inner, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)

    @staticmethod
    def _project(proj: nn.Linear, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(Y, U)`` as two matmuls on the weight's row halves: each half gets its own
        gradient, where slicing one (B, N, 2C') output would zero-fill a full-size
        gradient for each slice and add them up."""
        w_y, w_u = proj.weight.chunk(2, dim=0)
        b_y, b_u = proj.bias.chunk(2, dim=0)
        # relu_ in place: neither bmm nor the bias add keeps its output for backward.
        return tokens_linear([w_y], b_y, (t,)).relu_(), tokens_linear([w_u], b_u, (t,)).relu_()

    @staticmethod
    def _end(end_proj: nn.Linear, y: Tensor, u: Tensor, ctx: Tensor) -> Tensor:
        e_y, e_v = end_proj.weight.chunk(2, dim=1)  # (C, C') each
        if u.shape[1] >= u.shape[2]:
            # Fold ctx into the projection (B·C'²·C) instead of building V (B·N·C'²).
            pairs = [(y, e_y.t().expand(y.shape[0], -1, -1)), (u, ctx @ e_v.t())]
            return matmul_sum(pairs, end_proj.bias)
        return tokens_linear([e_y, e_v], end_proj.bias, (y, torch.bmm(u, ctx)))

    def forward(self, t1: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
        y1, u1 = self._project(self.channel_proj1, t1)
        y2, u2 = self._project(self.channel_proj2, t2)
        ctx1, ctx2 = self.cross_attn(u1, u2)
        # Residual out of place (full precision under autocast), contiguous operand first.
        o1 = self.norm1(self._end(self.end_proj1, y1, u1, ctx2) + t1)
        o2 = self.norm2(self._end(self.end_proj2, y2, u2, ctx1) + t2)
        return o1, o2


class ChannelEmbed(nn.Module):
    """FFM stage 2 on the concatenated streams (2C → C), BN-normalised, no activation::

        Z = BN(R [O_1; O_2] + BN_e(W_3 ReLU(DW_3×3(W_0 [O_1; O_2] + b_0)) + b_3))

    Shape:
        o1, o2: (B, N, C) tokens, size (H, W) -> (B, C, H, W), stored like ``like``
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1) -> None:
        super().__init__()
        hidden = out_channels // reduction
        self.residual = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, o1: Tensor, o2: Tensor, size: tuple[int, int], like: Tensor) -> Tensor:
        # The 1×1 convs run on tokens as matmuls: the two on [O_1; O_2] with split
        # weights, so the concatenation is never built. The depthwise conv runs on a
        # channels_last map (its fast layout); the last 1×1 conv and the residual write
        # their results in the layout of ``like``, and their backwards return gradients
        # in the layout of their inputs. No layout copy; every batch norm sees one layout.
        residual = project_to_map(self.residual, (o1, o2), size, like)
        first, last = (cast(nn.Conv2d, self.channel_embed[i]) for i in (0, 3))
        hidden = self.channel_embed[1:3](to_map(project_tokens(first, o1, o2), size))
        embed = self.channel_embed[4](project_to_map(last, (to_tokens(hidden),), size, like))
        return self.norm(residual + embed)


class CMXFusion(FusionBase):
    """CMX feature fusion module (FFM): cross attention on tokens, then channel embedding.

    Equation: ``(O_rgb, O_aux) = CrossPath(T_rgb, T_aux)`` (:class:`CrossPath`,
    :class:`ContextCrossAttention`), then ``Z = ChannelEmbed([O_rgb; O_aux])``
    (:class:`ChannelEmbed`). The output is stored like the inputs (NCHW or
    ``channels_last``); both layouts are read in place.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        num_heads: attention heads; CMX uses 1, 2, 5, 8 for its four stages. The
            default (about one per 64 channels) gives exactly those for MiT-B1..B5.
        reduction: inner-width divisor (CMX: 1).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "CMX FFM: linear-cost cross attention on tokens, then channel embedding"

    def __init__(self, channels: int, num_heads: int | None = None, reduction: int = 1) -> None:
        super().__init__(channels)
        heads = default_heads(channels // reduction) if num_heads is None else num_heads
        self.cross = CrossPath(channels, reduction, heads)
        self.channel_emb = ChannelEmbed(2 * channels, channels, reduction)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        size = (x_rgb.shape[-2], x_rgb.shape[-1])
        o_rgb, o_aux = self.cross(tokens_of(x_rgb), tokens_of(x_aux))
        return self.channel_emb(o_rgb, o_aux, size, x_rgb)
