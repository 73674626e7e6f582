"""Channel-attention fusions (SE, CBAM, MS-CAM/AFF/iAFF, FaPN's FSM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rgbx_fusion.models.fusion.base import FusionBase, check_pair


def reduced_channels(channels: int, reduction: int) -> int:
    """Bottleneck width ``C / r``, but never below ``min(C, 8)``.

    Narrow maps (C = 16, r = 16) would otherwise get a one-unit bottleneck whose
    ReLU can die for a whole batch; timm's SE blocks also never go below 8.
    """
    if reduction <= 0:
        raise ValueError(f"reduction must be positive, got {reduction}")
    return max(channels // reduction, min(channels, 8))


class FeatureSelection(nn.Module):
    """FaPN feature selection module (FSM) on one feature map.

    Equation: ``u = sigmoid(conv1x1(GAP(C)))``, ``out = conv1x1'(C + u * C)``.
    The first 1×1 conv keeps the channel count; the second maps to ``out_channels``.

    Shape:
        x: (B, C_in, H, W) -> (B, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        u = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))
        return self.project(x + x * u)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate of one map: ``s = sigmoid(W2 ReLU(W1 GAP(x) + b1) + b2)``.

    Shape:
        x: (B, C, H, W) -> s: (B, C, 1, 1)
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))


class SEFusion(FusionBase):
    """Squeeze-excite each stream with its own gate, then add.

    Equation: ``Z = s_rgb(X_rgb) · X_rgb + s_aux(X_aux) · X_aux`` where
    ``s(x) = sigmoid(W2 ReLU(W1 GAP(x) + b1) + b2)`` (one gate per stream).

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        reduction: bottleneck ratio ``r`` of the gates (hidden ``max(C/r, min(C, 8))``).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "squeeze-excite each stream separately, then add"

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__(channels)
        self.se_rgb = SqueezeExcite(channels, reduction)
        self.se_aux = SqueezeExcite(channels, reduction)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return self.se_rgb(x_rgb) * x_rgb + self.se_aux(x_aux) * x_aux


class CBAMFusion(FusionBase):
    """CBAM (channel then spatial attention) applied to the sum of the streams.

    The sum, not the concatenation, is attended: it keeps ``C`` channels, so
    no projection is needed and the block reduces to a re-weighted
    :class:`AddFusion`. With ``S = X_rgb + X_aux`` and a shared MLP
    ``MLP(p) = W2 ReLU(W1 p + b1) + b2``::

        M_c = sigmoid(MLP(AvgPool(S)) + MLP(MaxPool(S)))          (B, C, 1, 1)
        S'  = M_c · S
        M_s = sigmoid(BN(conv_k×k([max_c(S'); mean_c(S')])))       (B, 1, H, W)
        Z   = M_s · S'

    The spatial descriptor stacks the channel max before the channel mean and
    its conv has no bias but a BatchNorm, as in the CBAM reference code.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        reduction: MLP bottleneck ratio ``r`` (hidden ``max(C/r, min(C, 8))``).
        kernel_size: size of the spatial-attention conv (odd).

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "CBAM channel-then-spatial attention on the sum of the streams"

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__(channels)
        if kernel_size % 2 == 0:
            raise ValueError(f"CBAMFusion: kernel_size must be odd, got {kernel_size}")
        hidden = reduced_channels(channels, reduction)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(1),
        )

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        s = x_rgb + x_aux
        avg = s.mean(dim=(2, 3), keepdim=True)
        mx = s.amax(dim=(2, 3), keepdim=True)
        s = s * torch.sigmoid(self.channel_mlp(avg) + self.channel_mlp(mx))
        pooled = torch.cat([s.amax(dim=1, keepdim=True), s.mean(dim=1, keepdim=True)], dim=1)
        return s * torch.sigmoid(self.spatial(pooled))


class MSCAM(nn.Module):
    """Multi-scale channel attention (MS-CAM, Dai et al., "Attentional Feature Fusion", 2021).

    Returns the attention weights, not the re-weighted map: AFF and iAFF need
    ``M`` itself to blend two inputs. It takes one input, so it is a building
    block, not a :class:`FusionBase`::

        L(x) = BN(PWConv2(ReLU(BN(PWConv1(x)))))          at full resolution
        G(x) = BN(PWConv2'(ReLU(BN(PWConv1'(GAP(x))))))   on the global average
        M(x) = sigmoid(L(x) + G(x))                       (G broadcast over H, W)

    The global branch normalises a 1×1 map, so in training mode it needs a
    batch of at least two.

    Args:
        channels: channel count ``C``.
        reduction: bottleneck ratio ``r`` of both branches (hidden ``max(C/r, min(C, 8))``).

    Shape:
        x: (B, C, H, W) -> M: (B, C, H, W), values in (0, 1)
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.local_att = self._branch(channels, hidden)
        self.global_att = self._branch(channels, hidden)

    @staticmethod
    def _branch(channels: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.local_att(x) + self.global_att(x.mean(dim=(2, 3), keepdim=True)))


class AFFFusion(FusionBase):
    """Attentional feature fusion (AFF, Dai et al. 2021).

    Equation: ``W = M(X_rgb + X_aux)``, ``Z = W · X_rgb + (1 − W) · X_aux`` with
    ``M`` an :class:`MSCAM`.

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        reduction: bottleneck ratio of the MS-CAM.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "AFF: MS-CAM weights on the sum blend the two streams"

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__(channels)
        self.attention = MSCAM(channels, reduction)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        w = self.attention(x_rgb + x_aux)
        # X_aux + W·(X_rgb − X_aux) is the same blend with one full-size product fewer.
        return x_aux + w * (x_rgb - x_aux)


class iAFFFusion(FusionBase):
    """Iterative attentional feature fusion (iAFF, Dai et al. 2021).

    A first MS-CAM on the sum gives an initial integration, a second MS-CAM on
    that integration gives the final blend::

        W1 = M1(X_rgb + X_aux);  X' = W1 · X_rgb + (1 − W1) · X_aux
        W2 = M2(X');             Z  = W2 · X_rgb + (1 − W2) · X_aux

    Args:
        channels: channel count ``C`` of both inputs and of the output.
        reduction: bottleneck ratio of both MS-CAMs.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "iAFF: AFF whose attention input is itself an AFF integration"

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__(channels)
        self.attention1 = MSCAM(channels, reduction)
        self.attention2 = MSCAM(channels, reduction)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        diff = x_rgb - x_aux
        initial = x_aux + self.attention1(x_rgb + x_aux) * diff
        return x_aux + self.attention2(initial) * diff


class FSMFusion(FusionBase):
    """FaPN's feature selection module on the concatenated streams (2C → C).

    Equation: with ``K = [X_rgb; X_aux]`` (2C channels),
    ``u = sigmoid(W_a · GAP(K))`` and ``Z = W_p · (K + u · K)``, where ``W_a`` is a
    bias-free 1×1 conv 2C → 2C and ``W_p`` a bias-free 1×1 conv 2C → C.

    Args:
        channels: channel count ``C`` of both inputs and of the output.

    Shape:
        x_rgb: (B, C, H, W); x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "FaPN feature selection on the concatenation, projected back to C"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.select = FeatureSelection(2 * channels, channels)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return self.select(torch.cat([x_rgb, x_aux], dim=1))
