"""N-stream fusions: combine the RGB stream with any number of aux streams, some absent.

Every operator takes ``streams`` (N same-shaped maps, ``streams[0]`` the reference, RGB in
:class:`~rgbx_fusion.models.multimodal.MultiModalSegmenter`) and ``present`` (B, N) bool,
and handles an absent stream explicitly instead of feeding it as zeros and hoping:

* sum / mean: the absent stream leaves the sum, which is renormalised over the present
  streams (``N / n_present`` for the sum, ``1 / n_present`` for the mean);
* weighted, gated, channel attention: the absent stream's softmax weight is masked out
  before normalisation, so the weights of the present streams sum to one;
* max: the absent stream takes no part in the maximum;
* concat (and the gate / attention predictors that read a concatenation): the absent
  slot is zeroed and the stream's *absence indicator* enters the 1×1 projection as a
  learned bias per stream (:class:`PresenceProjection`), so "absent" is a signal of its
  own, distinct from "present with zero features".

Absent values are removed with ``torch.where`` (never by multiplying with the mask), so
even NaN or inf there cannot reach the output or the gradients. All masking is
branch-free: no Python control flow depends on ``present``, so the operators export with
``torch.export``. Pairwise :class:`FusionBase` operators (CMX, cross-attention, iAFF, ...)
join them through :mod:`rgbx_fusion.models.fusion.multi_pairwise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from rgbx_fusion.models.fusion.channel_attention import reduced_channels


def capturing_graph() -> bool:
    """Whether a graph is being captured (``torch.export``, ``torch.compile``, tracing).

    Eager-only shortcuts that read ``present`` (skipping a module for an absent stream)
    are taken only when this is false; the captured graph uses the branch-free masks.
    """
    return bool(
        torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def all_present(streams: Sequence[Tensor], present: Tensor | None) -> Tensor:
    """``present`` as a (B, N) bool tensor; ``None`` means every stream of every sample."""
    if present is not None:
        return present if present.dtype == torch.bool else present != 0
    x = streams[0]
    return torch.ones(x.shape[0], len(streams), dtype=torch.bool, device=x.device)


def drop_absent(x: Tensor, present: Tensor, fill: Tensor | float = 0.0) -> Tensor:
    """``x`` where the sample's stream is present, ``fill`` elsewhere (NaN-safe).

    Shape:
        x: (B, C, H, W); present: (B,) bool; fill: scalar or broadcastable -> (B, C, H, W)
    """
    value = fill if isinstance(fill, Tensor) else x.new_tensor(fill)
    return torch.where(present.view(-1, *([1] * (x.dim() - 1))), x, value)


def presence_weights(present: Tensor, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """``scale / n_present`` for every present stream, 0 for absent ones (rows of zeros stay 0).

    ``scale / n`` is one division, so ``scale = N`` gives exactly 1 when all are present.

    >>> presence_weights(torch.tensor([[True, False, True]]), torch.float32)
    tensor([[0.5000, 0.0000, 0.5000]])
    """
    w = present.to(dtype)
    return w * (scale / w.sum(dim=1, keepdim=True).clamp_min(1.0))


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; masked entries get exactly 0.

    A slice with nothing unmasked gives zeros (not NaN), with zero gradients.

    >>> masked_softmax(torch.zeros(1, 3), torch.tensor([[True, False, True]]), 1)
    tensor([[0.5000, 0.0000, 0.5000]])
    """
    mask = mask.expand_as(logits)
    neg_inf = logits.new_tensor(float("-inf"))
    peak = torch.where(mask, logits, neg_inf).amax(dim=dim, keepdim=True).detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    e = torch.exp(torch.where(mask, logits - peak, neg_inf))
    return e / e.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


