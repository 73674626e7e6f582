"""Token cross-attention fusion, plus the copy-free token helpers the attention fusions share.

Layout: an NCHW map ``x`` is read as tokens through the view
``x.flatten(2).transpose(1, 2)`` (B, N, C), N = H·W, without copying. Token
outputs inside a fusion are returned to NCHW by the inverse view, an NCHW tensor
in ``channels_last`` memory that convolutions and element-wise ops accept as is.
A fusion's result is stored like its inputs (:func:`project_to_map`): the layers
after it then run on the layout they were built for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, check_pair
from rgbx_fusion.models.layout import is_channels_last, stored_as


def to_tokens(x: Tensor) -> Tensor:
    """View a map as tokens (no copy). Shape: (B, C, H, W) -> (B, H·W, C)."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """View tokens as a map (no copy). Shape: (B, H·W, C) -> (B, C, H, W)."""
    return tokens.transpose(1, 2).unflatten(2, size)


def _weight_parts(layer: nn.Linear | nn.Conv2d, parts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The (C_out, C_i) column blocks of ``layer``'s weight that act on each token part."""
    if isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1):
        raise ValueError(f"only 1x1 convolutions act on tokens, got {layer.kernel_size}")
    weight = layer.weight.flatten(1)
    widths = [part.shape[-1] for part in parts]
    if sum(widths) != weight.shape[1]:
        raise ValueError(f"token parts have {widths} channels, the layer takes {weight.shape[1]}")
    return weight.split(widths, dim=1)


def matmul_sum(pairs: list[tuple[Tensor, Tensor]], bias: Tensor | None = None) -> Tensor:
    """``Σ_i a_i @ b_i (+ bias)`` for batched operands, accumulated into the first product.

    In place is safe: neither bmm nor baddbmm saves its output for backward. The
    casts match autocast, which picks the output dtype for bmm but skips in-place ops.
    """
    (a0, b0), *rest = pairs
    out = torch.bmm(a0, b0)
    for a, b in rest:
        out = out.baddbmm_(a.to(out.dtype), b.to(out.dtype))
    return out if bias is None else out.add_(bias.to(out.dtype))


def project_tokens(layer: nn.Linear | nn.Conv2d, *parts: Tensor) -> Tensor:
    """``layer`` (a Linear or a 1×1 conv) applied to the channel concatenation of token parts.

    Computes ``linear(torch.cat(parts, dim=-1))`` without copying or
    concatenating: ``F.linear`` would first make a strided token view (the
    transpose of an NCHW map) contiguous, and a concatenation is a copy too.
    Batched matmuls against row slices of the transposed weight read the views
    in place and accumulate into one contiguous output.

    Shape:
        parts: (B, N, C_i) each, sum of C_i = input channels of ``layer`` -> (B, N, C_out)
    """
    return tokens_linear(_weight_parts(layer, parts), layer.bias, parts)


def tokens_linear(
    weights: tuple[Tensor, ...] | list[Tensor], bias: Tensor | None, parts: tuple[Tensor, ...]
) -> Tensor:
    """``Σ_i parts_i · weights_iᵀ + bias``, weights_i (C_out, C_i), as in :func:`project_tokens`."""
    batch = parts[0].shape[0]
    pairs = [(p, w.t().expand(batch, -1, -1)) for p, w in zip(parts, weights, strict=True)]
    return matmul_sum(pairs, bias)


def tokens_of(x: Tensor) -> Tensor:
    """:func:`to_tokens` whose gradient reaches ``x`` stored like ``x``.

    Gradients through the token view come back as contiguous tokens, a channels_last
    map: added to the NCHW gradient that the same map receives elsewhere (the next
    backbone stage), and used by the layers before it, they would cost transposing
    passes. One copy into the map's own layout replaces them.
    """
    if is_channels_last(x):
        return to_tokens(x)
    return to_tokens(stored_as(x, torch.contiguous_format))


