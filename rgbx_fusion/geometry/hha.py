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


def _fit_inputs(depth: Tensor, missing: Tensor | None) -> Tensor:
    """Mask of the pixels used in the fits and their ``1 / Z_cm`` (0 elsewhere), stacked.

    Shape:
        depth: (B, H, W) -> (B, 2, H, W)
    """
    valid = depth > 0
    if missing is not None:
        valid = valid & ~missing.to(device=depth.device, dtype=torch.bool).expand_as(depth)
    inv_z = torch.where(valid, 1.0 / (100.0 * depth.clamp_min(1e-12)), depth.new_zeros(()))
    return torch.stack((valid.to(depth.dtype), inv_z), 1)


def _window_moments(inputs: Tensor, radius: int) -> tuple[Tensor, ...]:
    """Window moments ``Σdx², Σdxdy, Σdx, Σdy², Σdy, Σ1`` (mask) and ``Σdx/Z, Σdy/Z, Σ1/Z``.

    Offsets ``dx, dy`` are relative to the window centre; outside the image counts as 0.
    Two dense convolutions (columns: 2 → 5 channels, rows: 5 → 9), which run several times
    faster on CPU than the equivalent per-channel (depthwise) filters.

    Shape:
        inputs: (B, 2, H, W) -> 9 × (B, H, W)
    """
    col, row = _moment_kernels(radius, inputs.dtype, inputs.device)
    cols = F.conv2d(inputs, col, padding=(radius, 0))
    return F.conv2d(cols, row, padding=(0, radius)).unbind(1)


