"""Spatial (per-pixel) weighting fusions: ASFF-like adaptive weights and SA-Gate-like gates."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, check_pair


class SpatialAdaptiveFusion(FusionBase):
    """Per-pixel softmax weights over the two streams (ASFF-like).

    Each stream is compressed to ``hidden`` channels by its own 1×1 conv-BN-ReLU;
    a 1×1 conv on the two compressed maps predicts one logit per stream and pixel::

        (α, β) = softmax_over_streams(V · [φ_rgb(X_rgb); φ_aux(X_aux)] + b)   (B, 1, H, W) each
        Z = α · X_rgb + β · X_aux

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        hidden: width of each compressed stream (ASFF uses 16).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "ASFF-like per-pixel softmax weights over the two streams"

    def __init__(self, channels: int, hidden: int = 16) -> None:
        super().__init__(channels)
        self.weight_rgb = self._compress(channels, hidden)
        self.weight_aux = self._compress(channels, hidden)
        self.weight_levels = nn.Conv2d(2 * hidden, 2, kernel_size=1)

    @staticmethod
    def _compress(channels: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        levels = torch.cat([self.weight_rgb(x_rgb), self.weight_aux(x_aux)], dim=1)
        w = self.weight_levels(levels).softmax(dim=1)
        return w[:, 0:1] * x_rgb + w[:, 1:2] * x_aux


class GatedFusion(FusionBase):
    """Per-pixel sigmoid gates predicted from both streams (SA-Gate-like fusion gate).

    Each stream gets its own gate map from the concatenation of both::

        K   = [X_rgb; X_aux]                                   (B, 2C, H, W)
        G_r = sigmoid(w_r · K + b_r),  G_a = sigmoid(w_a · K + b_a)   (B, 1, H, W), 1×1 convs
        Z   = G_r · X_rgb + G_a · X_aux

    Unlike :class:`SpatialAdaptiveFusion` the gates are independent (not a
    softmax), so a stream can be switched off or both kept at full strength.
    SA-Gate normalises its two gates with a softmax; this variant does not.

    Args:
        channels: channel count ``C`` of both inputs and of the output.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "SA-Gate-like independent per-pixel sigmoid gates from both streams"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.gate_rgb = nn.Conv2d(2 * channels, 1, kernel_size=1)
        self.gate_aux = nn.Conv2d(2 * channels, 1, kernel_size=1)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        joint = torch.cat([x_rgb, x_aux], dim=1)
        return (
            torch.sigmoid(self.gate_rgb(joint)) * x_rgb
            + torch.sigmoid(self.gate_aux(joint)) * x_aux
        )
