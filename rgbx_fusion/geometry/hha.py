"""Batched, vectorised HHA encoding of depth (Gupta et al., ECCV 2014).

HHA stores depth as three uint8 channels: horizontal **disparity**, **height** above the
lowest point, and **angle** between the surface normal and gravity. This module follows the
reference MATLAB code (``saveHHA.m`` → ``processDepthImage.m`` →
``computeNormalsSquareSupport.m``, ``getYDir.m``, ``getRMatrix.m``) step by step:

1. Normals from a least-squares plane fit ``n · (X/Z, Y/Z, 1) = 1/Z`` over a square window
   of side ``2R + 1`` (zero padding at the border, missing pixels excluded): ``R = 3`` for
   the angle channel, ``R = 10`` for gravity. The normal is ``adj(AᵀA) Aᵀb`` normalised,
   then turned to point away from the camera (``n · P > 0``). A window without support
   gives no normal (``NaN`` in MATLAB, a zero vector here).
2. Gravity: start at ``y0 = (0, 1, 0)`` (image down); twice (45°, then 15°), five times each,
   take the eigenvector of the smallest eigenvalue of ``Σ_wall n nᵀ − Σ_floor n nᵀ`` where
   "floor" normals are within the threshold of the current estimate and "wall" normals
   within the threshold of perpendicular to it.
3. Height (cm): ``h = −(Rᵀ P)_y`` with ``R`` the Rodrigues rotation taking ``y0`` to gravity
   (identity below 0.1°), minus the floor ``min(h)`` (the 0th percentile, over every pixel);
   when that floor is above −90 cm, −130 cm is used instead.
4. Channels: disparity ``31000 / max(Z_cm, 100)``, height ``h``, angle
   ``acosd(n · g) + 128 − 90`` (no normal → 180°), then MATLAB's ``uint8``: round half away
   from zero, saturate to [0, 255], NaN → 0.

Convention:
    Output channel order is (disparity, height, angle), the R, G, B order of the reference
    ``imwrite(cat(3, disparity, height, angle))``. ``K`` uses the toolkit's 0-based pixel
    centres (:mod:`rgbx_fusion.geometry.camera`); MATLAB's ``meshgrid(1:W, 1:H)`` is 1-based,
    so intrinsics calibrated for it (e.g. the NYU toolbox: cx 325.58, cy 253.74) reproduce the
    reference HHA with ``cx − 1``, ``cy − 1``. Skew is ignored, as in the reference.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMAL_RADIUS = 3  # 7×7 support for the angle channel (normalParam.patchSize(1))
GRAVITY_NORMAL_RADIUS = 10  # 21×21 support for the gravity estimate (patchSize(2))
GRAVITY_ANGLES_DEG = (45.0, 15.0)
GRAVITY_ITERATIONS = (5, 5)
DISPARITY_SCALE_CM = 31000.0
MIN_DEPTH_CM = 100.0
ANGLE_OFFSET_DEG = 128.0 - 90.0
FLOOR_LIMIT_CM = -90.0
FLOOR_FALLBACK_CM = -130.0


def _as_batch(depth_m: Tensor, K: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(H, W)``/``(B, H, W)`` depth and ``(3, 3)``/``(B, 3, 3)`` K → batched, in ``dtype``."""
    if depth_m.ndim == 2:
        depth_m = depth_m[None]
    if depth_m.ndim != 3:
        raise ValueError(f"depth must be (H, W) or (B, H, W), got {tuple(depth_m.shape)}")
    b = depth_m.shape[0]
    K = K.to(device=depth_m.device, dtype=dtype)
    if K.ndim == 2:
        K = K[None]
    if K.shape[-2:] != (3, 3) or K.shape[0] not in (1, b):
        raise ValueError(f"K must be (3, 3) or ({b}, 3, 3), got {tuple(K.shape)}")
    return depth_m.to(dtype), K.expand(b, 3, 3)