@functools.lru_cache(maxsize=16)
def _moment_kernels(radius: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Weights of :func:`_window_moments`: columns ``(5, 2, k, 1)``, rows ``(9, 5, 1, k)``."""
    d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    one, zero = torch.ones_like(d), torch.zeros_like(d)
    # columns: (Σ m, Σ dy m, Σ dy² m) from the mask, (Σ 1/Z, Σ dy/Z) from 1/Z
    col = torch.stack(
        (
            torch.stack((one, zero)),
            torch.stack((d, zero)),
            torch.stack((d * d, zero)),
            torch.stack((zero, one)),
            torch.stack((zero, d)),
        )
    )
    # rows, from the column sums (m0, m1, m2, z0, z1) to the moments in return order:
    # sxx, sxy, sx, syy, sy, s1, gx, gy, g1 as (input channel, row kernel)
    taps = ((0, d * d), (1, d), (0, d), (2, one), (1, one), (0, one), (3, d), (4, one), (3, one))
    row = torch.zeros(len(taps), 5, 2 * radius + 1, device=device, dtype=dtype)
    for i, (channel, kernel) in enumerate(taps):
        row[i, channel] = kernel
    return col[..., None], row[:, :, None]


def square_support_normals(
    depth_m: Tensor,
    K: Tensor,
    radius: int = NORMAL_RADIUS,
    missing: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Surface normals from a plane fit over a ``(2r+1)²`` window (``computeNormalsSquareSupport``).

    The fit is solved in window-local pixel offsets (``x = x_c + dx / fx``), which keeps the
    normal equations well conditioned in float32; mapping the solution back is exact, so the
    direction equals the reference ``adj(AᵀA) Aᵀb`` (a positive multiple of it).

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
    return _normals(depth, K, radius, _fit_inputs(depth, missing))


def _normals(depth: Tensor, K: Tensor, radius: int, inputs: Tensor) -> Tensor:
    """:func:`square_support_normals` from batched inputs and :func:`_fit_inputs`."""
    h, w = depth.shape[1:]
    dtype = depth.dtype
    sxx, sxy, sx, syy, sy, s1, gx, gy, g1 = _window_moments(inputs, radius)
    # adj(G) g with G = [[sxx, sxy, sx], [sxy, syy, sy], [sx, sy, s1]] (symmetric adjugate).
    a11, a22, a33 = syy * s1 - sy * sy, sxx * s1 - sx * sx, sxx * syy - sxy * sxy
    a12, a13, a23 = sx * sy - sxy * s1, sxy * sy - sx * syy, sxy * sx - sxx * sy
    mx = a11 * gx + a12 * gy + a13 * g1
    my = a12 * gx + a22 * gy + a23 * g1
    mz = a13 * gx + a23 * gy + a33 * g1
    ray_x, ray_y = _ray_coords(K, h, w)
    nx = mx * K[:, 0, 0, None, None]
    ny = my * K[:, 1, 1, None, None]
    nz = mz - ray_x * nx - ray_y * ny
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz)
    # Orientation as in the reference: flip to n_z >= 0, then flip again so that n · P > 0
    # (a zero sign counts as +1). n · P = Z (n · ray) = Z m_z, so the second flip reduces to
    # sign(m_z) wherever Z m_z != 0, and the first flip stands elsewhere.
    first = torch.where(nz < 0, -1.0, 1.0).to(dtype)
    facing = depth * mz
    sign = torch.where(facing != 0, torch.sign(facing), first)
    scale = torch.where(norm > 0, sign / norm.clamp_min(torch.finfo(dtype).tiny), 0.0)
    return torch.stack((nx, ny, nz), dim=1) * scale[:, None]


def estimate_gravity(
    normals: Tensor,
    angles_deg: tuple[float, ...] = GRAVITY_ANGLES_DEG,
    iterations: tuple[int, ...] = GRAVITY_ITERATIONS,
) -> Tensor:
    """Gravity direction from a normal field by hard floor/wall assignments (``getYDir``).

    Starting from image-down ``(0, 1, 0)``, for each threshold ``t`` and its iteration count:
    floor normals ``|n·y| > cos t``, wall normals ``|n·y| < sin t``; the new ``y`` is the
    eigenvector of the smallest eigenvalue of ``Σ_wall n nᵀ − Σ_floor n nᵀ``, signed to agree
    with the previous ``y``. The 3×3 sums are accumulated in float64, ``|n·y|`` is taken in
    the normals' dtype.

    Args:
        normals: unit normals; zero vectors (no normal) are ignored.
        angles_deg: thresholds, one per round.
        iterations: iterations per round.

    Returns:
        Unit gravity direction in the camera frame (pointing down, like ``y0``).

    Shape:
        normals: (B, 3, H, W) -> (B, 3)
    """
    b = normals.shape[0]
    flat = normals.flatten(2)  # (B, 3, HW)
    flat64 = flat.to(torch.float64)
    y = flat64.new_tensor([0.0, 1.0, 0.0]).expand(b, 3)
    # The first iteration sums over every pixel; later ones only add what changed class (few
    # pixels once the estimate settles). Zero normals count as wall and add nothing.
    a: Tensor | None = None
    weight: Tensor | None = None
    for angle, count in zip(angles_deg, iterations, strict=True):
        cos_t, sin_t = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for _ in range(count):
            sim = torch.bmm(y.to(flat.dtype)[:, None, :], flat)[:, 0].abs()  # (B, HW)
            new = (sim < sin_t).to(torch.int8) - (sim > cos_t).to(torch.int8)
            if a is None or weight is None:
                a = torch.bmm(flat64 * new[:, None], flat64.transpose(1, 2))  # Σ w n nᵀ
            else:
                delta = new - weight
                for i in range(b):
                    idx = delta[i].nonzero()[:, 0]
                    if idx.numel():
                        part = flat64[i][:, idx]
                        a[i] += (part * delta[i, idx]) @ part.T
            weight = new
            new_y = torch.linalg.eigh(a)[1][:, :, 0]
            agree = (new_y * y).sum(-1, keepdim=True)
            y = new_y * torch.where(agree < 0, -1.0, 1.0).to(new_y)
    return y.to(normals.dtype)


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
    floor = torch.floor(x)
    rounded = torch.where(x - floor == 0.5, floor + 1, torch.round(x))
    return torch.nan_to_num(rounded, nan=0.0).clamp(0, 255).to(torch.uint8)


def depth_to_hha(
    depth_m: Tensor,
    K: Tensor,
    missing: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Encode depth as HHA (disparity, height above floor, angle with gravity), as uint8.

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
    inputs = _fit_inputs(depth, missing)  # shared by both supports
    normals = _normals(depth, K, NORMAL_RADIUS, inputs)
    gravity = estimate_gravity(_normals(depth, K, GRAVITY_NORMAL_RADIUS, inputs))
    z_cm = depth * 100.0
    ray_x, ray_y = _ray_coords(K, *depth.shape[1:])
    col = gravity_rotation(gravity)[:, :, 1, None, None]  # (B, 3, 1, 1)
    height = -z_cm * (col[:, 0] * ray_x + col[:, 1] * ray_y + col[:, 2])  # -(Rᵀ P)_y in cm
    floor = height.flatten(1).amin(1)
    floor = torch.where(floor > FLOOR_LIMIT_CM, torch.full_like(floor, FLOOR_FALLBACK_CM), floor)
    height = height - floor[:, None, None]
    cos = torch.einsum("bi,bihw->bhw", gravity, normals).clamp(-1.0, 1.0)
    has_normal = normals.abs().sum(1) > 0
    angle = torch.where(has_normal, torch.rad2deg(torch.acos(cos)), torch.full_like(cos, 180.0))
    disparity = DISPARITY_SCALE_CM / z_cm.clamp_min(MIN_DEPTH_CM)
    return matlab_uint8(torch.stack((disparity, height, angle + ANGLE_OFFSET_DEG), dim=1))


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
) -> float:
    """Seconds per image of :func:`depth_to_hha` on a synthetic room (best of ``repeats``).

    ``threads`` sets ``torch.set_num_threads`` for the run (restored after); one thread per
    process is also what ``rgbx-fusion hha --workers N`` uses.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    v = torch.arange(height, dtype=torch.float32)[:, None]
    u = torch.arange(width, dtype=torch.float32)[None, :]
    depth = (2.0 + 0.002 * v + 0.001 * u + 0.01 * torch.rand(batch, height, width)).to(device)
    K = torch.tensor([[518.86, 0, width / 2], [0, 519.47, height / 2], [0, 0, 1.0]])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    try:
        depth_to_hha(depth, K, dtype=dtype)  # warm-up
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            depth_to_hha(depth, K, dtype=dtype)
            sync()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(times) / batch
