"""Small blocks shared by the decoders, fusions and topologies of the package."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvNormAct(nn.Sequential):
    """``Conv2d (no bias) → BatchNorm2d → ReLU``, padded to keep the spatial size.

    Sub-module names are ``conv``, ``bn`` and ``act`` (as in mmcv's ``ConvModule``),
    which keeps weights from mmseg/SegFormer checkpoints convertible by name.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        dilation: dilation of the kernel; padding grows with it.

    Shape:
        x: (B, in_channels, H, W) -> (B, out_channels, H, W)

    Example:
        >>> import torch
        >>> ConvNormAct(4, 8, kernel_size=3, dilation=2)(torch.randn(2, 4, 9, 7)).shape
        torch.Size([2, 8, 9, 7])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


def resize_to(x: Tensor, ref: Tensor, mode: str = "bilinear") -> Tensor:
    """Resize ``x`` to the spatial size of ``ref`` (no-op when it already matches).

    Bilinear uses ``align_corners=False`` (as SegFormer/mmseg do). Resizing to an
    explicit size rather than by a factor keeps odd input sizes working.

    Shape:
        x: (B, C, h, w); ref: (B, *, H, W) -> (B, C, H, W)

    Example:
        >>> import torch
        >>> resize_to(torch.randn(1, 2, 4, 5), torch.empty(1, 7, 9, 11)).shape
        torch.Size([1, 2, 9, 11])
    """
    size = ref.shape[-2:]
    if x.shape[-2:] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


__all__ = ["ConvNormAct", "resize_to"]
