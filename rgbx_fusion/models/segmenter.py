"""RGBXSegmenter: encoder(s) + aligners + fusions + decoder + head, by fusion stage.

``fusion_stage`` decides where the two modalities meet:

* ``early``: concat(rgb, aux) at the input → one encoder with ``3 + Ca`` channels.
* ``mid`` (default): two streams; at every stage ``aux_i' = align_i(rgb_i, aux_i)``,
  optional rectification, ``f_i = fuse_i(rgb_i, aux_i')`` → decoder over ``f_i``.
  With ``feedback`` the rectified (or fused) maps replace both streams' inputs to
  stage ``i + 1``.
* ``late``: two encoder–decoder branches; their logits are fused.
* ``rgb_only`` / ``aux_only``: single-modality baselines with the same parts.

Nothing here knows about Lightning, losses or datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.encoders import DualEncoder, StagedBackbone, weights_file_kwargs
from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase
from rgbx_fusion.models.fusion.simple import AddFusion
from rgbx_fusion.models.late import LateFusion, SegmentationBranch

FusionFactory = Callable[[int], FusionBase]
RectifyFactory = Callable[[int], RectifyBase]
AlignFactory = Callable[[int, int], AlignBase]
DecoderFactory = Callable[[Sequence[int]], nn.Module]
FusionStage = Literal["early", "mid", "late", "rgb_only", "aux_only"]


def _per_stage(option: Any, n: int, what: str) -> list[Any]:
    """Expand one factory (or ``None``) to ``n`` stages; check an explicit list's length."""
    if option is None or callable(option):
        return [option] * n
    items = list(option)
    if len(items) != n:
        raise ConfigError(
            f"{what}: got {len(items)} entries for an encoder with {n} stages; give one entry "
            "per stage (null = none at that stage) or a single factory for all stages"
        )
    return items


