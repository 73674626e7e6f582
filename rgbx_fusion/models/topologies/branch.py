"""What every topology is built from: streams from the backbone options, and classifier branches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.encoders import StagedBackbone

DecoderFactory = Callable[[Sequence[int]], nn.Module]


@dataclass(frozen=True)
class StreamOptions:
    """The segmenter's backbone options, shared by every stream a topology builds.

    Attributes:
        backbone: timm model of the RGB stream (and of single-stream inputs with RGB).
        aux_backbone: timm model of the aux stream; ``None`` = ``backbone``.
        pretrained: load timm's pretrained weights.
        out_indices: timm feature levels (``None``: up to four with stride ≥ 4).
        kwargs: extra ``timm.create_model`` arguments of every stream.
    """

    backbone: str
    aux_backbone: str | None = None
    pretrained: bool = False
    out_indices: Sequence[int] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def stream(self, in_chans: int, aux: bool = False) -> StagedBackbone:
        """A stream over ``in_chans`` input channels, of the aux backbone when ``aux``."""
        name = (self.aux_backbone or self.backbone) if aux else self.backbone
        return StagedBackbone(name, in_chans, self.pretrained, self.out_indices, **self.kwargs)


def classifier_head(decoder: nn.Module, num_classes: int, dropout: float) -> nn.Sequential:
    """``Dropout2d → 1×1 conv`` from the decoder's ``out_channels`` to the classes.

    Raises:
        ConfigError: the decoder does not expose an integer ``out_channels``.

    Shape:
        x: (B, decoder.out_channels, H, W) -> (B, num_classes, H, W)
    """
    out = getattr(decoder, "out_channels", None)
    if not isinstance(out, int):
        raise ConfigError(f"{type(decoder).__name__} must expose an integer out_channels")
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(out, num_classes, 1))


class SegmentationBranch(nn.Module):
    """One encoder + decoder + classifier (logits at the finest feature level).

    Args:
        encoder: the stream.
        decoder: factory ``in_channels -> decoder`` (exposes ``out_channels``).
        num_classes: output classes.
        dropout: dropout before the classifier.

    Shape:
        x: (B, C_in, H, W) -> (B, num_classes, H / r_0, W / r_0)
    """

    def __init__(
        self,
        encoder: StagedBackbone,
        decoder: DecoderFactory,
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder(list(encoder.feature_spec.channels))
        self.head = classifier_head(self.decoder, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.decoder(self.encoder(x)))
        return out


__all__ = ["DecoderFactory", "SegmentationBranch", "StreamOptions", "classifier_head"]
