"""Known random warps for training aligners without labels, and the end-point error.

The warps act on ``aux_from_rgb`` pixel coordinates (centres at integers): a drawn matrix
``M`` warps aux into ``aux_w(q) = aux(M⁻¹ q)``, and the displacement that undoes it is
``M p - p`` (:func:`inverse_target`). Missing aux (0) stays missing under both resamplers;
:func:`reflect_inside` mirrors positions outside the frame back in, and
:func:`random_margins` draws missing bands along the edges that do not depend on the warp.
:class:`~rgbx_fusion.tasks.alignment.AlignmentTask` trains on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgbx_fusion.models.align.correlation import apply_matrix, matrix_flow
from rgbx_fusion.models.align.flow import pixel_grid, warp_by_flow


def random_matrices(
    batch: int,
    size: tuple[int, int],
    max_shift: float,
    max_rotation: float,
    max_scale: float,
    max_perspective: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random ``aux_from_rgb`` matrices: uniform shift, rotation and scale about the centre.

    Args:
        size: ``(H, W)`` of the images, in whose pixels the matrices act.
        max_shift: largest shift per axis, pixels.
        max_rotation: largest rotation, degrees.
        max_scale: largest relative scale change (0.1 = ±10 %).
        max_perspective: largest perspective term, in units of ``1 / max(H, W)`` (0: none).

    Shape:
        -> (batch, 3, 3), float64, on the CPU
    """
    h, w = size
    u = torch.rand(batch, 6, generator=generator, dtype=torch.float64) * 2 - 1
    angle = torch.deg2rad(u[:, 0] * max_rotation)
    scale = 1 + u[:, 1] * max_scale
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    lin = torch.stack((cos, -sin, sin, cos), dim=1).view(batch, 2, 2)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    shift = u[:, 2:4] * max_shift
    m = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
    m[:, :2, :2] = lin
    m[:, :2, 2] = centre - (lin @ centre) + shift
    if max_perspective > 0:
        # about the centre: p' = p - c; bottom row v·p' + 1
        v = u[:, 4:6] * max_perspective / max(h, w)
        to_centre = torch.eye(3, dtype=torch.float64)
        to_centre[:2, 2] = -centre
        persp = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        persp[:, 2, :2] = v
        m = torch.linalg.inv(to_centre) @ persp @ to_centre @ m
    return m


def random_smooth_flow(
    batch: int,
    size: tuple[int, int],
    magnitude: float,
    grid: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A smooth random displacement: uniform ``±magnitude`` px on a ``grid × grid`` lattice,
    upsampled bicubically.

    Shape:
        -> (batch, 2, H, W), float32, on the CPU
    """
    coarse = (torch.rand(batch, 2, grid, grid, generator=generator) * 2 - 1) * magnitude
    return torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=True)


def inverse_target(matrix: Tensor, extra: Tensor | None, size: tuple[int, int]) -> Tensor:
    """The displacement that undoes the warp ``aux_w(q) = aux(M⁻¹ q + g(q))``.

    Solves ``p + f(p) = M (p - g(p + f(p)))`` by fixed-point iteration (exact in one step
    without ``g``: then ``f(p) = M p - p``, :func:`matrix_flow`).

    Shape:
        matrix: (B, 3, 3); extra g: (B, 2, H, W) or None -> (B, 2, H, W)
    """
    h, w = size
    base = matrix_flow(matrix, h, w)
    if extra is None:
        return base
    grid = pixel_grid(h, w, device=matrix.device, dtype=matrix.dtype)
    flow = base
    for _ in range(8):
        g_at = warp_by_flow(extra, flow)  # g(p + f(p)), bilinear
        points = (grid - g_at).flatten(2).transpose(1, 2)
        moved = apply_matrix(matrix, points).transpose(1, 2).reshape(-1, 2, h, w)
        flow = moved - grid
    return flow


def warp_nearest(image: Tensor, flow: Tensor) -> Tensor:
    """``out(p) = image(round(p + flow(p)))``, 0 outside the image.

    Shape:
        image: (B, C, H, W); flow: (B, 2, H, W) -> (B, C, H, W)
    """
    b, c, h, w = image.shape
    pos = pixel_grid(h, w, device=flow.device, dtype=flow.dtype) + flow
    x, y = torch.round(pos[:, 0]).long(), torch.round(pos[:, 1]).long()
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).reshape(b, 1, h * w)
    out = image.reshape(b, c, h * w).gather(2, index.expand(b, c, h * w)).reshape(b, c, h, w)
    return out * inside[:, None].to(image.dtype)


def warp_valid_bilinear(image: Tensor, flow: Tensor) -> Tensor:
    """Bilinear warp that is 0 wherever a missing (all-zero) pixel takes part, or outside."""
    valid = (image != 0).any(dim=1, keepdim=True).to(image.dtype)
    out = warp_by_flow(image, flow)
    cover = warp_by_flow(valid, flow)
    return torch.where(cover > 1 - 1e-4, out, torch.zeros_like(out))


def reflect_inside(flow: Tensor) -> Tensor:
    """``flow`` changed so that every sampled position ``p + flow(p)`` outside the image is
    mirrored back in (about the first and last pixel centres); positions inside are kept.

    Shape:
        flow: (B, 2, H, W) -> (B, 2, H, W)
    """
    h, w = flow.shape[-2:]
    grid = pixel_grid(h, w, device=flow.device, dtype=flow.dtype)
    pos = grid + flow
    folded = []
    for axis, n in ((0, w), (1, h)):
        period = 2 * max(n - 1, 1)
        t = torch.remainder(pos[:, axis], period)
        folded.append(torch.where(t > n - 1, period - t, t))
    return torch.stack(folded, dim=1) - grid


def random_margins(
    batch: int, size: tuple[int, int], largest: float, generator: torch.Generator | None = None
) -> Tensor:
    """A mask that is 0 on a band of random width (uniform in ``[0, largest]`` pixels) along
    each side of each image and 1 elsewhere.

    Shape:
        -> (batch, 1, H, W), float32, on the CPU
    """
    h, w = size
    widths = (torch.rand(batch, 4, generator=generator) * (largest + 1)).floor()
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    left, right, top, bottom = (widths[:, i].view(batch, 1, 1) for i in range(4))
    keep = (xs >= left) & (xs < w - right) & (ys >= top) & (ys < h - bottom)
    return keep[:, None].float()


def endpoint_errors(flow: Tensor, target: Tensor) -> Tensor:
    """Mean Euclidean distance per image, ``(B,)``."""
    return (flow - target).pow(2).sum(1).add(1e-12).sqrt().flatten(1).mean(1)