class RGBXSegmenter(nn.Module):
    """RGB-X semantic segmentation network.

    Args:
        num_classes: number of output classes.
        aux_channels: channels of the aux input (1 for depth/thermal, 3 for HHA).
        fusion_stage: ``early`` | ``mid`` | ``late`` | ``rgb_only`` | ``aux_only``.
        backbone: timm ``features_only`` model of the RGB stream.
        aux_backbone: timm model of the aux stream (default: same as ``backbone``).
        pretrained: timm pretrained weights (needs network, or a local file through
            ``backbone_kwargs={"pretrained_cfg_overlay": {"file": ...}}``).
        share_weights: one backbone for both streams (mid fusion).
        out_indices: timm feature levels (default: up to four with stride ≥ 4).
        backbone_kwargs: extra ``timm.create_model`` arguments.
        fusion: factory ``channels -> FusionBase``, or one per stage (``None`` = use rgb_i).
        align: factory ``(rgb_channels, aux_channels) -> AlignBase`` per stage, or a list.
        input_align: aligner applied to the input images (all stages).
        rectify: factory ``channels -> RectifyBase`` per stage (CMX-style), or a list.
        feedback: feed rectified (or, without rectify, fused) maps to the next stage.
        decoder: factory ``in_channels -> decoder`` (exposes ``out_channels``).
        late_fusion: ``mean`` | ``weighted`` (learned per-class weights) | ``conv`` (1×1).
        dropout: dropout before the classifier.
        backbone_weights: local weights file for the backbone of both streams, e.g.
            SegFormer's ``mit_b2.pth`` with ``backbone: mit_b2`` (converted by
            :mod:`rgbx_fusion.models.convert.mit`); implies ``pretrained``.
        aux_head_channels: width of an auxiliary classifier on the aux stream alone (mid
            fusion; 0 = none). During training it predicts the labels from the aligned aux
            features of every stage, so the aligners get a gradient that only a correctly
            placed aux can lower (the fused head can ignore a misplaced aux and lean on rgb).
            Its logits are read with :meth:`auxiliary_logits`; the task weighs their loss
            with ``aux_loss_weight``. It is skipped in eval mode and costs nothing at
            inference.

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> logits (B, num_classes, H, W)
    """

    def __init__(
        self,
        num_classes: int,
        aux_channels: int = 1,
        fusion_stage: FusionStage = "mid",
        backbone: str = "resnet18",
        aux_backbone: str | None = None,
        pretrained: bool = False,
        share_weights: bool = False,
        out_indices: Sequence[int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        fusion: FusionFactory | Sequence[FusionFactory | None] | None = AddFusion,
        align: AlignFactory | Sequence[AlignFactory | None] | None = None,
        input_align: AlignFactory | None = None,
        rectify: RectifyFactory | Sequence[RectifyFactory | None] | None = None,
        feedback: bool = False,
        decoder: DecoderFactory = FPNDecoder,
        late_fusion: Literal["mean", "weighted", "conv"] = "mean",
        dropout: float = 0.1,
        backbone_weights: str | None = None,
        aux_head_channels: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
        stages = ("early", "mid", "late", "rgb_only", "aux_only")
        if fusion_stage not in stages:
            raise ConfigError(f"fusion_stage must be one of {stages}, got {fusion_stage!r}")
        self.num_classes = num_classes
        self.aux_channels = aux_channels
        self.fusion_stage = fusion_stage
        self.feedback = feedback
        self.aux_head: AuxStreamHead | None = None
        self._aux_logits: list[Tensor] = []
        if aux_head_channels < 0:
            raise ConfigError(f"aux_head_channels must be ≥ 0, got {aux_head_channels}")
        if aux_head_channels and fusion_stage != "mid":
            raise ConfigError(
                "aux_head_channels supervises the aux stream of mid fusion; got "
                f"fusion_stage={fusion_stage!r} (set aux_head_channels: 0)"
            )
        kwargs = dict(backbone_kwargs or {})
        if backbone_weights is not None:
            kwargs = weights_file_kwargs(backbone_weights, kwargs, backbone, aux_backbone)
            pretrained = True
        self.input_align = input_align(3, aux_channels) if input_align is not None else None
        if fusion_stage != "mid" and (align is not None or rectify is not None or feedback):
            raise ConfigError(
                f"align / rectify / feedback act between encoder stages and need "
                f"fusion_stage='mid' (got {fusion_stage!r}); use input_align for other stages"
            )
        if fusion_stage == "mid":
            self.encoder: nn.Module = DualEncoder(
                backbone, aux_channels, aux_backbone, pretrained, share_weights, out_indices, kwargs
            )
            spec = self.encoder.feature_spec
            n = spec.num_stages
            self.fusions = nn.ModuleList(
                _make(f, c)
                for f, c in zip(_per_stage(fusion, n, "fusion"), spec.channels, strict=True)
            )
            self.aligners = nn.ModuleList(
                _make(a, c, c)
                for a, c in zip(_per_stage(align, n, "align"), spec.channels, strict=True)
            )
            self.rectifiers = nn.ModuleList(
                _make(r, c)
                for r, c in zip(_per_stage(rectify, n, "rectify"), spec.channels, strict=True)
            )
            if feedback and not self.encoder.widths_match:
                raise ConfigError(
                    "feedback needs both streams to have the same widths; use the same backbone "
                    "for rgb and aux or turn feedback off"
                )
            self.decoder = decoder(list(spec.channels))
            self.head = _head(self.decoder, num_classes, dropout)
            if aux_head_channels:
                self.aux_head = AuxStreamHead(spec.channels, aux_head_channels, num_classes)
        elif fusion_stage == "late":
            self.rgb_branch = SegmentationBranch(
                StagedBackbone(backbone, 3, pretrained, out_indices, **kwargs),
                decoder,
                num_classes,
                dropout,
            )
            self.aux_branch = SegmentationBranch(
                StagedBackbone(
                    aux_backbone or backbone, aux_channels, pretrained, out_indices, **kwargs
                ),
                decoder,
                num_classes,
                dropout,
            )
            self.late = LateFusion(num_classes, late_fusion)
        else:
            in_chans = {"early": 3 + aux_channels, "rgb_only": 3, "aux_only": aux_channels}[
                fusion_stage
            ]
            name = aux_backbone if fusion_stage == "aux_only" and aux_backbone else backbone
            self.branch = SegmentationBranch(
                StagedBackbone(name, in_chans, pretrained, out_indices, **kwargs),
                decoder,
                num_classes,
                dropout,
            )

    def forward(self, rgb: Tensor, aux: Tensor) -> Tensor:
        size = rgb.shape[-2:]
        if self.input_align is not None:
            rgb, aux = self.input_align(rgb, aux)
        if self.fusion_stage == "mid":
            logits = self.head(self.decoder(self.fused_features(rgb, aux)))
        elif self.fusion_stage == "late":
            logits = self.late(self.rgb_branch(rgb), self.aux_branch(aux))
        elif self.fusion_stage == "early":
            logits = self.branch(torch.cat([rgb, aux], dim=1))
        else:
            logits = self.branch(rgb if self.fusion_stage == "rgb_only" else aux)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def fused_features(self, rgb: Tensor, aux: Tensor) -> list[Tensor]:
        """Mid fusion: run both streams stage by stage, align, rectify and fuse."""
        enc = self.encoder
        assert isinstance(enc, DualEncoder)
        x_r, x_a = rgb, enc.aux_stem(aux)
        fused: list[Tensor] = []
        aux_maps: list[Tensor] = []
        for i in range(enc.rgb.num_stages):
            x_r = enc.rgb.forward_stage(i, x_r)
            x_a = enc.aux.forward_stage(i, x_a)
            f_r = enc.rgb.to_nchw(x_r)
            f_a = enc.aux_proj[i](enc.aux.to_nchw(x_a))
            aligner, rectifier, fusion = self.aligners[i], self.rectifiers[i], self.fusions[i]
            if not isinstance(aligner, StageSkipped):
                f_r, f_a = aligner(f_r, f_a)
            if not isinstance(rectifier, StageSkipped):
                f_r, f_a = rectifier(f_r, f_a)
            f = f_r if isinstance(fusion, StageSkipped) else fusion(f_r, f_a)
            fused.append(f)
            aux_maps.append(f_a)
            if self.feedback and i + 1 < enc.rgb.num_stages:
                next_r, next_a = (f, f) if isinstance(rectifier, StageSkipped) else (f_r, f_a)
                x_r, x_a = enc.rgb.from_nchw(next_r), enc.aux.from_nchw(next_a)
        if self.aux_head is not None and self.training:
            self._aux_logits = [self.aux_head(aux_maps)]
        return fused

    def auxiliary_logits(self) -> dict[str, Tensor]:
        """Logits of the auxiliary heads in the last training forward pass, by name.

        Empty in eval mode and without ``aux_head_channels``; the logits are at the stride of
        the first stage (the task upsamples them to the labels).
        """
        if not self.training or self.aux_head is None:
            return {}
        return {f"aux_head/{i}": logits for i, logits in enumerate(self._aux_logits)}

    def regularization(self) -> dict[str, Tensor]:
        """Regularisation losses exposed by the aligners in the last forward pass."""
        losses: dict[str, Tensor] = {}
        for name, module in self.named_modules():
            if isinstance(module, AlignBase):
                reg = module.regularization()
                if reg is not None:
                    losses[f"align/{name or 'input'}"] = reg
        return losses


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


def _make(factory: Callable[..., nn.Module] | None, *args: int) -> nn.Module:
    """Build one per-stage part; ``None`` becomes a placeholder the forward pass skips.

    Raises:
        ConfigError: the part was built for another width than the stage's (a
            ``channels`` fixed in its ``init_args``).
    """
    if factory is None:
        return StageSkipped()
    part = factory(*args)
    width = getattr(part, "channels", None)
    if isinstance(width, int) and args and width != args[0]:
        raise ConfigError(
            f"{type(part).__name__} has channels={width} but its encoder stage has "
            f"{args[0]} channels; remove 'channels' from its init_args (the network passes "
            "each stage's width)"
        )
    return part


class StageSkipped(nn.Module):
    """Stands for "nothing at this stage" inside an ``nn.ModuleList``."""

    def forward(self, *args: Tensor) -> Tensor:  # pragma: no cover - never called
        raise RuntimeError("placeholder module called")


def _head(decoder: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    out = getattr(decoder, "out_channels", None)
    if not isinstance(out, int):
        raise ConfigError(f"{type(decoder).__name__} must expose an integer out_channels")
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(out, num_classes, 1))
