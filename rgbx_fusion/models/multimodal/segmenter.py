"""MultiModalSegmenter: RGB plus any number of named aux modalities, some absent per sample.

The one-aux :class:`~rgbx_fusion.models.segmenter.RGBXSegmenter` stays the network of
RGB-X configs; this one takes ``aux`` as a dict and a presence mask. Absent modalities
are handled explicitly (see the class docstring); nothing here knows about Lightning,
losses or datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import aligner_losses
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.fusion.multi import MultiSumFusion, drop_absent
from rgbx_fusion.models.fusion.multi_pairwise import (
    AggregateMode,
    MultiFusionFactory,
    PairwiseFactory,
    PairwiseMode,
    build_multi_fusion,
)
from rgbx_fusion.models.layers import resize_to
from rgbx_fusion.models.multimodal.inputs import (
    EarlyInput,
    check_inputs,
    check_modalities,
    check_named,
    split_aux,
)
from rgbx_fusion.models.multimodal.late import AuxBranches, MultiLateFusion, MultiLateMode
from rgbx_fusion.models.multimodal.streams import (
    AbsentTokens,
    AuxEncoderMode,
    AuxEncoders,
    run_on_present,
)
from rgbx_fusion.models.topologies.branch import (
    DecoderFactory,
    SegmentationBranch,
    StreamOptions,
    classifier_head,
)
from rgbx_fusion.models.topologies.mid import AlignFactory, StageSkipped, per_stage, stage_part

MultiFusionStage = Literal["early", "mid", "late"]
AbsentMode = Literal["skip", "token"]
StageFusion = MultiFusionFactory | PairwiseFactory
StageAlign = AlignFactory | Sequence[AlignFactory | None]


class MultiModalSegmenter(nn.Module):
    """Semantic segmentation from RGB and any number of aux modalities.

    Args:
        num_classes: output classes.
        modalities: aux modality name → input channels, in order (the order of
            ``present``'s columns), e.g. ``{"depth": 1, "thermal": 1}``.
        fusion_stage: ``early`` | ``mid`` | ``late``.
        backbone: timm ``features_only`` model of the RGB stream.
        aux_backbone: timm model of the aux streams (default: ``backbone``).
        pretrained: timm pretrained weights.
        aux_encoder: ``separate`` (one encoder per aux modality) or ``shared`` (one
            encoder for all aux modalities, each mapped to ``shared_channels`` by its own
            1×1 stem first, so different channel counts share it; CMNeXt-style).
        shared_channels: input channels of the shared aux encoder (early: of the averaged
            aux input).
        out_indices: timm feature levels (default: up to four with stride ≥ 4).
        backbone_kwargs: extra ``timm.create_model`` arguments of every stream.
        fusion: mid fusion per stage, one factory or a list (``None`` = use RGB's map):
            an N-stream factory ``(channels, num_streams) -> MultiFusionBase`` (see
            :mod:`rgbx_fusion.models.fusion.multi`), or a pairwise ``channels ->
            FusionBase`` (CMX, cross-attention, iAFF, ...) used as ``pairwise`` says.
        pairwise: ``each`` (RGB fused with every present aux stream by its own block, the
            results averaged) or ``aggregate`` (the present aux streams aggregated first,
            then one block with RGB).
        aggregate: how ``aggregate`` combines the aux streams: ``mean`` or ``weighted``.
        align: per-stage feature aligner ``(rgb_channels, aux_channels) -> AlignBase`` for
            every aux modality, a per-stage list, or a dict name → either (mid fusion).
        input_align: image aligner of every aux modality, or a dict name → factory (a
            modality without an entry is not aligned). Aux is warped onto RGB.
        decoder: factory ``in_channels -> decoder`` (exposes ``out_channels``).
        late_fusion: ``mean`` or ``weighted`` (learned per-class weights), over the
            present branches.
        absent: ``skip``: an absent stream leaves the fusion, which renormalises over the
            present streams. ``token``: it is replaced by a learned per-modality token
            per stage (per class in late fusion) that the fusion counts as a stream.
        skip_absent: in eager mode, run an aux stream only on the samples that have it
            (not at all when none has it). Graph capture always takes the masked path.
        dropout: dropout before the classifier.

    Absent modalities (``present[b, m]`` false) are handled explicitly; the values of
    ``aux[name]`` for such samples are never read:

    * every aux input is blanked where absent (``torch.where``, NaN-safe) before anything
      runs on it, and its stream's output for those samples is discarded;
    * mid: the N-stream fusion masks the stream (renormalised sums, masked softmax
      weights, absence biases for concatenations; see
      :mod:`~rgbx_fusion.models.fusion.multi`); pairwise fusions average over or
      aggregate only the present aux streams;
    * late: the present branches' logits are averaged or weighted;
    * early: the modality's channels hold a learned fill and its absence channel is 1
      (:class:`~rgbx_fusion.models.multimodal.inputs.EarlyInput`), in both ``absent``
      modes.

    RGB is always present.

    Shape:
        rgb: (B, 3, H, W); aux[name]: (B, C_name, H, W); present: (B, M) bool or None
        (all present) -> logits (B, num_classes, H, W)
    """

    rgb_encoder: nn.Module
    aux: AuxEncoders
    fusions: nn.ModuleList
    aligners: nn.ModuleDict
    absent_tokens: nn.ModuleDict
    decoder: nn.Module
    head: nn.Module
    rgb_branch: SegmentationBranch
    aux_branches: AuxBranches
    late: MultiLateFusion
    early: EarlyInput
    branch: SegmentationBranch

    def __init__(
        self,
        num_classes: int,
        modalities: dict[str, int],
        fusion_stage: MultiFusionStage = "mid",
        backbone: str = "resnet18",
        aux_backbone: str | None = None,
        pretrained: bool = False,
        aux_encoder: AuxEncoderMode = "separate",
        shared_channels: int = 3,
        out_indices: Sequence[int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        fusion: StageFusion | Sequence[StageFusion | None] | None = MultiSumFusion,
        pairwise: PairwiseMode = "each",
        aggregate: AggregateMode = "mean",
        align: dict[str, StageAlign] | StageAlign | None = None,
        input_align: dict[str, AlignFactory] | AlignFactory | None = None,
        decoder: DecoderFactory = FPNDecoder,
        late_fusion: MultiLateMode = "mean",
        absent: AbsentMode = "skip",
        skip_absent: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = check_modalities(modalities)
        check_options(num_classes, fusion_stage, aux_encoder, pairwise, aggregate, absent, align)
        check_named(input_align, self.modalities, "input_align")
        check_named(align, self.modalities, "align")
        if shared_channels < 1:
            raise ConfigError(f"shared_channels must be ≥ 1, got {shared_channels}")
        self.num_classes = num_classes
        self.names = tuple(self.modalities)
        self.fusion_stage = fusion_stage
        self.aux_encoder = aux_encoder
        self.absent = absent
        self.skip_absent = skip_absent
        streams = StreamOptions(
            backbone, aux_backbone, pretrained, out_indices, dict(backbone_kwargs or {})
        )
        input_factories = {n: for_modality(input_align, n) for n in self.names}
        self.input_aligners = nn.ModuleDict(
            {n: f(3, self.modalities[n]) for n, f in input_factories.items() if f is not None}
        )
        shared = shared_channels if aux_encoder == "shared" else None
        if fusion_stage == "mid":
            self._build_mid(
                streams, shared_channels, fusion, pairwise, aggregate, align, decoder, dropout
            )
        elif fusion_stage == "late":
            self.rgb_branch = SegmentationBranch(streams.stream(3), decoder, num_classes, dropout)
            self.aux_branches = AuxBranches(
                self.modalities, streams, shared, decoder, num_classes, dropout
            )
            self.late = MultiLateFusion(num_classes, len(self.names) + 1, late_fusion)
            if absent == "token":
                self.absent_tokens = nn.ModuleDict(
                    {n: AbsentTokens([num_classes]) for n in self.names}
                )
        else:
            self.early = EarlyInput(self.modalities, shared)
            encoder = streams.stream(self.early.in_channels)
            self.branch = SegmentationBranch(encoder, decoder, num_classes, dropout)

    def _build_mid(
        self,
        streams: StreamOptions,
        shared_channels: int,
        fusion: StageFusion | Sequence[StageFusion | None] | None,
        pairwise: PairwiseMode,
        aggregate: AggregateMode,
        align: StageAlign | dict[str, StageAlign] | None,
        decoder: DecoderFactory,
        dropout: float,
    ) -> None:
        self.rgb_encoder = streams.stream(3)
        spec = self.rgb_encoder.feature_spec
        self.aux = AuxEncoders(self.modalities, streams, self.aux_encoder, shared_channels, spec)
        n = spec.num_stages
        num_streams = len(self.names) + 1
        self.fusions = nn.ModuleList(
            StageSkipped()
            if f is None
            else build_multi_fusion(f, c, num_streams, pairwise, aggregate)
            for f, c in zip(per_stage(fusion, n, "fusion"), spec.channels, strict=True)
        )
        aligners: dict[str, nn.Module] = {}
        for name in self.names:
            option = for_modality(align, name)
            if option is not None:
                factories = per_stage(option, n, f"align[{name!r}]")
                aligners[name] = nn.ModuleList(
                    stage_part(f, c, c) for f, c in zip(factories, spec.channels, strict=True)
                )
        self.aligners = nn.ModuleDict(aligners)
        if self.absent == "token":
            self.absent_tokens = nn.ModuleDict({m: AbsentTokens(spec.channels) for m in self.names})
        self.decoder = decoder(list(spec.channels))
        self.head = classifier_head(self.decoder, self.num_classes, dropout)

    def forward(
        self, rgb: Tensor, aux: Mapping[str, Tensor] | Tensor, present: Tensor | None = None
    ) -> Tensor:
        if isinstance(aux, Tensor):  # the data module's (B, ΣC, H, W) in the declared order
            aux = split_aux(self.modalities, aux)
        present = check_inputs(self.modalities, rgb, aux, present)
        if present is not None:  # absent values are never read, not even by BatchNorm
            aux = {n: drop_absent(aux[n], present[:, j]) for j, n in enumerate(self.names)}
        size = rgb.shape[-2:]
        if self.fusion_stage == "mid":
            logits = self.head(self.decoder(self.fused_features(rgb, aux, present)))
        elif self.fusion_stage == "late":
            logits = self.late_logits(rgb, aux, present)
        else:
            aligned = {n: self._input_aligned(n, rgb, aux[n]) for n in self.names}
            logits = self.branch(self.early(rgb, aligned, present))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def fused_features(
        self, rgb: Tensor, aux: Mapping[str, Tensor], present: Tensor | None = None
    ) -> list[Tensor]:
        """Mid fusion: every stream's pyramid, then one N-stream fusion per stage.

        Shape:
            rgb: (B, 3, H, W); aux[name]: (B, C_name, H, W); present: (B, M)
            -> [(B, C_i, H / r_i, W / r_i)], finest first
        """
        rgb_feats = self.rgb_encoder(rgb)
        stage_streams: list[list[Tensor]] = [[r] for r in rgb_feats]
        for j, name in enumerate(self.names):
            col = None if present is None else present[:, j]
            feats = run_on_present(
                partial(self._aux_pyramid, name),
                [rgb, aux[name], *rgb_feats],
                col,
                self.skip_absent,
            )
            for i, r in enumerate(rgb_feats):
                a = torch.zeros_like(r) if feats is None else feats[i]
                if col is not None and self.absent == "token":
                    a = self._token(name).fill(i, a, col)
                stage_streams[i].append(a)
        counted = self._fusion_presence(present)
        return [
            maps[0] if isinstance(fuse, StageSkipped) else fuse(maps, counted)
            for fuse, maps in zip(self.fusions, stage_streams, strict=True)
        ]

    def late_logits(
        self, rgb: Tensor, aux: Mapping[str, Tensor], present: Tensor | None = None
    ) -> Tensor:
        """Late fusion: every branch's logits, fused over the present branches.

        Shape:
            -> (B, num_classes, H / r_0, W / r_0)
        """
        z_rgb = self.rgb_branch(rgb)
        logits = [z_rgb]
        for j, name in enumerate(self.names):
            col = None if present is None else present[:, j]
            out = run_on_present(
                partial(self._aux_logits, name), [rgb, aux[name]], col, self.skip_absent
            )
            z = torch.zeros_like(z_rgb) if out is None else resize_to(out[0], z_rgb)
            if col is not None and self.absent == "token":
                z = self._token(name).fill(0, z, col)
            logits.append(z)
        out_logits: Tensor = self.late(logits, self._fusion_presence(present))
        return out_logits

    def _fusion_presence(self, present: Tensor | None) -> Tensor | None:
        """The (B, M + 1) mask the fusion counts: RGB first; all streams with tokens."""
        if present is None or self.absent == "token":
            return None
        rgb = torch.ones_like(present[:, :1])
        return torch.cat([rgb, present], dim=1)

    def _token(self, name: str) -> AbsentTokens:
        tokens = self.absent_tokens[name]
        assert isinstance(tokens, AbsentTokens)
        return tokens

    def _input_aligned(self, name: str, rgb: Tensor, x: Tensor) -> Tensor:
        if name in self.input_aligners:
            _, x = self.input_aligners[name](rgb, x)
        return x

    def _aux_pyramid(self, name: str, rgb: Tensor, x: Tensor, *rgb_feats: Tensor) -> list[Tensor]:
        feats = self.aux(name, self._input_aligned(name, rgb, x))
        if name in self.aligners:
            stages = self.aligners[name]
            assert isinstance(stages, nn.ModuleList)
            for i, aligner in enumerate(stages):
                if not isinstance(aligner, StageSkipped):
                    _, feats[i] = aligner(rgb_feats[i], feats[i])
        return feats

    def _aux_logits(self, name: str, rgb: Tensor, x: Tensor) -> list[Tensor]:
        return [self.aux_branches(name, self._input_aligned(name, rgb, x))]

    def auxiliary_logits(self) -> dict[str, Tensor]:
        """No auxiliary heads (the task's interface): always empty."""
        return {}

    def regularization(self) -> dict[str, Tensor]:
        """Regularisation losses exposed by the aligners in the last forward pass."""
        return aligner_losses(self)


def for_modality(option: Any, name: str) -> Any:
    """A per-modality option's entry for ``name``: the dict's value, or the option itself."""
    return option.get(name) if isinstance(option, Mapping) else option


def check_options(
    num_classes: int,
    fusion_stage: str,
    aux_encoder: str,
    pairwise: str,
    aggregate: str,
    absent: str,
    align: Any,
) -> None:
    """Raise a :class:`ConfigError` for a value outside its choices or off its stage."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    choices: dict[str, tuple[str, Any]] = {
        "fusion_stage": (fusion_stage, MultiFusionStage),
        "aux_encoder": (aux_encoder, AuxEncoderMode),
        "pairwise": (pairwise, PairwiseMode),
        "aggregate": (aggregate, AggregateMode),
        "absent": (absent, AbsentMode),
    }
    for what, (value, kind) in choices.items():
        if value not in get_args(kind):
            hint = (
                " (rgb_only / aux_only baselines: use RGBXSegmenter)"
                if what == "fusion_stage"
                else ""
            )
            raise ConfigError(f"{what} must be one of {get_args(kind)}, got {value!r}{hint}")
    if fusion_stage != "mid" and align is not None:
        raise ConfigError(
            f"align acts between encoder stages and needs fusion_stage='mid' (got "
            f"{fusion_stage!r}); use input_align for other stages"
        )


__all__ = ["AbsentMode", "MultiFusionStage", "MultiModalSegmenter", "check_options"]
