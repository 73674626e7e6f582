"""SegFormer's all-MLP decoder, as used by CMX (without its classifier)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.models.decoders.fpn import ConvNormAct, check_features, resize_to


class LinearProjection(nn.Module):
    """Per-pixel linear layer on an NCHW map (SegFormer's ``MLP`` block).

    The weight is an ``nn.Linear`` named ``proj`` (so SegFormer weights load by
    name), applied as a 1×1 convolution: the same math without the
    flatten/transpose/reshape round trip through token layout.

    Shape:
        x: (B, in_channels, H, W) -> (B, out_channels, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class MLPDecoder(nn.Module):
    """SegFormer/CMX all-MLP decoder, up to (not including) the classifier.

    Equations (levels ``i = 1..n``, ``c1`` finest; ``up`` is bilinear,
    ``align_corners=False``, to the size of ``c1``)::

        _ci = up(linear_ci(ci))                      # per-pixel Linear(C_i → E)
        out = Dropout2d(ReLU(BN(conv1x1(concat(_cn, ..., _c2, _c1)))))   # n·E → E

    The concatenation order is coarsest first, ``[c4, c3, c2, c1]`` for four
    levels, as in SegFormer and CMX; it matters when loading their weights.

    Weight mapping (the segmenter's head holds the classifier):

    - official SegFormer (mmseg) ``decode_head.``: ``linear_c{i}.proj.{weight,bias}``,
      ``linear_fuse.conv.weight`` and ``linear_fuse.bn.*`` map to the same names
      here; ``linear_pred.*`` is the segmenter's classifier.
    - CMX ``decode_head.``: ``linear_c{i}.proj.*`` same names;
      ``linear_fuse.0.weight`` → ``linear_fuse.conv.weight``,
      ``linear_fuse.1.*`` → ``linear_fuse.bn.*``. CMX's fuse conv has a bias,
      which BN cancels: fold it exactly with ``bn.running_mean -= bias``.
      ``linear_pred.*`` is the segmenter's classifier.

    Args:
        in_channels: channels of every encoder level, finest first.
        channels: embedding dim ``E`` (SegFormer/CMX: 256 for MiT-B0, 512 otherwise).
        dropout: ``Dropout2d`` probability after the fuse (0.1 in SegFormer).

    Shape:
        features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)

    Example:
        >>> dec = MLPDecoder([32, 64, 160, 256], channels=64)
        >>> sizes = [(32 // 2**i, 24 // 2**i) for i in range(4)]
        >>> feats = [torch.randn(1, c, *s) for c, s in zip(dec.in_channels, sizes)]
        >>> dec(feats).shape
        torch.Size([1, 64, 32, 24])
    """

    summary: ClassVar[str] = (
        "SegFormer/CMX all-MLP decoder: per-level linear, upsample, concat, fuse"
    )

    def __init__(
        self, in_channels: Sequence[int], channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one feature level")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.channels = channels
        self.out_channels = channels
        # named linear_c1 (finest) .. linear_cn, as in SegFormer, not a ModuleList
        self.level_names = tuple(f"linear_c{i + 1}" for i in range(len(self.in_channels)))
        for name, c in zip(self.level_names, self.in_channels, strict=True):
            self.add_module(name, LinearProjection(c, channels))
        self.linear_fuse = ConvNormAct(len(self.in_channels) * channels, channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def project(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Each level projected to ``channels`` and resized to the finest level, finest first.

        Shape:
            features: [(B, in_channels[i], H_i, W_i)] -> [(B, channels, H_0, W_0)]
        """
        check_features(self, features, self.in_channels)
        finest = features[0]
        return [
            resize_to(self.get_submodule(name)(f), finest)
            for name, f in zip(self.level_names, features, strict=True)
        ]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode a feature pyramid into one map at the finest level.

        Shape:
            features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)
        """
        if not torch.is_grad_enabled() and features[0].device.type == "cpu":
            # CPU inference: oneDNN runs the 1×1 convs on channels_last maps without
            # reordering the n·E-channel concatenation (14% faster for MiT-B2 widths at
            # 120×160, E = 512, copies included). Training keeps the inputs' layout:
            # there the channels_last backward is the slower one.
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        projected = self.project(features)
        fused = self.linear_fuse(torch.cat(projected[::-1], dim=1))  # [c4, c3, c2, c1]
        return self.dropout(fused)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}"
