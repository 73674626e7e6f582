"""Single-stream topologies: early fusion and the rgb-only / aux-only baselines.

* ``early``: ``concat(rgb, aux)`` → one encoder with ``3 + Ca`` input channels.
* ``rgb_only`` / ``aux_only``: one modality alone, with the same encoder, decoder
  and classifier as the fusion networks (``aux_only`` uses ``aux_backbone`` when
  it is set).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.models.topologies.branch import DecoderFactory, SegmentationBranch, StreamOptions

SingleStream = Literal["early", "rgb_only", "aux_only"]


def stream_channels(stage: SingleStream, aux_channels: int) -> int:
    """Input channels of the one stream.

    >>> stream_channels("early", 1), stream_channels("rgb_only", 1), stream_channels("aux_only", 3)
    (4, 3, 3)
    """
    return {"early": 3 + aux_channels, "rgb_only": 3, "aux_only": aux_channels}[stage]


def build_single_stream(
    stage: SingleStream,
    streams: StreamOptions,
    aux_channels: int,
    num_classes: int,
    decoder: DecoderFactory,
    dropout: float,
) -> dict[str, nn.Module]:
    """The parts of a single-stream network by name: one ``branch``."""
    encoder = streams.stream(stream_channels(stage, aux_channels), aux=stage == "aux_only")
    return {"branch": SegmentationBranch(encoder, decoder, num_classes, dropout)}


def stream_input(stage: SingleStream, rgb: Tensor, aux: Tensor) -> Tensor:
    """What the one stream sees.

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> (B, 3 + Ca | 3 | Ca, H, W)
    """
    if stage == "early":
        return torch.cat([rgb, aux], dim=1)
    return rgb if stage == "rgb_only" else aux


__all__ = ["SingleStream", "build_single_stream", "stream_channels", "stream_input"]
