"""The aux streams of :class:`MultiModalSegmenter`, run only on the samples that have them.

* :class:`AuxEncoders`: one encoder per aux modality (``separate``) or one encoder shared
  by all of them behind a 1×1 stem per modality (``shared``, as CMNeXt's second branch),
  projected to the RGB stream's widths.
* :func:`run_on_present`: a modality's stream computed only where it is present (eager),
  or on every sample with the absent inputs already blanked (graph capture).
* :class:`AbsentTokens`: learned stand-ins for an absent modality (``absent: token``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.encoders import StagedBackbone
from rgbx_fusion.models.fusion.multi import capturing_graph, drop_absent
from rgbx_fusion.models.layout import memory_format_of
from rgbx_fusion.models.topologies.branch import StreamOptions
from rgbx_fusion.types import FeatureSpec

AuxEncoderMode = Literal["separate", "shared"]


def width_projections(aux: FeatureSpec, rgb: FeatureSpec, what: str) -> nn.ModuleList:
    """1×1 convs from an aux stream's widths to RGB's (identity where they match).

    Raises:
        ConfigError: the two streams have different strides.
    """
    if aux.reductions != rgb.reductions:
        raise ConfigError(
            f"{what} strides {aux.reductions} differ from the rgb stream's {rgb.reductions}; "
            "choose backbones with the same pyramid"
        )
    return nn.ModuleList(
        nn.Identity() if ca == cr else nn.Conv2d(ca, cr, 1)
        for ca, cr in zip(aux.channels, rgb.channels, strict=True)
    )


class AuxEncoders(nn.Module):
    """The encoders of the aux modalities; every pyramid comes out at the RGB widths.

    Args:
        modalities: name → input channels, in order.
        streams: backbone options (``streams.aux_backbone`` or ``streams.backbone``).
        mode: ``separate``: ``encoders[name]`` over the modality's own channels and
            ``proj[name]`` per modality. ``shared``: one ``encoder`` over
            ``shared_channels`` inputs, a 1×1 conv ``stems[name]`` (C_name → S) in front
            of it for each modality, one ``proj``; different channel counts then share
            every encoder weight.
        shared_channels: ``S``, the shared encoder's input channels (3 keeps pretrained
            RGB filters usable).
        rgb_spec: the RGB stream's feature spec (widths to project to, strides to match).

    Shape:
        forward(name, x: (B, C_name, H, W)) -> [(B, C_i, H / r_i, W / r_i)], RGB widths
    """

    def __init__(
        self,
        modalities: Mapping[str, int],
        streams: StreamOptions,
        mode: AuxEncoderMode,
        shared_channels: int,
        rgb_spec: FeatureSpec,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.proj: nn.ModuleDict | nn.ModuleList
        if mode == "separate":
            encoders = {name: streams.stream(c, aux=True) for name, c in modalities.items()}
            self.encoders = nn.ModuleDict(encoders)
            self.proj = nn.ModuleDict(
                {
                    name: width_projections(enc.feature_spec, rgb_spec, f"aux stream {name!r}")
                    for name, enc in encoders.items()
                }
            )
        else:
            self.encoder = streams.stream(shared_channels, aux=True)
            self.stems = nn.ModuleDict(
                {name: nn.Conv2d(c, shared_channels, 1) for name, c in modalities.items()}
            )
            self.proj = width_projections(self.encoder.feature_spec, rgb_spec, "aux stream")

    def encoder_for(self, name: str) -> StagedBackbone:
        """The encoder that runs modality ``name`` (the same one for all when shared)."""
        enc = self.encoders[name] if self.mode == "separate" else self.encoder
        assert isinstance(enc, StagedBackbone)
        return enc

    def forward(self, name: str, x: Tensor) -> list[Tensor]:
        if self.mode == "shared":
            x = self.stems[name](x)
        projections = self.proj[name] if isinstance(self.proj, nn.ModuleDict) else self.proj
        assert isinstance(projections, nn.ModuleList)
        feats = self.encoder_for(name)(x)
        return [proj(f) for proj, f in zip(projections, feats, strict=True)]


def run_on_present(
    fn: Callable[..., list[Tensor]],
    inputs: Sequence[Tensor],
    present: Tensor | None,
    skip: bool = True,
) -> list[Tensor] | None:
    """``fn(*inputs)`` for the samples where a modality is present.

    Eager with ``skip``: ``None`` when no sample has the modality (``fn`` is not called);
    ``fn`` on the whole batch when all have it; otherwise ``fn`` on the present samples
    only, scattered into zeros. Batch statistics (BatchNorm in training) then come from
    real data alone. While a graph is captured, or without ``skip``, ``fn`` runs on the
    whole batch (no data-dependent control flow); the caller has blanked the absent
    inputs and masks the outputs.

    Shape:
        inputs: (B, ...) each; present: (B,) bool -> list of (B, ...) or None
    """
    if present is None or not skip or capturing_graph():
        return fn(*inputs)
    if not bool(present.any()):
        return None
    if bool(present.all()):
        return fn(*inputs)
    index = present.nonzero().flatten()
    outs = fn(*(t.index_select(0, index) for t in inputs))
    return [_scatter(o, index, present.shape[0]) for o in outs]


def _scatter(x: Tensor, index: Tensor, batch: int) -> Tensor:
    """``x`` (the present samples) at rows ``index`` of zeros, stored like ``x``."""
    zeros = x.new_zeros((batch, *x.shape[1:]))
    if x.dim() == 4:
        zeros = zeros.contiguous(memory_format=memory_format_of(x))
    return zeros.index_copy(0, index, x)


class AbsentTokens(nn.Module):
    """Learned stand-ins for one absent modality: a vector per stage (or per class).

    With ``absent: token`` an absent stream's map becomes its token, broadcast over the
    pixels, and the fusion counts it as a stream (a learned "missing modality" embedding
    instead of a renormalised fusion). Tokens start from N(0, 0.02²).

    Shape:
        fill(i, x: (B, C_i, H, W), present: (B,)) -> (B, C_i, H, W)
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.tokens = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in channels)
        for token in self.tokens:
            nn.init.trunc_normal_(token, std=0.02)

    def fill(self, i: int, x: Tensor, present: Tensor) -> Tensor:
        token = self.tokens[i].to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
        return drop_absent(x, present, token)


__all__ = [
    "AbsentTokens",
    "AuxEncoderMode",
    "AuxEncoders",
    "run_on_present",
    "width_projections",
]
