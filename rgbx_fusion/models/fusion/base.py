"""Contracts shared by every fusion operator.

Fusion answers *how to combine* two feature maps that already sit on the same
grid (alignment, in :mod:`rgbx_fusion.models.align`, answers *where*).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class FusionBase(nn.Module):
    """Combine two same-shaped feature maps into one.

    Subclasses set :attr:`summary` (one line, shown by ``rgbx-fusion list
    fusions``) and write their equation in the class docstring.

    Args:
        channels: channel count ``C`` of both inputs and of the output.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary: ClassVar[str] = ""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"{type(self).__name__}: channels must be positive, got {channels}")
        self.channels = channels

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class RectifyBase(nn.Module):
    """Exchange information between the two streams without merging them.

    Used for CMX-style feedback: the rectified pair replaces the inputs of the
    next encoder stage of both streams.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> ((B, C, H, W), (B, C, H, W))
    """

    summary: ClassVar[str] = ""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(  # pragma: no cover - abstract
        self, x_rgb: Tensor, x_aux: Tensor
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def check_pair(module: nn.Module, x_rgb: Tensor, x_aux: Tensor, channels: int) -> None:
    """Raise a clear error when a fusion gets inputs it was not built for."""
    if x_rgb.shape != x_aux.shape:
        raise ValueError(
            f"{type(module).__name__}: rgb and aux features must have the same shape, "
            f"got {tuple(x_rgb.shape)} and {tuple(x_aux.shape)}; align or project aux first"
        )
    if x_rgb.shape[1] != channels:
        raise ValueError(
            f"{type(module).__name__} was built for {channels} channels but got "
            f"{x_rgb.shape[1]}; check the encoder's feature_spec"
        )
