"""Single-stream segmentation branches and logit-level (late) fusion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.encoders import StagedBackbone


class SegmentationBranch(nn.Module):
    """One encoder + decoder + 1×1 classifier (logits at the finest feature level).

    Shape:
        x: (B, C_in, H, W) -> (B, num_classes, H / r_0, W / r_0)
    """

    def __init__(
        self,
        encoder: StagedBackbone,
        decoder: Callable[[Sequence[int]], nn.Module],
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder(list(encoder.feature_spec.channels))
        out = getattr(self.decoder, "out_channels", None)
        if not isinstance(out, int):
            raise ConfigError(f"{type(self.decoder).__name__} must expose an integer out_channels")
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(out, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.decoder(self.encoder(x)))
        return out


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

    def __init__(
        self, num_classes: int, mode: Literal["mean", "weighted", "conv"] = "mean"
    ) -> None:
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
