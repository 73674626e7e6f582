"""Channel-attention fusions (SE, CBAM, MS-CAM/AFF/iAFF, FaPN's FSM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureSelection(nn.Module):
    """FaPN feature selection module (FSM) on one feature map.

    Equation: ``u = sigmoid(conv1x1(GAP(C)))``, ``out = conv1x1'(C + u * C)``.
    The first 1×1 conv keeps the channel count; the second maps to ``out_channels``.

    Shape:
        x: (B, C_in, H, W) -> (B, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        u = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))
        return self.project(x + x * u)
