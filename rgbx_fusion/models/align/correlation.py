"""Correlation (cost-volume) alignment: per-frame low-DOF warps from matched features.

:class:`CorrelationAlign` looks for aux where the RGB image has the same structure, instead of
asking a network to guess a transform from the concatenated inputs:

1. two small conv encoders (one per modality; each input is first normalised per image and
   channel, so that depth in metres and colour compare) produce feature pyramids at strides
   ``stride · 2**l``;
2. at the coarsest level a local cost volume, the cosine similarity of every RGB cell with the
   aux cells within ``±radius`` cells, gives every cell a match distribution; its soft-argmax
   is the cell's displacement and a small conv net on the costs its weight;
3. a closed-form weighted least-squares fit turns the cells' displacements into one warp of the
   chosen ``model`` (translation, similarity, affine or homography);
4. coarse to fine: the next level correlates again with aux features warped by the current
   estimate and fits a residual;
5. optionally (``residual_flow``) a FlowAlign-style conv net adds a dense residual flow.

Each level's correction is multiplied by a gate that starts at zero, so the aligner is exactly
the identity at initialisation. Trained without labels by
:class:`~rgbx_fusion.tasks.alignment.AlignmentTask` (known random warps); a trained aligner
plugs into any segmenter through ``checkpoint`` (+ ``freeze``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import CheckpointError, ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.align.flow import (
    _flow_net,
    flow_smoothness,
    pixel_grid,
    resize_flow,
    warp_by_displacement,
    warp_by_flow,
)
from rgbx_fusion.models.state_dict import best_checkpoint, check_keys, read_state_dict

MotionModel = Literal["translation", "similarity", "affine", "homography"]
MODELS: tuple[str, ...] = ("translation", "similarity", "affine", "homography")

#: Prefix of the aligner's weights in an ``AlignmentTask`` checkpoint.
CHECKPOINT_PREFIX = "aligner."


def normalise_per_image(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit variance per image and channel (instance normalisation, no affine).

    Written out rather than ``F.instance_norm``, which refuses maps of one pixel in training.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W)
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _gaussian_blur(x: Tensor, sigma: float = 2.0) -> Tensor:
    """Separable Gaussian blur (radius 2σ), zero outside the image; per channel."""
    radius = max(1, round(2 * sigma))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def structure_descriptor(x: Tensor, eps_fraction: float = 0.5) -> Tensor:
    """Modality-independent edge descriptor: the normalised structure tensor of ``x``.

    Per pixel, with Sobel gradients summed over channels into ``J = Σ_c ∇x_c ∇x_cᵀ`` (3×3
    box-smoothed) and ``ε² = eps_fraction × the image's mean tr J``::

        ((Jxx - Jyy) / (tr J + ε²),  2 Jxy / (tr J + ε²),  tr J / (tr J + ε²))

    the edge orientation (doubled angle, so the sign of the contrast does not matter) and
    strength, in ``[-1, 1]`` whatever the modality's units: a depth step and the colour edge
    of the same boundary look alike. Missing pixels (all channels 0: depth holes, often right
    on depth edges, or the outside of a warped frame) are filled from valid neighbours
    (normalised Gaussian convolution) so that edges stay in place; where too few
    measurements are near, the descriptor is 0.

    Shape:
        x: (B, C, H, W) -> (B, 3, H, W)
    """
    c = x.shape[1]
    valid = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
    spread = _gaussian_blur(valid)
    filled = torch.where(valid > 0, x, _gaussian_blur(x * valid) / spread.clamp_min(1e-6))
    defined = (spread > 0.3).to(x.dtype)
    defined = -F.max_pool2d(-defined, 3, stride=1, padding=1)  # Sobel reads 3×3 neighbours
    sobel = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    kernels = torch.stack((sobel, sobel.T))[:, None].repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    grad = F.conv2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), kernels, groups=c)
    gx, gy = grad[:, 0::2] * defined, grad[:, 1::2] * defined
    j = torch.stack(((gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1)), dim=1)
    j = F.avg_pool2d(F.pad(j, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    trace = j[:, 0:1] + j[:, 2:3]
    eps = eps_fraction * trace.mean(dim=(2, 3), keepdim=True) + 1e-12
    denom = trace + eps
    return torch.cat(((j[:, 0:1] - j[:, 2:3]) / denom, 2 * j[:, 1:2] / denom, trace / denom), 1)


def local_correlation(f_rgb: Tensor, f_aux: Tensor, radius: int) -> Tensor:
    """Cost volume of every rgb cell against the aux cells within ``±radius`` cells.

    ``cost[b, k, y, x] = <f_rgb[b, :, y, x], f_aux[b, :, y + dy, x + dx]> / C`` with
    ``k = (dy + radius) * (2 radius + 1) + (dx + radius)``; aux outside the map is 0. Written
    as shifted products (slicing, multiply, sum), which every exporter supports.

    Shape:
        f_rgb, f_aux: (B, C, h, w) -> (B, (2 radius + 1)², h, w)
    """
    _, c, h, w = f_rgb.shape
    padded = F.pad(f_aux, (radius, radius, radius, radius))
    costs = [
        (f_rgb * padded[:, :, dy : dy + h, dx : dx + w]).sum(1)
        for dy in range(2 * radius + 1)
        for dx in range(2 * radius + 1)
    ]
    return torch.stack(costs, dim=1) / c


def soft_argmax(probs: Tensor, radius: int) -> Tensor:
    """Expected ``(dx, dy)`` of a match distribution over the :func:`local_correlation` window.

    Summed over opposite offsets, ``Σ_k (p_k - p_{-k}) d_k``, so a symmetric distribution
    (uniform, say) gives exactly zero.

    Shape:
        probs: (B, (2 radius + 1)², h, w) -> (B, 2, h, w) in cells
    """
    k = 2 * radius + 1
    grid = probs.unflatten(1, (k, k))  # (B, dy, dx, h, w)
    flipped = grid.flip(1).flip(2)  # p at (-dy, -dx)
    diff = (grid - flipped)[:, radius:]  # dy ≥ 0 half, counting dy = 0 twice over dx
    r = torch.arange(-radius, radius + 1, device=probs.device, dtype=probs.dtype)
    dy = (diff * r[radius:].view(1, -1, 1, 1, 1)).sum((1, 2))
    dx_rows = (diff * r.view(1, 1, -1, 1, 1)).sum(2)  # (B, dy ≥ 0, h, w)
    dx = dx_rows[:, 1:].sum(1) + dx_rows[:, 0] / 2  # the dy = 0 row holds ± pairs twice
    return torch.stack((dx, dy), dim=1)


def _conv_norm_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(math.gcd(4, cout), cout),
        nn.ReLU(inplace=True),
    ]


class FeaturePyramid(nn.Module):
    """Stride-2 conv blocks; returns the maps at strides ``2**first_level`` … (finest first).

    Every block is one stride-2 3×3 conv; the blocks whose maps are returned add a second
    3×3 conv and end with a linear 1×1 projection (the features that are correlated).

    Shape:
        x: (B, C, H, W) -> [(B, features, ⌈H / s⌉, ⌈W / s⌉) for each returned stride s]
    """

    def __init__(self, in_channels: int, features: int, first_level: int, levels: int) -> None:
        super().__init__()
        widths = [max(8, features // 2 ** max(0, first_level - 1 - i)) for i in range(first_level)]
        widths += [features] * (levels - 1)
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        cin = in_channels
        for i, width in enumerate(widths):
            layers = _conv_norm_relu(cin, width, 2)
            if i + 1 >= first_level:
                layers += _conv_norm_relu(width, width)
                self.heads.append(nn.Conv2d(width, features, 1))
            self.blocks.append(nn.Sequential(*layers))
            cin = width
        self.first_level = first_level

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 >= self.first_level:
                out.append(self.heads[i + 1 - self.first_level](x))
        return out


def _conv_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    )


def _fit_linear(
    points: Tensor, targets: Tensor, weights: Tensor, model: str, ridge: float
) -> Tensor:
    """The ``[A | t]`` (B, 2, 3) of ``targets ≈ A p + t`` for a non-projective ``model``."""
    b = points.shape[0]
    w = weights[..., None]
    disp = targets - points
    p_mean = (w * points).sum(1, keepdim=True)
    d_mean = (w * disp).sum(1, keepdim=True)
    pc, dc = points - p_mean, disp - d_mean
    zero = points.new_zeros(b)
    if model == "translation":
        b00 = b01 = b10 = b11 = zero
    elif model == "similarity":
        spread = (w[..., 0] * pc.pow(2).sum(-1)).sum(1) + ridge
        a = (w[..., 0] * (pc * dc).sum(-1)).sum(1) / spread
        s = (w[..., 0] * (pc[..., 0] * dc[..., 1] - pc[..., 1] * dc[..., 0])).sum(1) / spread
        b00, b01, b10, b11 = a, -s, s, a
    else:
        wx, wy = w[..., 0] * pc[..., 0], w[..., 0] * pc[..., 1]
        sxx = (wx * pc[..., 0]).sum(1) + ridge
        sxy = (wx * pc[..., 1]).sum(1)
        syy = (wy * pc[..., 1]).sum(1) + ridge
        cxx, cxy = (wx * dc[..., 0]).sum(1), (wy * dc[..., 0]).sum(1)
        cyx, cyy = (wx * dc[..., 1]).sum(1), (wy * dc[..., 1]).sum(1)
        det = sxx * syy - sxy * sxy
        # B = C S⁻¹ with S⁻¹ = [[syy, -sxy], [-sxy, sxx]] / det
        b00 = (cxx * syy - cxy * sxy) / det
        b01 = (cxy * sxx - cxx * sxy) / det
        b10 = (cyx * syy - cyy * sxy) / det
        b11 = (cyy * sxx - cyx * sxy) / det
    lin = torch.stack((b00, b01, b10, b11), dim=1).view(b, 2, 2)
    t = d_mean[:, 0] - (lin @ p_mean[:, 0, :, None])[..., 0]
    eye = torch.eye(2, device=points.device, dtype=points.dtype).expand(b, 2, 2)
    return torch.cat((eye + lin, t[..., None]), dim=2)


def _fit_perspective(
    points: Tensor, targets: Tensor, weights: Tensor, top: Tensor, ridge: float
) -> Tensor:
    """The ``v`` (B, 1, 2) of ``targets (1 + vᵀp) ≈ A p + t`` for a fixed ``[A | t]``."""
    resid = (points @ top[:, :, :2].transpose(1, 2)) + top[:, None, :, 2] - targets
    qq = targets.pow(2).sum(-1) * weights  # (B, N)
    rhs = (targets * resid).sum(-1) * weights
    gxx = (qq * points[..., 0] ** 2).sum(1) + ridge
    gxy = (qq * points[..., 0] * points[..., 1]).sum(1)
    gyy = (qq * points[..., 1] ** 2).sum(1) + ridge
    rx, ry = (rhs * points[..., 0]).sum(1), (rhs * points[..., 1]).sum(1)
    det = gxx * gyy - gxy * gxy
    return torch.stack(((gyy * rx - gxy * ry) / det, (gxx * ry - gxy * rx) / det), dim=1)[:, None]


def fit_motion(
    points: Tensor,
    targets: Tensor,
    weights: Tensor,
    model: str,
    ridge: float = 1e-3,
    iterations: int = 8,
) -> Tensor:
    """Weighted least-squares ``M`` with ``targets ≈ dehom(M [points; 1])``, in closed form.

    The linear part is fitted on the displacements ``targets - points`` with a ridge towards
    zero motion, so cells that say nothing (no spread, no weight) leave the identity.
    ``homography`` alternates, ``iterations`` times, between the affine part for fixed
    perspective terms and the perspective terms for a fixed affine part (each the exact
    solution of the linearised ``targets (1 + vᵀp) = A p + t``). Written without ``linalg``
    so that it exports.

    Args:
        points, targets: cell positions and where they should sample aux, in normalised units
            (centred, about ±1 over the image).
        weights: non-negative, summing to 1 per image.
        model: ``translation`` | ``similarity`` | ``affine`` | ``homography``.
        ridge: weight of the pull towards zero motion of the linear part.
        iterations: alternations of the homography fit.

    Shape:
        points, targets: (B, N, 2); weights: (B, N) -> (B, 3, 3)
    """
    b = points.shape[0]
    persp = points.new_zeros(b, 1, 2)
    linear_model = "affine" if model == "homography" else model
    top = _fit_linear(points, targets, weights, linear_model, ridge)
    if model == "homography":
        for _ in range(iterations):
            persp = _fit_perspective(points, targets, weights, top, ridge)
            scaled = targets * (1 + points @ persp.transpose(1, 2))
            top = _fit_linear(points, scaled, weights, "affine", ridge)
    bottom = torch.cat((persp, points.new_ones(b, 1, 1)), dim=2)
    return torch.cat((top, bottom), dim=1)


def apply_matrix(matrix: Tensor, points: Tensor) -> Tensor:
    """``dehom(M [p; 1])`` for points ``(B, N, 2)`` and matrices ``(B, 3, 3)``."""
    moved = points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]
    denom = (points @ matrix[:, 2:, :2].transpose(1, 2)) + matrix[:, None, 2:, 2]
    return moved / denom


def matrix_flow(matrix: Tensor, height: int, width: int, stride: float = 1.0) -> Tensor:
    """The displacement ``M p - p`` (in input pixels) at cell centres ``p = stride · (j, i)``.

    ``matrix`` maps input pixel coordinates (pixel centres at integers) to aux pixel
    coordinates, like a dataset's ``aux_from_rgb``. Exactly zero for ``M = I``.

    Shape:
        matrix: (B, 3, 3) -> (B, 2, height, width)
    """
    grid = pixel_grid(height, width, device=matrix.device, dtype=matrix.dtype) * stride
    points = grid.flatten(2).transpose(1, 2).expand(matrix.shape[0], -1, -1)
    flow = apply_matrix(matrix, points) - points
    return flow.transpose(1, 2).reshape(matrix.shape[0], 2, height, width)


class CorrelationAlign(AlignBase):
    """Per-frame warp from a local correlation cost volume, coarse to fine, self-supervisable.

    ``aux_aligned(p) = aux(dehom(M [p; 1]) + r(p))`` with ``M`` a warp of ``model``'s kind fitted
    to the cells' matches, and ``r`` an optional dense residual flow. See the module docstring
    for the pipeline.

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux``.
        model: ``translation`` (2 DOF), ``similarity`` (4), ``affine`` (6) or ``homography`` (8).
        stride: stride of the finest correlation level (a power of two ≥ 2).
        levels: correlation levels, coarse to fine (the coarsest has stride
            ``stride · 2**(levels - 1)``).
        radius: search radius of the coarsest cost volume in cells (``±radius · stride ·
            2**(levels - 1)`` pixels).
        refine_radius: search radius of the finer levels' cost volumes, in cells.
        features: channels of the feature maps that are correlated.
        hidden: width of the confidence head.
        descriptor: what the encoders see: ``structure`` (:func:`structure_descriptor`, the same
            three edge channels for any modality, so matching features exist from the first
            step) or ``raw`` (each input normalised per image and channel).
        shared: one encoder for both modalities (needs the same input channels: always true
            for ``structure``); separate encoders can learn modality-specific features.
        temperature: initial inverse temperature of the soft-argmax over cosine costs
            (learned).
        gate_scale: each level's gate is ``gate_scale × a parameter that starts at 0``; larger
            values let the gates open in fewer optimiser steps.
        residual_flow: add a dense residual flow (FlowAlign-style conv net on rgb and the
            globally warped aux, zero-initialised last layer) on top of the global warp.
        flow_hidden, flow_stride: width and stride of that residual flow net.
        smoothness_weight: total-variation weight on the residual flow (:meth:`regularization`).
        checkpoint: an ``AlignmentTask`` checkpoint (``.ckpt``), a plain state dict, or the
            alignment run's folder (its newest ``best-*.ckpt`` is used), whose ``aligner.*``
            weights are loaded after building (the settings above must match the run that
            wrote it).
        freeze: with ``checkpoint``, keep the loaded weights fixed (no gradients, so no
            optimiser updates).

    Convention:
        Pixel coordinates of the map the aligner runs on (centres at integers); the aligned aux
        at ``p`` is aux sampled at ``p + flow(p)`` (:func:`~.flow.warp_by_flow`). ``M`` is an
        ``aux_from_rgb`` matrix in those pixels.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, (B, C2, H, W));
        last_transform(): (B, 3, 3) ``M`` in input pixels.
    """

    summary = "per-frame warp (translation…homography) fitted to a local correlation cost volume"

    def __init__(
        self,
        rgb_channels: int = 3,
        aux_channels: int = 1,
        model: MotionModel = "similarity",
        stride: int = 4,
        levels: int = 3,
        radius: int = 4,
        refine_radius: int = 3,
        features: int = 32,
        hidden: int = 16,
        descriptor: Literal["structure", "raw"] = "structure",
        shared: bool = True,
        temperature: float = 10.0,
        gate_scale: float = 10.0,
        residual_flow: bool = False,
        flow_hidden: int = 32,
        flow_stride: int = 2,
        smoothness_weight: float = 0.1,
        checkpoint: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ConfigError(f"CorrelationAlign: model must be one of {MODELS}, got {model!r}")
        for name, value in (("stride", stride), ("flow_stride", flow_stride)):
            if value < 1 or value & (value - 1):
                raise ConfigError(f"CorrelationAlign: {name} must be a power of two, got {value}")
        if stride < 2:
            raise ConfigError(f"CorrelationAlign: stride must be ≥ 2, got {stride}")
        if levels < 1 or min(radius, refine_radius) < 1:
            raise ConfigError(
                "CorrelationAlign: levels, radius and refine_radius must be ≥ 1, got "
                f"{levels}, {radius} and {refine_radius}"
            )
        radii = [radius] + [refine_radius] * (levels - 1)
        if descriptor not in ("structure", "raw"):
            raise ConfigError(
                f"CorrelationAlign: descriptor must be 'structure' or 'raw', got {descriptor!r}"
            )
        enc_rgb, enc_aux = (3, 3) if descriptor == "structure" else (rgb_channels, aux_channels)
        if shared and enc_rgb != enc_aux:
            raise ConfigError(
                "CorrelationAlign: shared encoders need rgb and aux with the same channels, got "
                f"{rgb_channels} and {aux_channels}"
            )
        if freeze and checkpoint is None:
            raise ConfigError("CorrelationAlign: freeze needs a checkpoint to load")
        self.model = model
        self.stride = stride
        self.levels = levels
        self.radius = radius
        self.refine_radius = refine_radius
        self.radii = radii  # coarse to fine
        self.gate_scale = gate_scale
        self.smoothness_weight = smoothness_weight
        self.flow_stride = flow_stride
        first = int(math.log2(stride))
        self.descriptor = descriptor
        self.rgb_encoder = FeaturePyramid(enc_rgb, features, first, levels)
        self.aux_encoder: FeaturePyramid | None = (
            None if shared else FeaturePyramid(enc_aux, features, first, levels)
        )
        # one confidence head per level; input: costs + the cell's valid-aux fraction
        self.confidence = nn.ModuleList(
            [_conv_head((2 * r + 1) ** 2 + 1, hidden, 1) for r in radii]
        )
        self.log_temperature = nn.Parameter(torch.full((levels,), math.log(temperature)))
        self.gates = nn.Parameter(torch.zeros(levels))  # 0: the identity at initialisation
        self.flow_net: nn.Module | None = None
        if residual_flow:
            self.flow_net = _flow_net(rgb_channels + aux_channels, flow_hidden)
        self._last_matrix: Tensor | None = None
        self._last_reg: Tensor | None = None
        if checkpoint is not None:
            load_aligner_checkpoint(self, checkpoint)
        if freeze:
            self.requires_grad_(False)

    # ---- the pieces -----------------------------------------------------------------------
    @staticmethod
    def _valid_fractions(x_aux: Tensor, strides: int) -> list[Tensor]:
        """Share of valid (non-zero) aux pixels per cell, on the encoders' grids (finest at
        stride 2), by the same 3×3 / stride-2 windows as their convolutions."""
        valid = (x_aux != 0).any(dim=1, keepdim=True).to(x_aux.dtype)
        out = []
        for _ in range(strides):
            valid = F.avg_pool2d(valid, 3, stride=2, padding=1, count_include_pad=False)
            out.append(valid)
        return out

    def _level_matrix(
        self,
        level: int,
        index: int,
        f_rgb: Tensor,
        f_aux: Tensor,
        valid: Tensor,
        matrix: Tensor,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """One coarse-to-fine step: correlate and fit; the level's own fit and ``matrix``
        moved towards it by the level's gate."""
        b, _, h, w = f_rgb.shape
        cell = self.stride * 2**level  # input pixels per cell
        prior = matrix_flow(matrix, h, w, cell) / cell  # in cells
        if index > 0:
            f_aux = warp_by_flow(f_aux, prior)
            valid = warp_by_flow(valid, prior)
        cost = f_rgb.shape[1] * local_correlation(  # cosine similarities, in [-1, 1]
            F.normalize(f_rgb, dim=1, eps=1e-6),
            F.normalize(f_aux, dim=1, eps=1e-6),
            self.radii[index],
        )
        # aux cells outside the map or without valid aux take no part in the match: zero
        # costs there would pull every border cell's soft-argmax inwards (a fake zoom)
        r = self.radii[index]
        window = F.unfold(valid, 2 * r + 1, padding=r).view(b, (2 * r + 1) ** 2, h, w)
        beta = self.log_temperature[index].exp()
        probs = torch.softmax(cost * beta + torch.log(window.clamp_min(1e-6)), dim=1)
        match = soft_argmax(probs, self.radii[index]).flatten(2).transpose(1, 2)  # cells
        logits = self.confidence[index](torch.cat((cost, valid), dim=1)).reshape(b, h * w)
        weights = torch.softmax(logits, dim=1) * valid.reshape(b, h * w)
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        # cells at input pixels p = cell · (j, i); they should sample aux at M(p + cell·match)
        grid = pixel_grid(h, w, device=f_rgb.device, dtype=f_rgb.dtype) * cell
        points = grid.flatten(2).transpose(1, 2).expand(b, -1, -1)
        targets = apply_matrix(matrix, points + cell * match)
        centre, scale = _normaliser(image_size, f_rgb)
        fitted = fit_motion(
            (points - centre) / scale, (targets - centre) / scale, weights, self.model
        )
        fitted = _denormalise(fitted, centre, scale)
        gate = self.gates[index] * self.gate_scale
        return fitted, matrix + gate * (fitted - matrix)

    def matrices(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[list[Tensor], Tensor]:
        """Each level's own fit (before its gate), coarse to fine, and the warp applied,
        ``([(B, 3, 3)] × levels, (B, 3, 3))`` in input pixels."""
        b = x_rgb.shape[0]
        image_size = (x_rgb.shape[-2], x_rgb.shape[-1])
        describe = structure_descriptor if self.descriptor == "structure" else normalise_per_image
        rgb_maps = self.rgb_encoder(describe(x_rgb))
        aux_maps = (self.aux_encoder or self.rgb_encoder)(describe(x_aux))
        valid = self._valid_fractions(x_aux, int(math.log2(self.stride)) + self.levels - 1)
        first = int(math.log2(self.stride)) - 1
        matrix = torch.eye(3, device=x_rgb.device, dtype=x_rgb.dtype).expand(b, 3, 3)
        fits = []
        for index, level in enumerate(reversed(range(self.levels))):
            f_rgb, f_aux = rgb_maps[level], aux_maps[level]
            fitted, matrix = self._level_matrix(
                level, index, f_rgb, f_aux, valid[first + level], matrix, image_size
            )
            fits.append(fitted)
        return fits, matrix

    def displacements(self, x_rgb: Tensor, x_aux: Tensor) -> list[Tensor]:
        """Flows (input pixels) to supervise: each level's own fit, coarse to fine, then the
        flow that :meth:`forward` applies (gated, plus the residual flow if any).

        The fits before the gates give the features a training signal of the right sign from
        the first step, while the gates are still closed (the identity at initialisation).

        Shape:
            -> [(B, 2, H, W)] × (levels + 1)
        """
        h, w = x_aux.shape[-2:]
        fits, matrix = self.matrices(x_rgb, x_aux)
        self._last_matrix = matrix.detach()
        flow = matrix_flow(matrix, h, w)
        self._last_reg = None
        if self.flow_net is not None:
            flow = self._with_residual(x_rgb, x_aux, matrix, flow)
        return [*(matrix_flow(m, h, w) for m in fits), flow]

    def _with_residual(self, x_rgb: Tensor, x_aux: Tensor, matrix: Tensor, flow: Tensor) -> Tensor:
        assert self.flow_net is not None
        h, w = x_aux.shape[-2:]
        s = self.flow_stride
        size = (max(1, math.ceil(h / s)), max(1, math.ceil(w / s)))
        warped = warp_by_flow(x_aux, flow)
        rgb_l, aux_l = x_rgb, warped
        if s > 1:
            rgb_l = F.interpolate(x_rgb, size=size, mode="area")
            aux_l = F.interpolate(warped, size=size, mode="area")
        residual = self.flow_net(torch.cat((rgb_l, aux_l), dim=1))
        if residual.shape[-2:] != (h, w):
            residual = resize_flow(residual, (h, w))
        if self.smoothness_weight > 0:
            self._last_reg = self.smoothness_weight * flow_smoothness(residual)
        # aligned(p) = warped(p + r(p)) = aux(M (p + r(p))): compose exactly with M
        grid = pixel_grid(h, w, device=flow.device, dtype=flow.dtype)
        points = (grid + residual).flatten(2).transpose(1, 2)
        moved = apply_matrix(matrix, points).transpose(1, 2).reshape(-1, 2, h, w)
        return moved - grid

    def displacement(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """The flow (pixels) that :meth:`forward` applies; ``(B, 2, H, W)``."""
        return self.displacements(x_rgb, x_aux)[-1]

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        return warp_by_displacement(self, x_rgb, x_aux)

    def regularization(self) -> Tensor | None:
        """``smoothness_weight × TV`` of the last residual flow (``None`` without one)."""
        return self._last_reg

    def last_transform(self) -> Tensor | None:
        """The last fitted ``aux_from_rgb`` matrix in input pixels, ``(B, 3, 3)``."""
        return self._last_matrix


def _normaliser(size: tuple[int, int], like: Tensor) -> tuple[Tensor, float]:
    """Centre (pixels) and scale that bring coordinates to about ±1, isotropically."""
    h, w = size
    centre = like.new_tensor([(w - 1) / 2, (h - 1) / 2])
    return centre, max(h, w) / 2


def _denormalise(matrix: Tensor, centre: Tensor, scale: float) -> Tensor:
    """A matrix on normalised coordinates ``u = (p - c) / s`` → the same map on pixels."""
    n = torch.zeros(3, 3, device=matrix.device, dtype=matrix.dtype)
    n[0, 0] = n[1, 1] = 1 / scale
    n[:2, 2] = -centre / scale
    n[2, 2] = 1
    n_inv = torch.zeros_like(n)
    n_inv[0, 0] = n_inv[1, 1] = scale
    n_inv[:2, 2] = centre
    n_inv[2, 2] = 1
    return n_inv @ matrix @ n


def aligner_state_dict(path: str | Path, prefix: str = CHECKPOINT_PREFIX) -> dict[str, Tensor]:
    """The aligner's weights in a checkpoint: the ``prefix`` entries of an ``AlignmentTask``
    checkpoint (prefix removed), or the whole state dict of a file without them."""
    state = read_state_dict(path)
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return inner or state


def load_aligner_checkpoint(module: nn.Module, path: str | Path) -> None:
    """Load an ``AlignmentTask`` checkpoint's aligner weights into ``module`` (strict).

    Raises:
        CheckpointError: the file is missing or not a weights file.
        WeightsMismatchError: the keys or shapes differ (the aligner's settings differ from
            the run that trained it).
    """
    path = best_checkpoint(path)
    state = aligner_state_dict(path)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_keys(expected, state, f"the aligner weights in {path}")
    _check_settings(module, path)
    module.load_state_dict(state)


def _check_settings(module: nn.Module, path: str | Path) -> None:
    """Settings that do not change any weight's shape but must match (e.g. ``model``)."""
    try:
        hp: Any = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters")
    except Exception:  # a plain state dict: nothing recorded
        return
    trained = ((hp or {}).get("aligner") or {}) if isinstance(hp, dict) else {}
    init = trained.get("init_args") if isinstance(trained, dict) else None
    if not isinstance(init, dict):
        return
    keys = ("model", "stride", "levels", "radius", "refine_radius", "descriptor", "gate_scale")
    for key in (*keys, "flow_stride"):
        mine = getattr(module, key, None)
        if key in init and mine is not None and init[key] != mine:
            raise CheckpointError(
                f"{path}: its aligner was trained with {key}={init[key]!r}, this one has "
                f"{key}={mine!r}; use the settings of the alignment run"
            )
