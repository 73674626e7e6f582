"""Pairwise :class:`FusionBase` operators (CMX, cross-attention, AFF/iAFF, ...) on N streams.

A pairwise fusion combines RGB with *one* partner. With several aux streams it is used
in one of two ways (``pairwise`` in
:class:`~rgbx_fusion.models.multimodal.MultiModalSegmenter`):

* ``each`` (:class:`PairwiseEachFusion`): one fusion per aux stream, ``Y_m = F_m(X_rgb,
  X_m)``, averaged over the present aux streams;
* ``aggregate`` (:class:`PairwiseAggregateFusion`): the present aux streams are first
  aggregated (mean, or a learned masked-softmax weighting) into one partner, then one
  fusion ``F(X_rgb, partner)``.

With no aux stream present for a sample, RGB stands in as its own partner
(``F(X_rgb, X_rgb)``): the output stays in the fusion's output space (a CMX or AFF output
is not RGB's feature space) and no absent value is read. With one aux stream both modes
are the pairwise fusion itself.

:func:`build_multi_fusion` turns either kind of factory into an N-stream block, and
``MULTI_FUSIONS`` lists the N-stream operators (for listings only).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.fusion.base import FusionBase
from rgbx_fusion.models.fusion.multi import (
    MultiChannelAttentionFusion,
    MultiConcatFusion,
    MultiFusionBase,
    MultiGatedFusion,
    MultiMaxFusion,
    MultiMeanFusion,
    MultiSumFusion,
    MultiWeightedFusion,
    capturing_graph,
    drop_absent,
    masked_softmax,
    presence_weights,
)

PairwiseFactory = Callable[[int], FusionBase]
MultiFusionFactory = Callable[[int, int], MultiFusionBase]
PairwiseMode = Literal["each", "aggregate"]
AggregateMode = Literal["mean", "weighted"]


def build_pairwise(factory: PairwiseFactory, channels: int) -> FusionBase:
    """``factory(channels)``, checked to be a :class:`FusionBase` of that width."""
    part = factory(channels)
    if not isinstance(part, FusionBase):
        raise ConfigError(
            f"a pairwise fusion must build a FusionBase (x_rgb, x_aux) -> map, got "
            f"{type(part).__name__}; rectifiers (CMX's FRM) are not supported with N streams"
        )
    if part.channels != channels:
        raise ConfigError(
            f"{type(part).__name__} has channels={part.channels} but its stage has {channels} "
            "channels; remove 'channels' from its init_args"
        )
    return part


class PairwiseEachFusion(MultiFusionBase):
    """RGB fused with every aux stream by its own pairwise fusion, averaged over the present.

    Equation: with ``F_m`` one :class:`FusionBase` per aux stream ``m = 1 … N−1``::

        Z = (1 / n) Σ_{m present} F_m(X_0, X_m)             n = number of present aux streams
        Z = (1 / (N−1)) Σ_m F_m(X_0, X_0)                   when no aux stream is present

    In eager mode a fusion whose stream is absent for the whole batch is not run.

    Args:
        channels: ``C``.
        num_streams: ``N`` (RGB + N − 1 aux streams).
        fusion: factory ``channels -> FusionBase``.

    Shape:
        streams: N × (B, C, H, W); present: (B, N), column 0 (RGB) true -> (B, C, H, W)
    """

    summary = "a pairwise fusion of RGB with each present aux stream, averaged"

    def __init__(self, channels: int, num_streams: int, fusion: PairwiseFactory) -> None:
        super().__init__(channels, num_streams)
        if num_streams < 2:
            raise ConfigError("PairwiseEachFusion needs RGB and at least one aux stream")
        self.pairs = nn.ModuleList(build_pairwise(fusion, channels) for _ in range(num_streams - 1))

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        rgb, p_aux = streams[0], p[:, 1:]
        any_aux = p_aux.any(dim=1, keepdim=True)
        used = torch.where(any_aux, p_aux, torch.ones_like(p_aux))
        w = presence_weights(used, rgb.dtype)
        eager = present is not None and not capturing_graph()
        out: Tensor | None = None
        for m, (fuse, x) in enumerate(zip(self.pairs, streams[1:], strict=True)):
            if eager and not bool(used[:, m].any()):
                continue  # nothing of this batch reads it
            y = fuse(rgb, drop_absent(x, p_aux[:, m], rgb))
            term = drop_absent(y, used[:, m]) * w[:, m].view(-1, 1, 1, 1)
            out = term if out is None else out + term
        assert out is not None  # every sample uses at least one pair
        return out


class PairwiseAggregateFusion(MultiFusionBase):
    """One pairwise fusion of RGB with the aggregate of the present aux streams.

    Equation::

        A = Σ_{m present} α_m X_m        α = 1/n (mean) or softmax_{m present}(a) (weighted)
        Z = F(X_0, A)                    (A = X_0 when no aux stream is present)

    Args:
        channels: ``C``.
        num_streams: ``N`` (RGB + N − 1 aux streams).
        fusion: factory ``channels -> FusionBase``.
        aggregate: ``mean`` or ``weighted`` (learned logits ``a``, one per aux stream,
            starting at zero; none with a single aux stream).

    Shape:
        streams: N × (B, C, H, W); present: (B, N), column 0 (RGB) true -> (B, C, H, W)
    """

    summary = "one pairwise fusion of RGB with the (weighted) mean of the present aux"

    def __init__(
        self,
        channels: int,
        num_streams: int,
        fusion: PairwiseFactory,
        aggregate: AggregateMode = "mean",
    ) -> None:
        super().__init__(channels, num_streams)
        if num_streams < 2:
            raise ConfigError("PairwiseAggregateFusion needs RGB and at least one aux stream")
        if aggregate not in ("mean", "weighted"):
            raise ConfigError(f"aggregate must be 'mean' or 'weighted', got {aggregate!r}")
        self.aggregate = aggregate
        self.fusion = build_pairwise(fusion, channels)
        self.logits: nn.Parameter | None = None
        if aggregate == "weighted" and num_streams > 2:
            self.logits = nn.Parameter(torch.zeros(num_streams - 1))

    def aux_weights(self, present_aux: Tensor, dtype: torch.dtype) -> Tensor:
        """``α`` (B, N − 1): zero for absent streams, summing to one over the present."""
        if self.logits is None:
            return presence_weights(present_aux, dtype)
        logits = self.logits.to(dtype).expand(present_aux.shape[0], -1)
        return masked_softmax(logits, present_aux, dim=1)

    def forward(self, streams: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = self.check(streams, present)
        rgb, p_aux = streams[0], p[:, 1:]
        alpha = self.aux_weights(p_aux, rgb.dtype)
        agg: Tensor | None = None
        for m, x in enumerate(streams[1:]):
            term = drop_absent(x, p_aux[:, m]) * alpha[:, m].view(-1, 1, 1, 1)
            agg = term if agg is None else agg + term
        assert agg is not None
        out: Tensor = self.fusion(rgb, drop_absent(agg, p_aux.any(dim=1), rgb))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aggregate={self.aggregate!r}"


def factory_class(factory: Callable[..., Any]) -> type | None:
    """The class a factory builds, when it can be read without calling it.

    Handles a class, ``functools.partial(cls, ...)`` and jsonargparse's partials (the
    class among the positional arguments of a wrapper); ``None`` for other callables.
    """
    f: Any = factory
    for _ in range(8):
        if inspect.isclass(f):
            return f
        if not isinstance(f, functools.partial):
            return None
        if not inspect.isclass(f.func):
            classes = [a for a in f.args if inspect.isclass(a)]
            if classes:  # jsonargparse: partial(wrapper, instantiator, cls, **init_args)
                return classes[0]
        f = f.func
    return None


def is_pairwise_factory(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` builds a two-input :class:`FusionBase` (else an N-stream block).

    A factory whose class cannot be read is pairwise when it takes one required argument.
    """
    cls = factory_class(factory)
    if cls is not None:
        return issubclass(cls, FusionBase)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def build_multi_fusion(
    factory: MultiFusionFactory | PairwiseFactory,
    channels: int,
    num_streams: int,
    pairwise: PairwiseMode = "each",
    aggregate: AggregateMode = "mean",
) -> MultiFusionBase:
    """An N-stream fusion from an N-stream factory, or a pairwise one used per ``pairwise``.

    Raises:
        ConfigError: the factory builds neither kind, or a block of another width.
    """
    if is_pairwise_factory(factory):
        pair = cast(PairwiseFactory, factory)
        if pairwise == "each":
            return PairwiseEachFusion(channels, num_streams, pair)
        if pairwise == "aggregate":
            return PairwiseAggregateFusion(channels, num_streams, pair, aggregate)
        raise ConfigError(f"pairwise must be 'each' or 'aggregate', got {pairwise!r}")
    block = factory(channels, num_streams)  # type: ignore[call-arg]
    if not isinstance(block, MultiFusionBase):
        raise ConfigError(
            f"fusion must build a MultiFusionBase (channels, num_streams) or a FusionBase "
            f"(channels), got {type(block).__name__}"
        )
    if block.channels != channels or block.num_streams != num_streams:
        raise ConfigError(
            f"{type(block).__name__} was built for {block.channels} channels and "
            f"{block.num_streams} streams, but its stage has {channels} channels and "
            f"{num_streams} streams; remove them from its init_args"
        )
    return block


MULTI_FUSIONS: dict[str, type[MultiFusionBase]] = {
    "sum": MultiSumFusion,
    "mean": MultiMeanFusion,
    "concat": MultiConcatFusion,
    "weighted": MultiWeightedFusion,
    "max": MultiMaxFusion,
    "gated": MultiGatedFusion,
    "channel_attention": MultiChannelAttentionFusion,
    "pairwise_each": PairwiseEachFusion,
    "pairwise_aggregate": PairwiseAggregateFusion,
}

__all__ = [
    "MULTI_FUSIONS",
    "AggregateMode",
    "MultiFusionFactory",
    "PairwiseAggregateFusion",
    "PairwiseEachFusion",
    "PairwiseFactory",
    "PairwiseMode",
    "build_multi_fusion",
    "build_pairwise",
    "factory_class",
    "is_pairwise_factory",
]
