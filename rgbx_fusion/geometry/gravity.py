"""Gravity direction from a normal field (``getYDir.m``, ``getRMatrix.m``).

Hard floor/wall assignments of the normals against the current estimate, iterated; used by
:mod:`rgbx_fusion.geometry.hha`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GRAVITY_ANGLES_DEG = (45.0, 15.0)
GRAVITY_ITERATIONS = (5, 5)
GRAVITY_BANDS = (0.06, 0.03)
"""Per gravity round, ``|n·y|`` within this of a threshold is re-classified at every iteration
(speed only: wide enough that a typical estimate stays within it for the whole round, narrow
enough to leave few candidates; the result is exact for any band)."""


def estimate_gravity(
    normals: Tensor,
    angles_deg: tuple[float, ...] = GRAVITY_ANGLES_DEG,
    iterations: tuple[int, ...] = GRAVITY_ITERATIONS,
    reach: float | None = None,
) -> Tensor:
    """Gravity direction from a normal field by hard floor/wall assignments (``getYDir``).

    Starting from image-down ``(0, 1, 0)``, for each threshold ``t`` and its iteration count:
    floor normals ``|n·y| > cos t``, wall normals ``|n·y| < sin t``; the new ``y`` is the
    eigenvector of the smallest eigenvalue of ``Σ_wall n nᵀ − Σ_floor n nᵀ``, signed to agree
    with the previous ``y``. ``|n·y|`` is taken in the normals' dtype; the sum over all pixels
    is one matrix product in that dtype (relative error about 1e-6 in float32, which moves
    the estimate by about 1e-8 rad), the eigen-problem is solved in float64. A normal's sign
    does not matter.

    The assignments are exact but not recomputed for every pixel at every iteration: a pass
    over all pixels at ``y_ref`` fixes every normal whose ``|n·y_ref|`` lies farther than the
    round's band (:data:`GRAVITY_BANDS`) from both thresholds, and only the others are
    re-classified while ``|n| · |y − y_ref|`` (the most ``|n·y|`` can have moved) stays
    inside the band.

    Args:
        normals: normals (unit ones for the reference's thresholds to mean angles); zero
            vectors (no normal) are ignored.
        angles_deg: thresholds, one per round.
        iterations: iterations per round.
        reach: an upper bound of every ``|n|`` (default: measured; unit normals may pass
            ``1 + 1e-5`` and save that pass).

    Returns:
        Unit gravity direction in the camera frame (pointing down, like ``y0``).

    Shape:
        normals: (B, 3, H, W) -> (B, 3)
    """
    flat = normals.flatten(2)  # (B, 3, HW)
    found = [
        _gravity(
            n,
            float((n * n).sum(0).amax().sqrt()) if reach is None else reach,
            angles_deg,
            iterations,
        )
        for n in flat
    ]
    return torch.stack(found).to(normals.dtype)


def _gravity(
    n: Tensor, reach: float, angles_deg: tuple[float, ...], iterations: tuple[int, ...]
) -> Tensor:
    """:func:`estimate_gravity` of one image, ``reach`` ≥ the largest ``|n|``.

    Shape:
        n: (3, N) -> (3,) float64

    A pass over all pixels at ``y_ref`` sums ``w n nᵀ`` with a weight that is exact for every
    normal farther than the band from both thresholds (a clamped ramp, so no per-pixel
    branch), and keeps the normals inside the band as candidates. Each iteration then
    replaces the candidates' ramp weights by their exact floor/wall weights at the current
    ``y``.
    """
    slack = 1e-5  # float rounding of |n·y|
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64, device=n.device)
    bands = GRAVITY_BANDS + GRAVITY_BANDS[-1:] * len(angles_deg)
    for angle, count, band in zip(angles_deg, iterations, bands[: len(angles_deg)], strict=True):
        cos_t, sin_t = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        ref: Tensor | None = None
        for _ in range(count):
            if ref is None or reach * float((y - ref).norm()) + slack > band:
                ref = y
                sim = (y.to(n.dtype) @ n).abs_()
                ramp = _ramp_weight(sim, cos_t, sin_t, band)
                base = ((n * ramp) @ n.T).to(torch.float64)  # exact but for the candidates
                gap = torch.minimum((sim - cos_t).abs_(), (sim - sin_t).abs_())
                near = (gap <= band).nonzero()[:, 0]
                cand = n.index_select(1, near)
                cand_ramp = ramp.index_select(0, near)
            sim_c = (y.to(n.dtype) @ cand).abs_()
            change = (sim_c < sin_t).to(n.dtype).sub_((sim_c > cos_t).to(n.dtype)).sub_(cand_ramp)
            a = base + ((cand * change) @ cand.T).to(torch.float64)
            new_y = torch.linalg.eigh(a)[1][:, 0]
            y = new_y if float(new_y @ y) >= 0 else -new_y
    return y


def _ramp_weight(sim: Tensor, cos_t: float, sin_t: float, band: float) -> Tensor:
    """+1 (wall) below ``sin_t``, −1 (floor) above ``cos_t``, 0 between, exactly so (the ramp
    saturated twice over, whatever the rounding) at a distance of ``band`` or more from both;
    a linear ramp within ``band / 2``.
    """
    steep = 2.0 / band
    wall = torch.sub(sin_t, sim).mul_(steep).clamp_(0.0, 1.0)
    return wall.sub_(torch.sub(sim, cos_t).mul_(steep).clamp_(0.0, 1.0))


def gravity_rotation(gravity: Tensor, min_angle_deg: float = 0.1) -> Tensor:
    """Rotation taking ``y0 = (0, 1, 0)`` to ``gravity`` about ``y0 × gravity`` (``getRMatrix``).

    Below ``min_angle_deg`` the identity is returned, as in the reference.

    Shape:
        gravity: (B, 3) -> (B, 3, 3)
    """
    g = gravity / gravity.norm(dim=-1, keepdim=True)
    y0 = torch.zeros_like(g)
    y0[:, 1] = 1.0
    axis = torch.linalg.cross(y0, g)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    phi = torch.acos((g * y0).sum(-1).clamp(-1.0, 1.0))
    zero = torch.zeros_like(phi)
    ax, ay, az = axis.unbind(-1)
    s_hat = torch.stack((zero, -az, ay, az, zero, -ax, -ay, ax, zero), -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=g.dtype, device=g.device).expand_as(s_hat)
    rot = eye + phi.sin()[:, None, None] * s_hat + (1 - phi.cos())[:, None, None] * (s_hat @ s_hat)
    small = (phi.rad2deg().abs() <= min_angle_deg)[:, None, None]
    return torch.where(small, eye, rot)
