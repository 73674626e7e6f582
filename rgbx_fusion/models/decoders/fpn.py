"""Feature pyramid network decoder with a semantic-FPN merge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.models.decoders.base import DecoderBase
from rgbx_fusion.models.layers import ConvNormAct, resize_to


class FPNDecoder(DecoderBase):
    """FPN top-down pathway followed by a semantic-FPN merge to the finest level.

    Equations (levels ``i = 0..n-1``, finest first; ``up`` resizes to level ``i``)::

        L_i = conv1x1_i(C_i)                          # lateral, with bias, no norm
        T_{n-1} = L_{n-1};   T_i = L_i + up(T_{i+1})  # top-down, ``upsample`` mode
        P_i = ConvBNReLU3x3_i(T_i)                    # output convs
        merge="sum":    out = sum_i bilinear(P_i)
        merge="concat": out = ConvBNReLU3x3(concat_i bilinear(P_i))   # n·channels → channels

    ``sum`` (default) is the semantic-FPN merge (Kirillov et al. 2019) without its
    per-level upsampling towers; ``concat`` lets the network weight levels
    (UPerNet-style fuse) at the cost of one wider 3×3 conv.

    Args:
        in_channels: channels of every encoder level, finest first. Each level is
            expected at half the resolution of the previous one, but any sizes work
            (every resize is to an explicit size).
        channels: decoder width, used on every level and for the output.
        merge: ``"sum"`` or ``"concat"`` (see above).
        upsample: interpolation of the top-down path, ``"nearest"`` (as in FPN) or
            ``"bilinear"``. The final merge is always bilinear.

    Shape:
        features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)

    Example:
        >>> dec = FPNDecoder([8, 16, 32], channels=16)
        >>> feats = [torch.randn(2, c, 32 // 2**i, 40 // 2**i) for i, c in enumerate([8, 16, 32])]
        >>> dec(feats).shape
        torch.Size([2, 16, 32, 40])
    """

    summary: ClassVar[str] = "FPN top-down path + semantic-FPN merge (sum or concat) to 1/4"

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 128,
        merge: Literal["sum", "concat"] = "sum",
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__(in_channels, channels)
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got {merge!r}")
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        self.channels = channels
        self.merge = merge
        self.upsample = upsample
        self.lateral = nn.ModuleList(self._build_lateral(c, channels) for c in self.in_channels)
        self.output = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in self.in_channels)
        n = len(self.in_channels)
        self.fuse = ConvNormAct(n * channels, channels, 3) if merge == "concat" else nn.Identity()

    def _build_lateral(self, in_channels: int, channels: int) -> nn.Module:
        """The lateral projection of one level (a 1×1 conv here; FaPN uses its FSM)."""
        return nn.Conv2d(in_channels, channels, 1)

    def top_down_step(self, level: int, lateral: Tensor, top: Tensor) -> Tensor:
        """Combine a lateral with the coarser top-down feature: ``L_i + up(T_{i+1})``.

        Shape:
            lateral: (B, channels, H_i, W_i); top: (B, channels, H_{i+1}, W_{i+1})
            -> (B, channels, H_i, W_i)
        """
        return lateral + resize_to(top, lateral, self.upsample)

    def pyramid(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The FPN outputs ``P_i`` before the merge, finest first.

        Shape:
            features: [(B, in_channels[i], H_i, W_i)] -> [(B, channels, H_i, W_i)]
        """
        self.check_features(features)
        laterals = [lat(f) for lat, f in zip(self.lateral, features, strict=True)]
        top = laterals[-1]
        tops = [top]
        for i in range(len(laterals) - 2, -1, -1):
            top = self.top_down_step(i, laterals[i], top)
            tops.append(top)
        tops.reverse()
        return [conv(t) for conv, t in zip(self.output, tops, strict=True)]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode a feature pyramid into one map at the finest level.

        Shape:
            features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)
        """
        outs = self.pyramid(features)
        finest = outs[0]
        resized = [finest] + [resize_to(p, finest) for p in outs[1:]]
        if self.merge == "sum":
            out = resized[0]
            for p in resized[1:]:
                out = out + p
            return out
        return self.fuse(torch.cat(resized, dim=1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, merge={self.merge!r}"
