"""Non-local (SA-GAN style) self-attention on the joint features of the two streams."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, check_pair
from rgbx_fusion.models.fusion.cross_attention import project_tokens, to_map, to_tokens


class NonLocalFusion(FusionBase):
    """SA-GAN style self-attention over every position of the joint feature map.

    Equation, with ``T(·)`` the (B, N, C) tokens of a map::

        J = X_rgb + X_aux                      (joint="sum")
        J = W_j [X_rgb; X_aux] + b_j           (joint="concat", 1×1 conv 2C -> C)
        P = J, or MaxPool_{p×p}(J) when kv_pool = p > 1 (BigGAN's cheaper keys)
        Q = T(J) W_q + b_q;  K = T(P) W_k + b_k;  V = T(P) W_v + b_v
        Z = J + γ · softmax(Q Kᵀ / √d) V       (d = C / qk_reduction; γ starts at 0)

    With ``γ = 0`` the block starts as the joint feature itself and learns how
    much global context to add. The logits are scaled by ``1/√d`` (SA-GAN
    leaves the scale out); it keeps the softmax from saturating as ``C`` grows.
    Cost is O(N² · C): keep it for coarse maps or set ``kv_pool``.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        joint: how the streams are joined before attention, ``"sum"`` or ``"concat"``.
        qk_reduction: query/key width is ``max(C / qk_reduction, 1)`` (SA-GAN: 8).
        kv_pool: max-pool size for keys/values (1 = none).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "SA-GAN self-attention on the joint map, gamma-gated residual (starts as the sum)"

    def __init__(
        self,
        channels: int,
        joint: Literal["sum", "concat"] = "sum",
        qk_reduction: int = 8,
        kv_pool: int = 1,
    ) -> None:
        super().__init__(channels)
        if joint not in ("sum", "concat"):
            raise ValueError(f"NonLocalFusion: joint must be 'sum' or 'concat', got {joint!r}")
        if qk_reduction < 1 or kv_pool < 1:
            raise ValueError("NonLocalFusion: qk_reduction and kv_pool must be >= 1")
        self.joint = joint
        self.kv_pool = kv_pool
        self.project = nn.Conv2d(2 * channels, channels, 1) if joint == "concat" else None
        qk = max(channels // qk_reduction, 1)
        self.query = nn.Linear(channels, qk)
        self.key = nn.Linear(channels, qk)
        self.value = nn.Linear(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        if self.project is None:
            joint = x_rgb + x_aux
        else:
            joint = self.project(torch.cat([x_rgb, x_aux], dim=1))
        size = (joint.shape[-2], joint.shape[-1])
        tokens = to_tokens(joint)
        kv = tokens
        if self.kv_pool > 1:
            kv = to_tokens(F.max_pool2d(joint, self.kv_pool, ceil_mode=True))
        # One head: (B, N, d) -> (B, 1, N, d) views. Q and K are zero-padded to V's width:
        # Q Kᵀ is unchanged, and with equal widths SDPA takes its fused kernel (memory
        # linear in N) instead of the math fallback that builds the N × N matrix.
        q = project_tokens(self.query, tokens)
        k = project_tokens(self.key, kv)
        v = project_tokens(self.value, kv).unsqueeze(1)
        d, pad = q.shape[-1], v.shape[-1] - q.shape[-1]
        if pad > 0:
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        scale = d**-0.5
        context = F.scaled_dot_product_attention(q[:, None], k[:, None], v, scale=scale)
        context = context.squeeze(1)
        return joint + self.gamma * to_map(context, size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, joint={self.joint!r}, kv_pool={self.kv_pool}"
