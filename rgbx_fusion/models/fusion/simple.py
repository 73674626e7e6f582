"""Parameter-light fusions: element-wise add, concat + projection, weighted sum, max."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, check_pair


class AddFusion(FusionBase):
    """Element-wise sum.

    Equation: ``Z = X_rgb + X_aux``.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "element-wise sum of the two streams (no parameters)"

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return x_rgb + x_aux


class ConcatFusion(FusionBase):
    """Channel concatenation followed by a 1×1 conv-BN-ReLU back to ``C`` channels.

    Equation: ``Z = ReLU(BN(W · [X_rgb; X_aux]))`` with ``W`` a bias-free 1×1 conv
    (2C → C); the BatchNorm supplies the bias.

    Args:
        channels: channel count ``C`` of both inputs and of the output.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "concatenate, then 1x1 conv-BN-ReLU back to C channels"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.proj = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return self.proj(torch.cat([x_rgb, x_aux], dim=1))


class WeightedSumFusion(FusionBase):
    """Convex combination of the two streams with learned weights.

    Equation: ``(w_rgb, w_aux) = softmax(a_rgb, a_aux)``, ``Z = w_rgb · X_rgb + w_aux · X_aux``.
    The logits ``a`` start at zero, so the block starts as the mean of the two
    streams. The softmax keeps the weights positive and summing to one, so the
    output keeps the scale of its inputs whatever the logits learn.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        per_channel: learn one weight pair per channel (``logits`` of shape (2, C))
            instead of one pair for the whole map (shape (2,)).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "softmax-normalised learned weighted sum (scalar or per-channel weights)"

    def __init__(self, channels: int, per_channel: bool = False) -> None:
        super().__init__(channels)
        self.per_channel = per_channel
        self.logits = nn.Parameter(torch.zeros((2, channels) if per_channel else (2,)))

    def weights(self) -> Tensor:
        """The normalised weights, shaped to broadcast against a (2, B, C, H, W) stack.

        Returns:
            (2, 1, C, 1, 1) when ``per_channel`` else (2, 1, 1, 1, 1).
        """
        w = self.logits.softmax(dim=0)
        return w.view(2, 1, -1, 1, 1)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        w = self.weights()
        return w[0] * x_rgb + w[1] * x_aux

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_channel={self.per_channel}"


class MaxFusion(FusionBase):
    """Element-wise maximum.

    Equation: ``Z = max(X_rgb, X_aux)``. The gradient goes to the larger input
    (split equally on exact ties).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "element-wise maximum of the two streams (no parameters)"

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return torch.maximum(x_rgb, x_aux)
