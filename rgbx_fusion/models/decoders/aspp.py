"""DeepLabV3+ decoder: ASPP on the coarsest level, refined with the finest level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from rgbx_fusion.models.decoders.base import DecoderBase
from rgbx_fusion.models.layers import ConvNormAct, resize_to


def scale_rates(rates: Sequence[int], stride: int, reference_stride: int = 16) -> tuple[int, ...]:
    """Rescale atrous rates chosen for ``reference_stride`` to a feature at ``stride``.

    DeepLab's rates (6, 12, 18) are for output stride 16 and are doubled at
    stride 8; the same field of view at stride 32 needs half of them.

    >>> scale_rates((6, 12, 18), 32)
    (3, 6, 9)
    >>> scale_rates((6, 12, 18), 8)
    (12, 24, 36)
    """
    return tuple(max(1, round(r * reference_stride / stride)) for r in rates)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool → 1×1 conv → ReLU → broadcast.

    No BatchNorm here (DeepLab has one): on a 1×1 map BN sees one value per
    channel and sample, so training at batch size 1 (common with large RGB-X
    inputs) would fail; the conv has a bias instead.

    Shape:
        x: (B, in_channels, H, W) -> (B, out_channels, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.act(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling.

    Equation: ``out = Dropout(ConvBNReLU1x1(concat(b_1x1, b_r1, b_r2, b_r3, b_pool)))``
    with ``b_r`` a 3×3 conv-BN-ReLU of dilation ``r``.

    Shape:
        x: (B, in_channels, H, W) -> (B, channels, H, W)
    """

    def __init__(
        self, in_channels: int, channels: int, rates: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, channels, 1)]
            + [ConvNormAct(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.pool = ImagePooling(in_channels, channels)
        self.project = ConvNormAct((len(rates) + 2) * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches] + [self.pool(x)]
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class ASPPDecoder(DecoderBase):
    """DeepLabV3+ decoder (Chen et al., ECCV 2018).

    Equations (``C_0`` finest, ``C_{n-1}`` coarsest; ``up`` is bilinear)::

        A = up(ASPP(C_{n-1})) to the size of C_0
        out = ConvBNReLU3x3(ConvBNReLU3x3(concat(A, ConvBNReLU1x1(C_0))))   # C_0 → 48 ch

    Levels between the finest and the coarsest are not used.

    Args:
        in_channels: channels of every encoder level, finest first.
        channels: ASPP and decoder width (DeepLab: 256).
        rates: atrous rates for output stride 16, rescaled to ``stride`` with
            :func:`scale_rates` (at stride 32: (3, 6, 9)).
        stride: stride of the coarsest level with respect to the input. Default
            ``4 · 2^(n-1)``, i.e. the usual layout with the finest level at 1/4;
            pass ``feature_spec.reductions[-1]`` for other encoders.
        low_level_channels: width of the projection of the finest level (48).
        dropout: dropout after the ASPP projection (DeepLabV3+: 0.1).

    Shape:
        features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)

    Example:
        >>> dec = ASPPDecoder([8, 16, 32, 64], channels=32)
        >>> dec.rates
        (3, 6, 9)
        >>> sizes = [(32 // 2**i, 24 // 2**i) for i in range(4)]
        >>> feats = [torch.randn(1, c, *s) for c, s in zip(dec.in_channels, sizes)]
        >>> dec.eval()(feats).shape
        torch.Size([1, 32, 32, 24])
    """

    summary: ClassVar[str] = "DeepLabV3+: ASPP on the coarsest level + 48-ch finest-level skip"

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        stride: int | None = None,
        low_level_channels: int = 48,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, channels)
        self.channels = channels
        self.stride = 4 * 2 ** (len(self.in_channels) - 1) if stride is None else stride
        self.rates = scale_rates(rates, self.stride)
        self.aspp = ASPP(self.in_channels[-1], channels, self.rates, dropout)
        self.low_level = ConvNormAct(self.in_channels[0], low_level_channels, 1)
        self.refine = nn.Sequential(
            ConvNormAct(channels + low_level_channels, channels, 3),
            ConvNormAct(channels, channels, 3),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode a feature pyramid into one map at the finest level.

        Shape:
            features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)
        """
        self.check_features(features)
        finest = features[0]
        context = resize_to(self.aspp(features[-1]), finest)
        return self.refine(torch.cat([context, self.low_level(finest)], dim=1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, rates={self.rates}"
