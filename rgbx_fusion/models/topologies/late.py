"""Late fusion: two encoder–decoder branches, one per modality, whose logits are fused."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.topologies.branch import DecoderFactory, SegmentationBranch, StreamOptions

LateFusionMode = Literal["mean", "weighted", "conv"]


class LateFusion(nn.Module):
    """Fuse two logit maps.

    Modes:
        ``mean``: ``(z_rgb + z_aux) / 2``.
        ``weighted``: ``w_k z_rgb,k + (1 - w_k) z_aux,k`` with learned per-class
        ``w_k = sigmoid(a_k)``, initialised to 0.5.
        ``conv``: a 1×1 conv over ``concat(z_rgb, z_aux)``, initialised to the mean.

    Shape:
        z_rgb, z_aux: (B, K, H, W) -> (B, K, H, W)
    """

    def __init__(self, num_classes: int, mode: LateFusionMode = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "weighted", "conv"):
            raise ConfigError(f"late_fusion must be 'mean', 'weighted' or 'conv', got {mode!r}")
        self.mode = mode
        if mode == "weighted":
            self.logit_weight = nn.Parameter(torch.zeros(num_classes))
        elif mode == "conv":
            self.conv = nn.Conv2d(2 * num_classes, num_classes, 1)
            with torch.no_grad():
                eye = torch.eye(num_classes) / 2
                self.conv.weight.copy_(torch.cat([eye, eye], 1)[..., None, None])
                self.conv.bias.zero_()  # type: ignore[union-attr]

    def forward(self, z_rgb: Tensor, z_aux: Tensor) -> Tensor:
        if self.mode == "mean":
            return (z_rgb + z_aux) / 2
        if self.mode == "weighted":
            w = torch.sigmoid(self.logit_weight).view(1, -1, 1, 1)
            return w * z_rgb + (1 - w) * z_aux
        out: Tensor = self.conv(torch.cat([z_rgb, z_aux], dim=1))
        return out


def build_late(
    streams: StreamOptions,
    aux_channels: int,
    num_classes: int,
    decoder: DecoderFactory,
    dropout: float,
    mode: LateFusionMode = "mean",
) -> dict[str, nn.Module]:
    """The parts of a late-fusion network by name: ``rgb_branch``, ``aux_branch``, ``late``.

    The aux branch uses ``streams.aux_backbone`` when it is set; both branches build their
    own decoder from the factory.
    """
    return {
        "rgb_branch": SegmentationBranch(streams.stream(3), decoder, num_classes, dropout),
        "aux_branch": SegmentationBranch(
            streams.stream(aux_channels, aux=True), decoder, num_classes, dropout
        ),
        "late": LateFusion(num_classes, mode),
    }


__all__ = ["LateFusion", "LateFusionMode", "build_late"]
