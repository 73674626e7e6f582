"""Surface normals from square-window plane fits (``computeNormalsSquareSupport.m``).

Every pixel's normal solves the least-squares fit ``n · (X/Z, Y/Z, 1) = 1/Z`` over the
valid pixels of a ``(2r+1)²`` window (zero padding at the border). The window sums are
separable convolutions; on CPU the image is processed in strips of rows so that the
temporaries stay in cache. Used by :mod:`rgbx_fusion.geometry.hha`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

NORMAL_RADIUS = 3  # 7×7 support, HHA's angle channel (normalParam.patchSize(1))
STRIP_PIXELS = 1 << 16
"""Pixels per strip on CPU: per-strip temporaries stay in cache and reuse freed memory."""


def as_batch(depth_m: Tensor, K: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
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


def ray_coords(K: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Normalised ray coordinates ``X/Z`` per column and ``Y/Z`` per row (0-based pixels).

    Shape:
        K: (B, 3, 3) -> ((B, 1, W), (B, H, 1))
    """
    u = torch.arange(w, device=K.device, dtype=K.dtype).view(1, 1, w)
    v = torch.arange(h, device=K.device, dtype=K.dtype).view(1, h, 1)
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    return x, y


def strips(depth: Tensor) -> list[slice]:
    """Row ranges processed one at a time by the plane fits and HHA (one range on CUDA)."""
    b, h, w = depth.shape
    if depth.device.type != "cpu":
        return [slice(0, h)]
    rows = max(1, STRIP_PIXELS // (b * w))
    return [slice(r, min(r + rows, h)) for r in range(0, h, rows)]


def fit_inputs(depth: Tensor, missing: Tensor | None, pad: int) -> Tensor:
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
        inputs: (B, 2, H + 2 pad, W) from :func:`fit_inputs` -> per radius 9 × (B, S, W)
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
        # sxx, sxy, sx, syy, sy, s1 as (row profile, column profile) products
        pairs = ((2, 0), (1, 1), (1, 0), (0, 2), (0, 1), (0, 0))
        mask = tuple((xs[i] * ys[j])[None] for i, j in pairs)
        out.append((*mask, *F.conv2d(c, row, padding=(0, radius)).unbind(1)))
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
        sources = ((0, d * d), (1, d), (0, d), (2, one), (1, one), (0, one))  # mask moments
        for j, (channel, kernel) in enumerate((*sources, (3, d), (4, one), (3, one))):
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
    depth, K = as_batch(depth_m, K, dtype)
    inputs = fit_inputs(depth, missing, radius)
    return unit_normals(depth, K, inputs, radius, ((radius, True),))[0][0]


def unit_normals(
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
    ray_x, ray_y = ray_coords(K, h, w)
    radii = tuple(radius for radius, _ in fields)
    for rows in strips(depth):
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