def project_to_map(
    layer: nn.Linear | nn.Conv2d, parts: tuple[Tensor, ...], size: tuple[int, int], like: Tensor
) -> Tensor:
    """:func:`project_tokens` returned as a map stored like ``like`` (NCHW or channels_last).

    For an NCHW result the product is taken the other way round, ``W · [parts]ᵀ``,
    on the transposed token views: the (B, C_out, N) output is the NCHW map, with no
    layout copy, and each part's gradient comes back stored like the part
    (:class:`_ChannelMajorProduct`). Fusions return their inputs' layout this way,
    so that the decoder after them runs on the layout it would get from plain fusion.

    Shape:
        parts: one or two (B, N, C_i), token-major or the token view of an NCHW map,
        N = H·W -> (B, C_out, H, W)
    """
    if len(parts) > 2:
        raise ValueError(f"project_to_map takes one or two token parts, got {len(parts)}")
    if is_channels_last(like):
        return to_map(project_tokens(layer, *parts), size)
    weights = _weight_parts(layer, parts)
    second = (weights[1], parts[1]) if len(parts) == 2 else (None, None)
    out: Tensor = _ChannelMajorProduct.apply(layer.bias, weights[0], parts[0], *second)
    return out.unflatten(2, size)


class _ChannelMajorProduct(torch.autograd.Function):
    """``W_1 · P_1ᵀ (+ W_2 · P_2ᵀ) + b`` for token parts ``P_i`` (B, N, C_i): (B, C_out, N).

    Autograd's backward of the bmm would return each part's gradient as the
    transpose of a (B, C_i, N) product, a channel-major tensor for token-major
    parts: the layers before would then copy it back (a layer norm does) or run
    on mixed layouts (an activation or a depthwise conv; this transpose is the
    5× slower direction on CPU). Here each gradient is the product taken in the
    part's own orientation, so it comes out stored like the part, with no copy.
    One or two parts (a fixed signature, which ``torch.compile`` traces).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        bias: Tensor | None,
        w1: Tensor,
        p1: Tensor,
        w2: Tensor | None,
        p2: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(w1, p1, w2, p2)  # type: ignore[arg-type]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        batch = p1.shape[0]
        pairs = [(w1.expand(batch, -1, -1), p1.transpose(1, 2))]
        if w2 is not None and p2 is not None:
            pairs.append((w2.expand(batch, -1, -1), p2.transpose(1, 2)))
        return matmul_sum(pairs, None if bias is None else bias[:, None])

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        w1, p1, w2, p2 = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        has_bias: bool = ctx.has_bias  # type: ignore[attr-defined]
        bias_grad = grad.sum(dim=(0, 2)) if has_bias and needs[0] else None

        def grads(
            w: Tensor | None, p: Tensor | None, need_w: bool, need_p: bool
        ) -> tuple[Tensor | None, Tensor | None]:
            if w is None or p is None:
                return None, None
            weight = torch.bmm(grad, p.to(grad.dtype)).sum(0) if need_w else None
            if not need_p:
                return weight, None
            w_b = w.to(grad.dtype).expand(grad.shape[0], -1, -1)
            if p.stride(-1) == 1:  # token-major part: (B, N, C_i) = Gᵀ W
                part = torch.bmm(grad.transpose(1, 2), w_b)
            else:  # channel-major part (an NCHW map's token view): (B, C_i, N) = Wᵀ G
                part = torch.bmm(w_b.transpose(1, 2), grad).transpose(1, 2)
            return weight, part

        return (bias_grad, *grads(w1, p1, *needs[1:3]), *grads(w2, p2, *needs[3:5]))


def default_heads(channels: int) -> int:
    """About one head per 64 channels (MiT-B1..B5 widths give 1, 2, 5, 8), dividing ``channels``."""
    heads = max(1, channels // 64)
    while channels % heads:
        heads -= 1
    return heads


class CrossAttention(nn.Module):
    """One direction of multi-head cross attention: queries from one stream, keys/values
    from the other, keys/values optionally spatially reduced (PVT-style).

    Equation, per head with ``d = C / heads``::

        R   = LN_sr(conv_{r×r, stride r}(pad(X_kv)))   (or X_kv tokens when r = 1)
        Q   = X_q W_q + b_q;  K = R W_k + b_k;  V = R W_v + b_v
        out = (softmax(Q Kᵀ / √d) V) W_o + b_o

    Maps whose sides are not multiples of ``r`` are zero-padded on the bottom
    and right before the reduction, as a convolution pads its border.

    Shape:
        q_tokens: (B, N, C); kv_tokens: (B, N, C); size: (H, W), N = H·W -> (B, N, C)
    """

    def __init__(self, channels: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        self.sr: nn.Conv2d | None = None
        self.sr_norm: nn.LayerNorm | None = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(channels, channels, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(channels)

    def reduce(self, kv_tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """Spatially reduce the key/value tokens. Shape: (B, N, C) -> (B, M, C)."""
        if self.sr is None or self.sr_norm is None:
            return kv_tokens
        r = self.sr_ratio
        kv_map = to_map(kv_tokens, size)
        pad_h, pad_w = -size[0] % r, -size[1] % r
        if pad_h or pad_w:
            kv_map = F.pad(kv_map, (0, pad_w, 0, pad_h))
        return self.sr_norm(to_tokens(self.sr(kv_map)))

    def forward(self, q_tokens: Tensor, kv_tokens: Tensor, size: tuple[int, int]) -> Tensor:
        b, n, c = q_tokens.shape
        h = self.num_heads
        kv_tokens = self.reduce(kv_tokens, size)
        # (B, N, h, d) -> (B, h, N, d) is a strided view; SDPA reads it in place.
        q = project_tokens(self.q, q_tokens).view(b, n, h, c // h).transpose(1, 2)
        kv = project_tokens(self.kv, kv_tokens).view(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        # The fused SDPA kernels return (B, h, N, d) in (B, N, h, d) memory: a free reshape.
        return project_tokens(self.proj, out.transpose(1, 2).reshape(b, n, c))


class CrossAttentionFusion(FusionBase):
    """Bidirectional multi-head cross attention (rgb→aux and aux→rgb), then a linear merge.

    Equation, with ``T`` the tokens of a map and pre-norms ``LN_r``, ``LN_a``::

        Y_rgb = T_rgb + A_ra(LN_r(T_rgb), LN_a(T_aux))   # rgb queries attend to aux
        Y_aux = T_aux + A_ar(LN_a(T_aux), LN_r(T_rgb))   # aux queries attend to rgb
        Z     = [Y_rgb; Y_aux] W_f + b_f                 # 2C -> C

    where each ``A`` is a :class:`CrossAttention` (with output projection) whose
    keys/values are reduced by a strided conv of ratio ``sr_ratio``. Cost per
    direction is O(N · N / sr_ratio² · C).

    The output is stored like the inputs (NCHW or ``channels_last``, see
    :func:`project_to_map`); ``channels_last`` inputs also spare the one copy the
    pre-norms need.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        num_heads: attention heads; default about one per 64 channels (see
            :func:`default_heads`).
        sr_ratio: key/value reduction ratio. The default 4 keeps a 1/4-scale map
            of 480×640 input (19,200 tokens) at 1,200 keys; PVT/MiT use 8, 4, 2, 1
            at strides 4, 8, 16, 32, which per-stage factories can reproduce.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "bidirectional multi-head cross attention with spatially reduced keys/values"

    def __init__(self, channels: int, num_heads: int | None = None, sr_ratio: int = 4) -> None:
        super().__init__(channels)
        heads = default_heads(channels) if num_heads is None else num_heads
        self.norm_rgb = nn.LayerNorm(channels)
        self.norm_aux = nn.LayerNorm(channels)
        self.rgb_from_aux = CrossAttention(channels, heads, sr_ratio)
        self.aux_from_rgb = CrossAttention(channels, heads, sr_ratio)
        self.fuse = nn.Linear(2 * channels, channels)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        size = (x_rgb.shape[-2], x_rgb.shape[-1])
        t_rgb, t_aux = to_tokens(x_rgb), to_tokens(x_aux)
        n_rgb, n_aux = self.norm_rgb(t_rgb), self.norm_aux(t_aux)
        # Out of place so that autocast keeps the residual stream in full precision;
        # the contiguous operand goes first so that the sum is contiguous too.
        y_rgb = self.rgb_from_aux(n_rgb, n_aux, size) + t_rgb
        y_aux = self.aux_from_rgb(n_aux, n_rgb, size) + t_aux
        return project_to_map(self.fuse, (y_rgb, y_aux), size, x_rgb)

    def extra_repr(self) -> str:
        attn = self.rgb_from_aux
        return f"{super().extra_repr()}, num_heads={attn.num_heads}, sr_ratio={attn.sr_ratio}"
