"""Deformable alignment (FaPN's feature alignment module) as an aligner.

A functional + module pair, kornia style:

- :func:`modulated_deform_conv2d` — DCNv2 (modulated deformable conv) with the
  offset/mask layout spelled out; a thin wrapper over
  :func:`torchvision.ops.deform_conv2d`.
- :class:`ModulatedDeformConv2d` — a DCNv2 whose offsets and masks are predicted
  by a conv from a *guide* tensor. FaPN's FAM uses it with its own semantics
  (guide = concat(FSM(lateral), upsampled top), ReLU after, DCNv2 init).
- :class:`DeformableAlign` — the same module used as an aligner: the guide is
  concat(rgb, aux), it resamples aux, and it is exactly the identity at init.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from rgbx_fusion.models.align.base import AlignBase


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    dilation: int = 1,
) -> Tensor:
    """Stride-1, size-preserving modulated deformable convolution (DCNv2).

    ``out(p) = bias + Σ_k w_k · m_k(p) · x(p + p_k + Δp_k(p))`` where ``p_k`` are
    the regular kernel taps, ``x`` is sampled bilinearly (zero outside the map),
    ``Δp_k`` are the offsets and ``m_k`` the modulation masks.

    Convention:
        Offsets are in pixels, ordered ``(dy, dx)`` per tap, taps in row-major
        order, groups outermost: channel ``2·(g·k·k + t)`` is ``dy`` and
        ``2·(g·k·k + t) + 1`` is ``dx`` of tap ``t`` of offset group ``g``.
        Positive ``dy`` samples further down, so constant offsets ``(s_y, s_x)``
        on every tap give ``out(y, x) = conv(x)(y + s_y, x + s_x)``.
        Mask channel ``g·k·k + t`` modulates tap ``t`` of group ``g``.
        The number of offset groups ``G`` is inferred from ``offset`` and must
        divide ``C_in``; conv groups are inferred from ``weight``.

    Args:
        x: input map.
        offset: per-pixel offsets.
        mask: per-pixel modulation, ``None`` for DCNv1 (all ones).
        weight: conv weight ``(C_out, C_in / groups, k, k)`` with odd ``k``.
        bias: optional ``(C_out,)`` bias.
        dilation: kernel dilation; padding is ``dilation · (k // 2)``.

    Shape:
        x: (B, C_in, H, W); offset: (B, 2·G·k·k, H, W); mask: (B, G·k·k, H, W)
        -> (B, C_out, H, W)
    """
    k = weight.shape[-1]
    pad = dilation * (k // 2)
    return deform_conv2d(
        x,
        offset,
        weight,
        bias,
        stride=(1, 1),
        padding=(pad, pad),
        dilation=(dilation, dilation),
        mask=mask,
    )


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable conv whose offsets and masks come from a guide tensor.

    Equation: ``[Δp, l] = conv_offset(guide)``; ``m = mask_scale · sigmoid(l)``;
    ``out = DCNv2(x; Δp, m)`` (see :func:`modulated_deform_conv2d`).

    Init (DCNv2): ``conv_offset`` is zero, so offsets are 0 and masks are
    ``mask_scale / 2``; the DCN weight is initialised like ``nn.Conv2d``.
    :meth:`reset_to_identity` turns the whole module into the exact identity.

    Args:
        in_channels: channels of ``x``.
        out_channels: output channels.
        guide_channels: channels of the guide the offsets are predicted from.
        kernel_size: DCN kernel size (odd).
        offset_groups: offset groups ``G``; must divide ``in_channels``.
        groups: conv groups of the DCN weight.
        offset_kernel_size: kernel size of ``conv_offset`` (odd).
        mask_scale: masks lie in ``(0, mask_scale)``: 1 is DCNv2, 2 makes
            the zero-initialised masks exactly 1.

    Shape:
        x: (B, in_channels, H, W); guide: (B, guide_channels, H, W)
        -> (B, out_channels, H, W)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        guide_channels: int,
        kernel_size: int = 3,
        offset_groups: int = 1,
        groups: int = 1,
        offset_kernel_size: int = 3,
        mask_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or offset_kernel_size % 2 == 0:
            raise ValueError(f"kernel sizes must be odd, got {kernel_size}, {offset_kernel_size}")
        if in_channels % offset_groups or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"offset_groups={offset_groups} and groups={groups} must divide "
                f"in_channels={in_channels} (and groups out_channels={out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.kernel_size = kernel_size
        self.offset_groups = offset_groups
        self.mask_scale = mask_scale
        taps = offset_groups * kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(
            guide_channels, 3 * taps, offset_kernel_size, padding=offset_kernel_size // 2
        )
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCNv2 init: zero offset/mask conv, ``nn.Conv2d``-style DCN weight and bias."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.offset_bias)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        fan_in = self.weight[0].numel()
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Make ``forward(x, guide) == x`` exactly: zero offsets, masks 1, identity kernel.

        The identity kernel has a 1 at the centre tap linking every channel to
        itself and 0 elsewhere; with zero offsets every tap samples a grid point,
        so bilinear sampling is exact and the output equals the input bitwise.

        Raises:
            ValueError: when the module changes the channel count, or when
                ``mask_scale`` is not 2 (masks could not be exactly 1).
        """
        if self.in_channels != self.out_channels:
            raise ValueError(
                f"identity init needs in_channels == out_channels, got "
                f"{self.in_channels} and {self.out_channels}"
            )
        if self.mask_scale != 2.0:
            raise ValueError("identity init needs mask_scale=2 so that masks are exactly 1")
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.offset_bias)
        self.weight.zero_()
        self.bias.zero_()
        per_group = self.in_channels // self.groups
        channel = torch.arange(self.out_channels)
        centre = self.kernel_size // 2
        # output channel o is in group o // per_group, where input channel o has index o % per_group
        self.weight[channel, channel % per_group, centre, centre] = 1.0

    @property
    def offset_bias(self) -> Tensor:
        """Bias of ``conv_offset``: constant offsets ``(dy, dx)`` per tap, then mask logits."""
        bias = self.conv_offset.bias
        assert bias is not None  # built with bias=True
        return bias

    def offsets_and_masks(self, guide: Tensor) -> tuple[Tensor, Tensor]:
        """Predict offsets ``(B, 2·G·k·k, H, W)`` and masks ``(B, G·k·k, H, W)``."""
        out = self.conv_offset(guide)
        taps = self.offset_groups * self.kernel_size * self.kernel_size
        offset, logits = out.split([2 * taps, taps], dim=1)
        return offset, self.mask_scale * torch.sigmoid(logits)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        offset, mask = self.offsets_and_masks(guide)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"offset_groups={self.offset_groups}, groups={self.groups}, "
            f"mask_scale={self.mask_scale}"
        )


