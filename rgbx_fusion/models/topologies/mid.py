"""Mid fusion: two streams that meet at every encoder stage.

At stage ``i``: ``aux_i' = align_i(rgb_i, aux_i)``, an optional rectification
exchanges information between the two (CMX's FRM), and ``f_i = fuse_i(rgb_i,
aux_i')``; one decoder reads ``[f_1 … f_n]``. With ``feedback`` the rectified (or,
without rectification, the fused) maps replace both streams' inputs to stage
``i + 1``. A ``None`` entry in a per-stage list means "nothing at this stage".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.encoders import DualEncoder
from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase
from rgbx_fusion.models.topologies.branch import DecoderFactory, StreamOptions, classifier_head

FusionFactory = Callable[[int], FusionBase]
RectifyFactory = Callable[[int], RectifyBase]
AlignFactory = Callable[[int, int], AlignBase]


class StageSkipped(nn.Module):
    """Stands for "nothing at this stage" inside an ``nn.ModuleList``."""

    def forward(self, *args: Tensor) -> Tensor:  # pragma: no cover - never called
        raise RuntimeError("placeholder module called")


class AuxStreamHead(nn.Module):
    """Light classifier over the aux stream's stage maps (deep supervision of the aux stream).

    Every map is projected to ``channels`` by a 1×1 conv, resized to the first map's size and
    summed; BN, ReLU and a 1×1 classifier follow.

    Shape:
        maps: list of (B, C_i, H_i, W_i) -> (B, num_classes, H_0, W_0)
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, channels, 1, bias=False) for c in in_channels)
        self.classify = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, num_classes, 1)
        )

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        size = maps[0].shape[-2:]
        total = self.proj[0](maps[0])
        for proj, x in zip(self.proj[1:], maps[1:], strict=True):
            total = total + F.interpolate(proj(x), size=size, mode="bilinear", align_corners=False)
        out: Tensor = self.classify(total)
        return out


def per_stage(option: Any, n: int, what: str) -> list[Any]:
    """Expand one factory (or ``None``) to ``n`` stages; check an explicit list's length.

    Raises:
        ConfigError: a list with another length than the number of stages.
    """
    if option is None or callable(option):
        return [option] * n
    items = list(option)
    if len(items) != n:
        raise ConfigError(
            f"{what}: got {len(items)} entries for an encoder with {n} stages; give one entry "
            "per stage (null = none at that stage) or a single factory for all stages"
        )
    return items


def stage_part(factory: Callable[..., nn.Module] | None, *widths: int) -> nn.Module:
    """Build one per-stage part; ``None`` becomes a placeholder the forward pass skips.

    Raises:
        ConfigError: the part was built for another width than the stage's (a
            ``channels`` fixed in its ``init_args``).
    """
    if factory is None:
        return StageSkipped()
    part = factory(*widths)
    width = getattr(part, "channels", None)
    if isinstance(width, int) and widths and width != widths[0]:
        raise ConfigError(
            f"{type(part).__name__} has channels={width} but its encoder stage has "
            f"{widths[0]} channels; remove 'channels' from its init_args (the network passes "
            "each stage's width)"
        )
    return part


def build_mid(
    streams: StreamOptions,
    aux_channels: int,
    num_classes: int,
    decoder: DecoderFactory,
    dropout: float,
    share_weights: bool = False,
    fusion: FusionFactory | Sequence[FusionFactory | None] | None = None,
    align: AlignFactory | Sequence[AlignFactory | None] | None = None,
    rectify: RectifyFactory | Sequence[RectifyFactory | None] | None = None,
    feedback: bool = False,
    aux_head_channels: int = 0,
) -> dict[str, nn.Module]:
    """The parts of a mid-fusion network by name, in registration order.

    ``encoder`` (a :class:`DualEncoder`), ``fusions``, ``aligners`` and ``rectifiers`` (one
    entry per stage, :class:`StageSkipped` where there is none), ``decoder``, ``head`` and,
    with ``aux_head_channels > 0``, ``aux_head``.

    Raises:
        ConfigError: a per-stage list of the wrong length, a part built for another width,
            or ``feedback`` between streams of different widths.
    """
    encoder = DualEncoder(
        streams.backbone,
        aux_channels,
        streams.aux_backbone,
        streams.pretrained,
        share_weights,
        streams.out_indices,
        streams.kwargs,
    )
    spec = encoder.feature_spec
    n = spec.num_stages

    def parts(option: Any, what: str, square: bool = False) -> nn.ModuleList:
        factories = per_stage(option, n, what)
        return nn.ModuleList(
            stage_part(f, *((c, c) if square else (c,)))
            for f, c in zip(factories, spec.channels, strict=True)
        )

    built: dict[str, nn.Module] = {
        "encoder": encoder,
        "fusions": parts(fusion, "fusion"),
        "aligners": parts(align, "align", square=True),
        "rectifiers": parts(rectify, "rectify"),
    }
    if feedback and not encoder.widths_match:
        raise ConfigError(
            "feedback needs both streams to have the same widths; use the same backbone "
            "for rgb and aux or turn feedback off"
        )
    built["decoder"] = decoder(list(spec.channels))
    built["head"] = classifier_head(built["decoder"], num_classes, dropout)
    if aux_head_channels:
        built["aux_head"] = AuxStreamHead(spec.channels, aux_head_channels, num_classes)
    return built


def fuse_stages(
    encoder: DualEncoder,
    aligners: nn.ModuleList,
    rectifiers: nn.ModuleList,
    fusions: nn.ModuleList,
    rgb: Tensor,
    aux: Tensor,
    feedback: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Run both streams stage by stage, aligning, rectifying and fusing after every stage.

    Returns:
        The fused map of every stage (the decoder's input) and the aligned aux map of every
        stage (the auxiliary head's input), finest first, NCHW.

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> ([(B, C_i, H / r_i, W / r_i)], same)
    """
    x_r, x_a = rgb, encoder.aux_stem(aux)
    fused: list[Tensor] = []
    aux_maps: list[Tensor] = []
    for i in range(encoder.rgb.num_stages):
        x_r = encoder.rgb.forward_stage(i, x_r)
        x_a = encoder.aux.forward_stage(i, x_a)
        f_r = encoder.rgb.to_nchw(x_r)
        f_a = encoder.aux_proj[i](encoder.aux.to_nchw(x_a))
        aligner, rectifier, fusion = aligners[i], rectifiers[i], fusions[i]
        if not isinstance(aligner, StageSkipped):
            f_r, f_a = aligner(f_r, f_a)
        if not isinstance(rectifier, StageSkipped):
            f_r, f_a = rectifier(f_r, f_a)
        f = f_r if isinstance(fusion, StageSkipped) else fusion(f_r, f_a)
        fused.append(f)
        aux_maps.append(f_a)
        if feedback and i + 1 < encoder.rgb.num_stages:
            next_r, next_a = (f, f) if isinstance(rectifier, StageSkipped) else (f_r, f_a)
            x_r, x_a = encoder.rgb.from_nchw(next_r), encoder.aux.from_nchw(next_a)
    return fused, aux_maps


__all__ = [
    "AlignFactory",
    "AuxStreamHead",
    "FusionFactory",
    "RectifyFactory",
    "StageSkipped",
    "build_mid",
    "fuse_stages",
    "per_stage",
    "stage_part",
]
