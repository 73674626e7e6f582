"""FaPN: feature-aligned pyramid network decoder (Huang et al., ICCV 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.models.align.deform import ModulatedDeformConv2d
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.fusion.channel_attention import FeatureSelection
from rgbx_fusion.models.layers import resize_to


class FeatureAlign(nn.Module):
    """FaPN's feature alignment module (FAM) for one top-down step.

    Equation (``L`` is the FSM lateral, ``T`` the coarser top-down feature)::

        U = bilinear(T) to the size of L
        [Δp, l] = conv3x3(concat(L, U));  m = sigmoid(l)     # DCNv2 offsets/masks
        out = ReLU(DCNv2(U; Δp, m)) + L

    The DCN uses DCNv2's init (zero offsets, masks 0.5, ``nn.Conv2d``-style
    weights), as in FaPN; unlike :class:`~rgbx_fusion.models.align.deform.DeformableAlign`
    it is not the identity at init (it does not have to be).

    Args:
        channels: channels of ``L``, ``T`` and the output.
        offset_groups: deformable groups (FaPN uses 8; must divide ``channels``).
        kernel_size: DCN kernel size.

    Shape:
        lateral: (B, C, H, W); top: (B, C, h, w) -> (B, C, H, W)
    """

    def __init__(self, channels: int, offset_groups: int = 8, kernel_size: int = 3) -> None:
        super().__init__()
        self.dcn = ModulatedDeformConv2d(
            channels,
            channels,
            guide_channels=2 * channels,
            kernel_size=kernel_size,
            offset_groups=offset_groups,
            mask_scale=1.0,
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, lateral: Tensor, top: Tensor) -> Tensor:
        up = resize_to(top, lateral, "bilinear")
        aligned = self.act(self.dcn(up, torch.cat([lateral, up], dim=1)))
        return aligned + lateral


class FaPNDecoder(FPNDecoder):
    """FPN with FaPN's feature selection (FSM) on laterals and alignment (FAM) top-down.

    Equations (levels ``i = 0..n-1``, finest first)::

        L_i = FSM_i(C_i)                 # FeatureSelection: C + sigmoid(conv(GAP(C)))·C → 1×1
        T_{n-1} = L_{n-1};   T_i = FAM_i(L_i, T_{i+1})
        P_i = ConvBNReLU3x3_i(T_i);  out = merge_i bilinear(P_i)   # as FPNDecoder

    The merge to the finest level is the same semantic-FPN merge as
    :class:`~rgbx_fusion.models.decoders.fpn.FPNDecoder`.

    Args:
        in_channels: channels of every encoder level, finest first.
        channels: decoder width; must be divisible by ``offset_groups``.
        merge: ``"sum"`` or ``"concat"`` (see :class:`FPNDecoder`).
        offset_groups: deformable groups of every FAM (FaPN: 8).
        kernel_size: DCN kernel size of every FAM.

    Shape:
        features: [(B, in_channels[i], H_i, W_i)] -> (B, channels, H_0, W_0)

    Example:
        >>> dec = FaPNDecoder([8, 16], channels=16)
        >>> dec([torch.randn(1, 8, 16, 20), torch.randn(1, 16, 8, 10)]).shape
        torch.Size([1, 16, 16, 20])
    """

    summary: ClassVar[str] = "FaPN: FPN with feature selection (FSM) and deformable alignment (FAM)"

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 128,
        merge: Literal["sum", "concat"] = "sum",
        offset_groups: int = 8,
        kernel_size: int = 3,
    ) -> None:
        if channels % offset_groups:
            raise ValueError(
                f"FaPNDecoder: channels={channels} must be divisible by "
                f"offset_groups={offset_groups}"
            )
        super().__init__(in_channels, channels=channels, merge=merge, upsample="bilinear")
        self.align = nn.ModuleList(
            FeatureAlign(channels, offset_groups, kernel_size) for _ in self.in_channels[:-1]
        )

    def _build_lateral(self, in_channels: int, channels: int) -> nn.Module:
        return FeatureSelection(in_channels, channels)

    def top_down_step(self, level: int, lateral: Tensor, top: Tensor) -> Tensor:
        """``T_i = FAM_i(L_i, T_{i+1})``.

        Shape:
            lateral: (B, channels, H_i, W_i); top: (B, channels, H_{i+1}, W_{i+1})
            -> (B, channels, H_i, W_i)
        """
        return self.align[level](lateral, top)
