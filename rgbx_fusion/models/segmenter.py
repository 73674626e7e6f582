"""RGBXSegmenter: the configuration surface of every RGB-X network, by fusion stage.

``fusion_stage`` decides where the two modalities meet; each topology lives in
:mod:`rgbx_fusion.models.topologies`:

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

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import aligner_losses
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.encoders import DualEncoder, weights_file_kwargs
from rgbx_fusion.models.fusion.simple import AddFusion
from rgbx_fusion.models.topologies.branch import DecoderFactory, SegmentationBranch, StreamOptions
from rgbx_fusion.models.topologies.late import LateFusion, LateFusionMode, build_late
from rgbx_fusion.models.topologies.mid import (
    AlignFactory,
    AuxStreamHead,
    FusionFactory,
    RectifyFactory,
    build_mid,
    fuse_stages,
)
from rgbx_fusion.models.topologies.single import build_single_stream, stream_input

FusionStage = Literal["early", "mid", "late", "rgb_only", "aux_only"]


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

    Attributes:
        input_align: the input aligner, or ``None``.
        encoder, fusions, aligners, rectifiers, decoder, head, aux_head: the parts of mid
            fusion (:func:`~rgbx_fusion.models.topologies.mid.build_mid`).
        rgb_branch, aux_branch, late: the parts of late fusion
            (:func:`~rgbx_fusion.models.topologies.late.build_late`).
        branch: the one branch of early, rgb-only and aux-only networks
            (:func:`~rgbx_fusion.models.topologies.single.build_single_stream`).

    Each topology has only its own parts; their names are the state-dict keys.

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> logits (B, num_classes, H, W)
    """

    encoder: DualEncoder
    fusions: nn.ModuleList
    aligners: nn.ModuleList
    rectifiers: nn.ModuleList
    decoder: nn.Module
    head: nn.Module
    rgb_branch: SegmentationBranch
    aux_branch: SegmentationBranch
    late: LateFusion
    branch: SegmentationBranch

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
        late_fusion: LateFusionMode = "mean",
        dropout: float = 0.1,
        backbone_weights: str | None = None,
        aux_head_channels: int = 0,
    ) -> None:
        super().__init__()
        check_options(num_classes, fusion_stage, align, rectify, feedback, aux_head_channels)
        self.num_classes = num_classes
        self.aux_channels = aux_channels
        self.fusion_stage = fusion_stage
        self.feedback = feedback
        self.aux_head: AuxStreamHead | None = None
        self._aux_logits: list[Tensor] = []
        kwargs = dict(backbone_kwargs or {})
        if backbone_weights is not None:
            kwargs = weights_file_kwargs(backbone_weights, kwargs, backbone, aux_backbone)
            pretrained = True
        streams = StreamOptions(backbone, aux_backbone, pretrained, out_indices, kwargs)
        self.input_align = input_align(3, aux_channels) if input_align is not None else None
        parts: dict[str, nn.Module]
        if fusion_stage == "mid":
            parts = build_mid(
                streams,
                aux_channels,
                num_classes,
                decoder,
                dropout,
                share_weights,
                fusion,
                align,
                rectify,
                feedback,
                aux_head_channels,
            )
        elif fusion_stage == "late":
            parts = build_late(streams, aux_channels, num_classes, decoder, dropout, late_fusion)
        else:
            parts = build_single_stream(
                fusion_stage, streams, aux_channels, num_classes, decoder, dropout
            )
        for name, part in parts.items():
            setattr(self, name, part)

    def forward(self, rgb: Tensor, aux: Tensor) -> Tensor:
        size = rgb.shape[-2:]
        if self.input_align is not None:
            rgb, aux = self.input_align(rgb, aux)
        if self.fusion_stage == "mid":
            logits = self.head(self.decoder(self.fused_features(rgb, aux)))
        elif self.fusion_stage == "late":
            logits = self.late(self.rgb_branch(rgb), self.aux_branch(aux))
        else:
            logits = self.branch(stream_input(self.fusion_stage, rgb, aux))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def fused_features(self, rgb: Tensor, aux: Tensor) -> list[Tensor]:
        """Mid fusion: run both streams stage by stage, align, rectify and fuse.

        Shape:
            rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> [(B, C_i, H / r_i, W / r_i)], finest first
        """
        fused, aux_maps = fuse_stages(
            self.encoder, self.aligners, self.rectifiers, self.fusions, rgb, aux, self.feedback
        )
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
        return aligner_losses(self)


def check_options(
    num_classes: int,
    fusion_stage: str,
    align: Any,
    rectify: Any,
    feedback: bool,
    aux_head_channels: int,
) -> None:
    """Raise a :class:`ConfigError` for options that contradict each other or the stage."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    stages = get_args(FusionStage)
    if fusion_stage not in stages:
        raise ConfigError(f"fusion_stage must be one of {stages}, got {fusion_stage!r}")
    if aux_head_channels < 0:
        raise ConfigError(f"aux_head_channels must be ≥ 0, got {aux_head_channels}")
    if aux_head_channels and fusion_stage != "mid":
        raise ConfigError(
            "aux_head_channels supervises the aux stream of mid fusion; got "
            f"fusion_stage={fusion_stage!r} (set aux_head_channels: 0)"
        )
    if fusion_stage != "mid" and (align is not None or rectify is not None or feedback):
        raise ConfigError(
            f"align / rectify / feedback act between encoder stages and need "
            f"fusion_stage='mid' (got {fusion_stage!r}); use input_align for other stages"
        )


__all__ = ["FusionStage", "RGBXSegmenter", "check_options"]