def _ray_coords(K: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Normalised ray coordinates ``X/Z`` per column and ``Y/Z`` per row (0-based pixels).

    Shape:
        K: (B, 3, 3) -> ((B, 1, W), (B, H, 1))
    """
    u = torch.arange(w, device=K.device, dtype=K.dtype).view(1, 1, w)
    v = torch.arange(h, device=K.device, dtype=K.dtype).view(1, h, 1)
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    return x, y


STRIP_PIXELS = 1 << 16
"""Pixels per strip on CPU: per-strip temporaries stay in cache and reuse freed memory."""
GRAVITY_BANDS = (0.06, 0.03)
"""Per gravity round, ``|n·y|`` within this of a threshold is re-classified at every iteration
(speed only: wide enough that a typical estimate stays within it for the whole round, narrow
enough to leave few candidates; the result is exact for any band)."""


def _strips(depth: Tensor) -> list[slice]:
    """Row ranges that :func:`depth_to_hha` processes one at a time (one on CUDA)."""
    b, h, w = depth.shape
    if depth.device.type != "cpu":
        return [slice(0, h)]
    rows = max(1, STRIP_PIXELS // (b * w))
    return [slice(r, min(r + rows, h)) for r in range(0, h, rows)]


def _fit_inputs(depth: Tensor, missing: Tensor | None, pad: int) -> Tensor:
    """Mask of the pixels used in the fits and their ``1 / Z_cm`` (0 elsewhere), stacked,
    with ``pad`` zero rows above and below (the fits' zero padding at the border).

    Shape:
        depth: (B, H, W) -> (B, 2, H + 2 pad, W)
    """
    valid = depth > 0
    if missing is not None:
        valid = valid & ~missing.to(device=depth.device, dtype=torch.bool).expand_as(depth)
    inputs = depth.new_zeros(depth.shape[0], 2, depth.shape[1] + 2 * pad, depth.shape[2])
    mask = inputs[:, 0, pad : pad + depth.shape[1]]
    mask.copy_(valid)
    inv_z = (100.0 * depth.clamp_min(1e-12)).reciprocal_()
    torch.mul(mask, inv_z, out=inputs[:, 1, pad : pad + depth.shape[1]])
    return inputs


def _window_moments(
    inputs: Tensor, pad: int, radii: tuple[int, ...], rows: slice
) -> list[tuple[Tensor, ...]]:
    """Window moments ``Σdx², Σdxdy, Σdx, Σdy², Σdy, Σ1`` (mask) and ``Σdx/Z, Σdy/Z, Σ1/Z``
    of the output rows ``rows``, for each window radius.

    Offsets ``dx, dy`` are relative to the window centre; outside the image counts as 0.
    Dense convolutions, which run several times faster on CPU than the equivalent
    per-channel (depthwise) filters: one over columns for every radius at once (2 → 5 channels
    per radius), then one over rows per radius (5 → 9). Where every pixel within reach of the
    rows is valid (hole-filled depth), the mask moments are sums of in-image offsets, a
    column profile times a row profile, and only ``1/Z`` is filtered (1 → 2, then 2 → 3).

    Shape:
        inputs: (B, 2, H + 2 pad, W) from :func:`_fit_inputs` -> per radius 9 × (B, S, W)
        (the mask moments broadcast: (1, S, W) when every pixel in reach is valid)
    """
    kernels = _moment_kernels(radii, inputs.dtype, inputs.device)
    reach = max(radii)
    h, w = inputs.shape[2] - 2 * pad, inputs.shape[3]
    part = inputs[:, :, rows.start + pad - reach : rows.stop + pad + reach]
    in_reach = slice(pad + max(rows.start - reach, 0), pad + min(rows.stop + reach, h))
    if not _all_valid(inputs[:, 0, in_reach]):
        cols = F.conv2d(part, kernels.col)
        return [
            F.conv2d(c, row, padding=(0, radius)).unbind(1)
            for c, row, radius in zip(cols.split(5, dim=1), kernels.rows, radii, strict=True)
        ]
    cols = F.conv2d(part[:, 1:], kernels.z_col)
    out = []
    for c, row, radius in zip(cols.split(2, dim=1), kernels.z_rows, radii, strict=True):
        ys = _offset_sums(radius, h, inputs.dtype, inputs.device)[:, rows, None]
        xs = _offset_sums(radius, w, inputs.dtype, inputs.device)[:, None, :]
        mask = (xs[2] * ys[0], xs[1] * ys[1], xs[1] * ys[0], xs[0] * ys[2], xs[0] * ys[1])
        z = F.conv2d(c, row, padding=(0, radius)).unbind(1)
        out.append((*(m[None] for m in mask), (xs[0] * ys[0])[None], *z))
    return out


def _all_valid(mask: Tensor) -> bool:
    """Whether every pixel of a fit-mask slab is used (no missing depth)."""
    return bool(mask.all())


@functools.lru_cache(maxsize=32)
def _offset_sums(radius: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(Σ 1, Σ d, Σ d²)`` over the offsets ``d ∈ [-r, r]`` that stay inside ``[0, size)``,
    at every position. Shape: -> (3, size)"""
    d = torch.arange(-radius, radius + 1, device=device)
    pos = torch.arange(size, device=device)[:, None] + d
    inside = ((pos >= 0) & (pos < size)).to(dtype)
    d = d.to(dtype)
    return torch.stack((inside.sum(1), inside @ d, inside @ (d * d)))


class _MomentKernels(NamedTuple):
    """Weights of :func:`_window_moments`: columns ``(5 n, 2, 2 max(r) + 1, 1)`` (zero taps
    beyond a radius), rows ``(9, 5, 1, 2r + 1)`` per radius, and their ``1/Z`` parts
    (``(2 n, 1, 2 max(r) + 1, 1)``; ``(3, 2, 1, 2r + 1)``)."""

    col: Tensor
    rows: list[Tensor]
    z_col: Tensor
    z_rows: list[Tensor]


@functools.lru_cache(maxsize=16)
def _moment_kernels(
    radii: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> _MomentKernels:
    reach = max(radii)
    col = torch.zeros(5 * len(radii), 2, 2 * reach + 1, device=device, dtype=dtype)
    rows = []
    for i, radius in enumerate(radii):
        d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
        one = torch.ones_like(d)
        taps = slice(reach - radius, reach + radius + 1)
        # columns: (Σ m, Σ dy m, Σ dy² m) from the mask, (Σ 1/Z, Σ dy/Z) from 1/Z
        for j, (channel, kernel) in enumerate(((0, one), (0, d), (0, d * d), (1, one), (1, d))):
            col[5 * i + j, channel, taps] = kernel
        # rows, from the column sums (m0, m1, m2, z0, z1) to the moments in return order:
        # sxx, sxy, sx, syy, sy, s1, gx, gy, g1 as (input channel, row kernel)
        row = torch.zeros(9, 5, 2 * radius + 1, device=device, dtype=dtype)
        sources = ((0, d * d), (1, d), (0, d), (2, one), (1, one), (0, one), (3, d), (4, one))
        for j, (channel, kernel) in enumerate((*sources, (3, one))):
            row[j, channel] = kernel
        rows.append(row[:, :, None])
    z_col = torch.cat([col[5 * i + 3 : 5 * i + 5, 1:] for i in range(len(radii))])
    z_rows = [row[6:, 3:].contiguous() for row in rows]
    return _MomentKernels(col[..., None], rows, z_col[..., None].contiguous(), z_rows)


class _Plane:
    """Plane fit of one strip: the normal ``(nx, ny, nz)`` up to scale, and its length.

    The fit is solved in window-local pixel offsets (``x = x_c + dx / fx``), which keeps the
    normal equations well conditioned in float32; mapping the solution back is exact, so the
    direction equals the reference ``adj(AᵀA) Aᵀb`` (a positive multiple of it). ``mz`` is
    the solution's third component, whose sign is that of ``n · ray``.
    """

    def __init__(self, moments: tuple[Tensor, ...], K: Tensor, ray_x: Tensor, ray_y: Tensor):
        sxx, sxy, sx, syy, sy, s1, gx, gy, g1 = moments
        # adj(G) g with G = [[sxx, sxy, sx], [sxy, syy, sy], [sx, sy, s1]] (symmetric adjugate).
        a11 = (syy * s1).addcmul_(sy, sy, value=-1)
        a22 = (sxx * s1).addcmul_(sx, sx, value=-1)
        a33 = (sxx * syy).addcmul_(sxy, sxy, value=-1)
        a12 = (sx * sy).addcmul_(sxy, s1, value=-1)
        a13 = (sxy * sy).addcmul_(sx, syy, value=-1)
        a23 = (sxy * sx).addcmul_(sxx, sy, value=-1)
        mx = (a11 * gx).addcmul_(a12, gy).addcmul_(a13, g1)
        my = (a12 * gx).addcmul_(a22, gy).addcmul_(a23, g1)
        self.mz = (a13 * gx).addcmul_(a23, gy).addcmul_(a33, g1)
        self.nx = mx.mul_(K[:, 0, 0, None, None])
        self.ny = my.mul_(K[:, 1, 1, None, None])
        self.nz = torch.addcmul(self.mz, ray_x, self.nx, value=-1).addcmul_(
            ray_y, self.ny, value=-1
        )
        self.norm = (self.nx * self.nx).addcmul_(self.ny, self.ny).addcmul_(self.nz, self.nz)
        self.norm.sqrt_()

    def inverse_length(self) -> Tensor:
        """``1 / |n|`` (finite; the normal is a zero vector where the window has no support)."""
        return self.norm.clamp_min(torch.finfo(self.norm.dtype).tiny).reciprocal_()

    def oriented_scale(self, depth: Tensor) -> Tensor:
        """``±1 / |n|``, the sign as in the reference: flip to ``n_z >= 0``, then flip again so
        that ``n · P > 0`` (a zero sign counts as +1). ``n · P = Z (n · ray) = Z m_z``, so the
        second flip is ``sign(Z m_z)`` wherever that is non-zero, and the first stands
        elsewhere.
        """
        sign = torch.sign(depth * self.mz)
        first = (self.nz < 0).to(sign.dtype).mul_(-2.0).add_(1.0)
        sign.addcmul_((sign == 0).to(sign.dtype), first)
        return self.inverse_length().mul_(sign)


def square_support_normals(
    depth_m: Tensor,
    K: Tensor,
    radius: int = NORMAL_RADIUS,
    missing: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Surface normals from a plane fit over a ``(2r+1)²`` window (``computeNormalsSquareSupport``).

    Args:
        depth_m: depth (Z) in metres, 0 = missing.
        K: intrinsics, 0-based pixel centres.
        radius: half side ``r`` of the square support.
        missing: pixels to leave out of every fit (default ``depth_m <= 0``); their own normal
            is still fitted from the neighbours, as in the reference.
        dtype: computation dtype.

    Returns:
        Unit normals in the camera frame (X right, Y down, Z forward), pointing away from the
        camera (``n · P > 0``); a zero vector where the window holds no usable support.

    Shape:
        depth_m: (B, H, W) or (H, W); K: (3, 3) or (B, 3, 3) -> (B, 3, H, W)
    """
    depth, K = _as_batch(depth_m, K, dtype)
    inputs = _fit_inputs(depth, missing, radius)
    return _unit_normals(depth, K, inputs, radius, ((radius, True),))[0][0]


def _unit_normals(
    depth: Tensor, K: Tensor, inputs: Tensor, pad: int, fields: tuple[tuple[int, bool], ...]
) -> list[tuple[Tensor, Tensor | None]]:
    """Unit normals of every pixel for each ``(radius, oriented)`` field, strip by strip, and
    for oriented fields where the window gave no normal. Unoriented fields keep the fit's sign.

    Shape:
        depth: (B, H, W) -> per field ((B, 3, H, W), (B, H, W) bool or None)
    """
    b, h, w = depth.shape
    out = [
        (
            depth.new_empty(b, 3, h, w),
            depth.new_empty(b, h, w, dtype=torch.bool) if oriented else None,
        )
        for _, oriented in fields
    ]
    ray_x, ray_y = _ray_coords(K, h, w)
    radii = tuple(radius for radius, _ in fields)
    for rows in _strips(depth):
        moments = _window_moments(inputs, pad, radii, rows)
        for (normals, none), part in zip(out, moments, strict=True):
            plane = _Plane(part, K, ray_x, ray_y[:, rows])
            if none is None:
                scale = plane.inverse_length()
            else:
                scale = plane.oriented_scale(depth[:, rows])
                torch.eq(plane.norm, 0, out=none[:, rows])
            for i, component in enumerate((plane.nx, plane.ny, plane.nz)):
                torch.mul(component, scale, out=normals[:, i, rows])
    return out


def estimate_gravity(
    normals: Tensor,
    angles_deg: tuple[float, ...] = GRAVITY_ANGLES_DEG,
    iterations: tuple[int, ...] = GRAVITY_ITERATIONS,
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

    Returns:
        Unit gravity direction in the camera frame (pointing down, like ``y0``).

    Shape:
        normals: (B, 3, H, W) -> (B, 3)
    """
    flat = normals.flatten(2)  # (B, 3, HW)
    found = [_gravity(n, float((n * n).sum(0).amax().sqrt()), angles_deg, iterations) for n in flat]
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
    """+1 (wall) below ``sin_t``, −1 (floor) above ``cos_t``, 0 between, exactly so at a
    distance of at least ``band`` from both; a linear ramp closer than that.
    """
    steep = 1.0 / band
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


def matlab_uint8(x: Tensor) -> Tensor:
    """MATLAB ``uint8(x)``: round half away from zero, saturate to [0, 255], NaN → 0."""
    x = torch.nan_to_num(x, nan=0.0).clamp_(0, 255)
    rounded = torch.round(x)  # half to even: a half that went down goes up instead
    return rounded.add_((x - rounded) == 0.5).to(torch.uint8)


def depth_to_hha(
    depth_m: Tensor,
    K: Tensor,
    missing: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Encode depth as HHA (disparity, height above floor, angle with gravity), as uint8.

    On CPU the image is processed in strips of rows (:data:`STRIP_PIXELS`), so that the
    plane fits' temporaries stay in cache; the result does not depend on the strips.

    Args:
        depth_m: depth (Z) in metres, 0 = missing; may be hole-filled.
        K: intrinsics with 0-based pixel centres (see the module docstring for MATLAB ones).
        missing: pixels left out of the normal fits, e.g. ``raw_depth == 0`` when ``depth_m``
            is hole-filled (the reference's ``missingMask``); default ``depth_m <= 0``.
        dtype: computation dtype (float32 matches float64 to about ±1 grey level on a few
            pixels; pass ``torch.float64`` for a bit-closer match to MATLAB).

    Returns:
        HHA image, channels (disparity, height, angle). An ``(H, W)`` input gives ``B = 1``.

    Shape:
        depth_m: (B, H, W) or (H, W); K: (3, 3) or (B, 3, 3); missing like depth_m
        -> (B, 3, H, W) uint8
    """
    depth, K = _as_batch(depth_m, K, dtype)
    b, h, w = depth.shape
    pad = max(NORMAL_RADIUS, GRAVITY_NORMAL_RADIUS)
    inputs = _fit_inputs(depth, missing, pad)  # shared by both supports
    fields = ((NORMAL_RADIUS, True), (GRAVITY_NORMAL_RADIUS, False))
    (normals, no_normal), (coarse, _) = _unit_normals(depth, K, inputs, pad, fields)
    assert no_normal is not None
    reach = 1.0 + 1e-5  # unit or zero normals
    gravity = torch.stack(
        [_gravity(n, reach, GRAVITY_ANGLES_DEG, GRAVITY_ITERATIONS) for n in coarse.flatten(2)]
    ).to(dtype)
    col = gravity_rotation(gravity)[:, :, 1, None, None]  # (B, 3, 1, 1)
    g = gravity[:, :, None, None]
    ray_x, ray_y = _ray_coords(K, h, w)
    up = col[:, 0] * ray_x  # the height is -z_cm (col · ray), in cm
    out = torch.empty(b, 3, h, w, dtype=torch.uint8, device=depth.device)
    height = torch.empty_like(depth)
    for rows in _strips(depth):
        z_cm = depth[:, rows] * 100.0
        n = normals[:, :, rows]
        values = depth.new_empty(b, 2, z_cm.shape[1], w)  # disparity, angle
        torch.div(DISPARITY_SCALE_CM, z_cm.clamp_min(MIN_DEPTH_CM), out=values[:, 0])
        cos = (n[:, 0] * g[:, 0]).addcmul_(n[:, 1], g[:, 1]).addcmul_(n[:, 2], g[:, 2])
        angle = torch.acos(cos.clamp_(-1.0, 1.0), out=values[:, 1]).rad2deg_()
        angle.add_(no_normal[:, rows].to(angle.dtype), alpha=90.0)  # no normal: 180°
        angle.add_(ANGLE_OFFSET_DEG)
        out[:, 0::2, rows] = matlab_uint8(values)
        torch.mul(
            torch.addcmul(up + col[:, 2], col[:, 1], ray_y[:, rows]), z_cm, out=height[:, rows]
        ).neg_()
    floor = height.flatten(1).amin(1)
    floor = torch.where(floor > FLOOR_LIMIT_CM, torch.full_like(floor, FLOOR_FALLBACK_CM), floor)
    out[:, 1] = matlab_uint8(height.sub_(floor[:, None, None]))
    return out


class HHA(nn.Module):
    """Module wrapper of :func:`depth_to_hha` with fixed intrinsics (a buffer).

    Args:
        K: intrinsics, 0-based pixel centres, ``(3, 3)`` or ``(B, 3, 3)``.
        dtype: computation dtype.

    Shape:
        depth_m: (B, H, W) or (H, W) -> (B, 3, H, W) uint8
    """

    K: Tensor

    def __init__(self, K: Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("K", torch.as_tensor(K, dtype=torch.float64))
        self.compute_dtype = dtype

    def forward(self, depth_m: Tensor, missing: Tensor | None = None) -> Tensor:
        return depth_to_hha(depth_m, self.K, missing, self.compute_dtype)


def bench_hha(
    height: int = 480,
    width: int = 640,
    batch: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int | None = 1,
    missing_fraction: float = 0.0,
) -> float:
    """Seconds per image of :func:`depth_to_hha` on a synthetic room (best of ``repeats``).

    ``threads`` sets ``torch.set_num_threads`` for the run (restored after); one thread per
    process is also what ``rgbx-fusion hha --workers N`` uses. ``missing_fraction`` marks that
    share of random pixels as missing (a raw-depth mask), which takes the general path of the
    plane fits; 0 is hole-filled depth.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    generator = torch.Generator().manual_seed(0)
    v = torch.arange(height, dtype=torch.float32)[:, None]
    u = torch.arange(width, dtype=torch.float32)[None, :]
    noise = torch.rand(batch, height, width, generator=generator)
    depth = (2.0 + 0.002 * v + 0.001 * u + 0.01 * noise).to(device)
    missing = None
    if missing_fraction > 0:
        missing = (torch.rand(batch, height, width, generator=generator) < missing_fraction).to(
            device
        )
    K = torch.tensor([[518.86, 0, width / 2], [0, 519.47, height / 2], [0, 0, 1.0]])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    try:
        depth_to_hha(depth, K, missing, dtype=dtype)  # warm-up
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            depth_to_hha(depth, K, missing, dtype=dtype)
            sync()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(times) / batch