class DeformableAlign(AlignBase):
    """FaPN-style deformable alignment of aux features onto the RGB grid.

    Equation: ``[Δp, l] = conv(concat(x_rgb, x_aux))``, ``m = 2·sigmoid(l)``,
    ``aux' = DCNv2(x_aux; Δp, m)`` with a ``C_aux → C_aux`` kernel.

    Identity at init (exact, not approximate): offsets are zero, masks are
    exactly ``2·sigmoid(0) = 1`` and the DCN kernel is the identity (centre tap
    1 per channel, 0 elsewhere, zero bias). FaPN's ReLU after the DCN is left
    out here: an aligner returns aux in its own value range (it may be a signed
    feature map or a depth image), and ``ReLU`` would break the identity. This
    is preferred over a zero-initialised residual ``aux + dcn(aux)``, where the
    offset conv would get no gradient until the DCN weight moved away from 0;
    here offsets and masks receive gradient from the first step.

    Convention:
        aux is warped toward rgb; rgb is returned unchanged. Offsets are in
        pixels of the aux feature map, ``(dy, dx)`` per tap (see
        :func:`modulated_deform_conv2d`); ``aux'(p) ≈ aux(p + Δp)``.

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux`` (default: ``rgb_channels``).
        kernel_size: DCN kernel size (odd).
        offset_groups: offset groups; default ``gcd(8, aux_channels)`` (FaPN
            uses 8; 1 for a single-channel depth image).
        groups: conv groups of the DCN kernel; ``aux_channels`` makes it a
            depthwise, per-channel resampler.
        offset_kernel_size: kernel of the conv predicting offsets and masks.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> ((B, C1, H, W), (B, C2, H, W))

    Example:
        >>> align = DeformableAlign(16, 8)
        >>> rgb, aux = torch.randn(1, 16, 12, 10), torch.randn(1, 8, 12, 10)
        >>> torch.equal(align(rgb, aux)[1], aux)
        True
    """

    summary: ClassVar[str] = "FaPN-style modulated deformable conv on aux, offsets from rgb+aux"

    def __init__(
        self,
        rgb_channels: int,
        aux_channels: int | None = None,
        kernel_size: int = 3,
        offset_groups: int | None = None,
        groups: int = 1,
        offset_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        aux_channels = rgb_channels if aux_channels is None else aux_channels
        if offset_groups is None:
            offset_groups = math.gcd(8, aux_channels)
        self.rgb_channels = rgb_channels
        self.aux_channels = aux_channels
        self.dcn = ModulatedDeformConv2d(
            aux_channels,
            aux_channels,
            guide_channels=rgb_channels + aux_channels,
            kernel_size=kernel_size,
            offset_groups=offset_groups,
            groups=groups,
            offset_kernel_size=offset_kernel_size,
            mask_scale=2.0,
        )
        self.dcn.reset_to_identity()
        self._last_offset: Tensor | None = None

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        if x_rgb.shape[-2:] != x_aux.shape[-2:] or x_rgb.shape[0] != x_aux.shape[0]:
            raise ValueError(
                f"DeformableAlign needs rgb and aux on the same batch and grid, got "
                f"{tuple(x_rgb.shape)} and {tuple(x_aux.shape)}; resize aux first"
            )
        if x_rgb.shape[1] != self.rgb_channels or x_aux.shape[1] != self.aux_channels:
            raise ValueError(
                f"DeformableAlign was built for rgb/aux channels {self.rgb_channels}/"
                f"{self.aux_channels}, got {x_rgb.shape[1]}/{x_aux.shape[1]}"
            )
        offset, mask = self.dcn.offsets_and_masks(torch.cat([x_rgb, x_aux], dim=1))
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self._last_offset = offset.detach()
        aligned = modulated_deform_conv2d(x_aux, offset, mask, self.dcn.weight, self.dcn.bias)
        return x_rgb, aligned

    def last_transform(self) -> Tensor | None:
        """Offsets ``(B, 2·G·k·k, H, W)`` of the last forward pass, in pixels ``(dy, dx)``."""
        return self._last_offset

    def last_displacement(self) -> Tensor | None:
        """Mean offset of all kernel taps and groups, ``(B, 2, H, W)`` in pixels ``(x, y)``.

        A summary for visualisation: the DCN samples every tap at its own offset (and
        modulates it), so this is where the kernel looks on average, not an exact warp.
        """
        if self._last_offset is None:
            return None
        b, _, h, w = self._last_offset.shape
        return self._last_offset.view(b, -1, 2, h, w).mean(1).flip(1)