class MultiFusionBase(nn.Module):
    """Combine N same-shaped feature maps, some of them absent for some samples.

    Subclasses set :attr:`summary` and write their equation (with the absent case) in the
    class docstring.

    Args:
        channels: channel count ``C`` of every input and of the output.
        num_streams: ``N``, the number of input maps (RGB + aux streams in the segmenter).

    Convention:
        ``streams[0]`` is the reference stream (RGB), which the segmenter always marks
        present; the others may be absent per sample. An absent stream's values never
        reach the output. Every sample needs at least one present stream.

    Shape:
        streams: N × (B, C, H, W); present: (B, N) bool or None (all present)
        -> (B, C, H, W)
    """

    summary: ClassVar[str] = ""

    def __init__(self, channels: int, num_streams: int) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"{type(self).__name__}: channels must be positive, got {channels}")
        if num_streams < 1:
            raise ValueError(f"{type(self).__name__}: num_streams must be ≥ 1, got {num_streams}")
        self.channels = channels
        self.num_streams = num_streams

    def forward(  # pragma: no cover - abstract
        self, streams: Sequence[Tensor], present: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def check(self, streams: Sequence[Tensor], present: Tensor | None) -> Tensor:
        """Raise a clear error for inputs the block was not built for; return ``present``."""
        name = type(self).__name__
        if len(streams) != self.num_streams:
            raise ValueError(f"{name} was built for {self.num_streams} streams, got {len(streams)}")
        shape = streams[0].shape
        if any(x.shape != shape for x in streams):
            shapes = [tuple(x.shape) for x in streams]
            raise ValueError(f"{name}: every stream must have the same shape, got {shapes}")
        if shape[1] != self.channels:
            raise ValueError(f"{name} was built for {self.channels} channels, got {shape[1]}")
        if present is not None and tuple(present.shape) != (shape[0], self.num_streams):
            raise ValueError(
                f"{name}: present must have shape (B, N) = ({shape[0]}, {self.num_streams}), "
                f"got {tuple(present.shape)}"
            )
        return all_present(streams, present)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_streams={self.num_streams}"


def weighted_sum(streams: Sequence[Tensor], present: Tensor, weights: Tensor) -> Tensor:
    """``Σ_s w_s · X_s`` over the present streams; ``weights`` is (B, N) or (B, N, C).

    Shape:
        streams: N × (B, C, H, W); present: (B, N); weights: (B, N[, C]) -> (B, C, H, W)
    """
    out: Tensor | None = None
    for s, x in enumerate(streams):
        w = weights[:, s].reshape(x.shape[0], -1, 1, 1)
        term = drop_absent(x, present[:, s]) * w
        out = term if out is None else out + term
    assert out is not None
    return out


class MultiSumFusion(MultiFusionBase):
    """Element-wise sum renormalised over the present streams.

    Equation: ``Z = (N / n) · Σ_{s present} X_s`` with ``n`` the number of present streams:
    the sum keeps the scale of the all-present sum when a stream is missing. With every
    stream present it is exactly :class:`~rgbx_fusion.models.fusion.simple.AddFusion`
    (the default fusion of the one-aux network).

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "sum of the present streams, rescaled by N / n_present (no parameters)"

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        scale = float(self.num_streams)
        return weighted_sum(streams, p, presence_weights(p, streams[0].dtype, scale))


class MultiMeanFusion(MultiFusionBase):
    """Mean of the present streams.

    Equation: ``Z = (1 / n) · Σ_{s present} X_s``.

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "mean of the present streams (no parameters)"

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        return weighted_sum(streams, p, presence_weights(p, streams[0].dtype))


class PresenceProjection(nn.Module):
    """1×1 conv over the concatenated streams, absent slots zeroed, plus an absence bias.

    Equation: ``Y = W · [p_1 X_1; …; p_N X_N] + Σ_s (1 − p_s) b_s (+ b)``.

    This is a 1×1 conv whose input also carries one absence-indicator channel per stream
    (``b_s`` is that channel's filter), written without widening ``W``: an absent stream
    is a learned signal of its own rather than a map of zeros that looks like "present,
    all features off". ``b_s`` starts at zero.

    Args:
        channels: ``C`` of every stream.
        num_streams: ``N``.
        out_channels: output channels.
        bias: a bias ``b`` of the conv.

    Shape:
        streams: N × (B, C, H, W) or pooled N × (B, C, 1, 1); present: (B, N)
        -> (B, out_channels, H, W)
    """

    def __init__(self, channels: int, num_streams: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_streams * channels, out_channels, 1, bias=bias)
        self.absent_bias = nn.Parameter(torch.zeros(num_streams, out_channels))

    def absence_term(self, present: Tensor, dtype: torch.dtype) -> Tensor:
        """``Σ_s (1 − p_s) b_s`` as a (B, out_channels, 1, 1) map."""
        absent = (~present).to(dtype)
        return (absent @ self.absent_bias.to(dtype))[..., None, None]

    def concat(self, streams: Sequence[Tensor], present: Tensor) -> Tensor:
        """``[p_1 X_1; …; p_N X_N]``: absent slots are zeros."""
        return torch.cat([drop_absent(x, present[:, s]) for s, x in enumerate(streams)], dim=1)

    def forward(self, streams: Sequence[Tensor], present: Tensor) -> Tensor:
        y: Tensor = self.conv(self.concat(streams, present))
        return y + self.absence_term(present, y.dtype)


class MultiConcatFusion(MultiFusionBase):
    """Concatenation + 1×1 conv-BN-ReLU back to ``C``, with an absence bias per stream.

    Equation: ``Z = ReLU(BN(W · [p_1 X_1; …; p_N X_N] + Σ_s (1 − p_s) b_s))``: the absent
    slot is zeroed and its absence indicator enters as a learned bias (see
    :class:`PresenceProjection`). With every stream present, N = 2 and ``b`` unused it is
    :class:`~rgbx_fusion.models.fusion.simple.ConcatFusion` (same ``proj`` parameters).

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "concatenate (absent slots zeroed + absence bias), 1x1 conv-BN-ReLU to C"

    def __init__(self, channels: int, num_streams: int) -> None:
        super().__init__(channels, num_streams)
        self.proj = nn.Sequential(
            nn.Conv2d(num_streams * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.absent_bias = nn.Parameter(torch.zeros(num_streams, channels))

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        joint = torch.cat([drop_absent(x, p[:, s]) for s, x in enumerate(streams)], dim=1)
        y = self.proj[0](joint)
        y = y + ((~p).to(y.dtype) @ self.absent_bias.to(y.dtype))[..., None, None]
        out: Tensor = self.proj[2](self.proj[1](y))
        return out


class MultiWeightedFusion(MultiFusionBase):
    """Learned convex combination, renormalised over the present streams.

    Equation: ``w = softmax_{s present}(a)``, ``Z = Σ_{s present} w_s X_s``; ``a`` starts at
    zero (the mean of the present streams). With N = 2 and both present it is
    :class:`~rgbx_fusion.models.fusion.simple.WeightedSumFusion` (same ``logits``).

    Args:
        channels: ``C``.
        num_streams: ``N``.
        per_channel: one weight per stream and channel (``logits`` (N, C)) instead of one
            per stream (``logits`` (N,)).

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "softmax-weighted sum, softmax masked to the present streams"

    def __init__(self, channels: int, num_streams: int, per_channel: bool = False) -> None:
        super().__init__(channels, num_streams)
        self.per_channel = per_channel
        self.logits = nn.Parameter(
            torch.zeros((num_streams, channels) if per_channel else (num_streams,))
        )

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        logits = self.logits.view(1, self.num_streams, -1).to(streams[0].dtype)
        w = masked_softmax(logits.expand(p.shape[0], -1, -1), p[..., None], dim=1)
        return weighted_sum(streams, p, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_channel={self.per_channel}"


class MultiMaxFusion(MultiFusionBase):
    """Element-wise maximum over the present streams.

    Equation: ``Z = max_{s present} X_s`` (0 where a sample has no present stream). With
    every stream present it is :class:`~rgbx_fusion.models.fusion.simple.MaxFusion`.

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "element-wise maximum of the present streams (no parameters)"

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        neg_inf = streams[0].new_tensor(float("-inf"))
        out = drop_absent(streams[0], p[:, 0], neg_inf)
        for s, x in enumerate(streams[1:], start=1):
            out = torch.maximum(out, drop_absent(x, p[:, s], neg_inf))
        return drop_absent(out, p.any(dim=1))


class MultiGatedFusion(MultiFusionBase):
    """Per-pixel softmax gates over the present streams.

    Gate logits come from a 1×1 conv over the concatenation with an absence bias
    (:class:`PresenceProjection`, absent slots zeroed)::

        G = softmax_{s present}(W · [p_1 X_1; …; p_N X_N] + b + Σ_s (1 − p_s) b_s)   (B, N, H, W)
        Z = Σ_{s present} G_s · X_s

    ``W`` starts at zero, so the block starts as the mean of the present streams.

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "per-pixel softmax gates from the concatenation, masked to present streams"

    def __init__(self, channels: int, num_streams: int) -> None:
        super().__init__(channels, num_streams)
        self.gate = PresenceProjection(channels, num_streams, num_streams, bias=True)
        nn.init.zeros_(self.gate.conv.weight)
        nn.init.zeros_(self.gate.conv.bias)  # type: ignore[arg-type]

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        g = masked_softmax(self.gate(streams, p), p[..., None, None], dim=1)
        out: Tensor | None = None
        for s, x in enumerate(streams):
            term = drop_absent(x, p[:, s]) * g[:, s : s + 1]
            out = term if out is None else out + term
        assert out is not None
        return out


class MultiChannelAttentionFusion(MultiFusionBase):
    """SE-style channel attention over the concatenated streams, softmax across streams.

    The squeeze reads every stream (absent slots zeroed, their absence indicators as a
    learned bias of the bottleneck, :class:`PresenceProjection`); the excitation gives one
    logit per stream and channel, normalised across the present streams (as in SKNet's
    selection between branches)::

        u = ReLU(W1 · [GAP(p_1 X_1); …; GAP(p_N X_N)] + b1 + Σ_s (1 − p_s) b_s)   (B, h)
        A = softmax_{s present}(W2 u + b2)                                          (B, N, C)
        Z = Σ_{s present} A_s ⊙ X_s

    Args:
        channels: ``C``.
        num_streams: ``N``.
        reduction: bottleneck ratio (hidden ``max(C/r, min(C, 8))``).

    Shape:
        streams: N × (B, C, H, W); present: (B, N) -> (B, C, H, W)
    """

    summary = "SE-style attention on the concatenation, softmax across present streams"

    def __init__(self, channels: int, num_streams: int, reduction: int = 16) -> None:
        super().__init__(channels, num_streams)
        hidden = reduced_channels(channels, reduction)
        self.squeeze = PresenceProjection(channels, num_streams, hidden, bias=True)
        self.excite = nn.Conv2d(hidden, num_streams * channels, 1)

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        pooled = [x.mean(dim=(2, 3), keepdim=True) for x in streams]
        u = torch.relu(self.squeeze(pooled, p))
        logits = self.excite(u).view(p.shape[0], self.num_streams, self.channels)
        a = masked_softmax(logits, p[..., None], dim=1)
        return weighted_sum(streams, p, a)


__all__ = [
    "MultiChannelAttentionFusion",
    "MultiConcatFusion",
    "MultiFusionBase",
    "MultiGatedFusion",
    "MultiMaxFusion",
    "MultiMeanFusion",
    "MultiSumFusion",
    "MultiWeightedFusion",
    "PresenceProjection",
    "all_present",
    "capturing_graph",
    "drop_absent",
    "masked_softmax",
    "presence_weights",
    "weighted_sum",
]
