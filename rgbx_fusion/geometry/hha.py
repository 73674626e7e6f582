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

import time

import torch
from torch import Tensor, nn

from rgbx_fusion.geometry.gravity import (
    estimate_gravity,
    gravity_rotation,
)
from rgbx_fusion.geometry.plane_fit import (
    NORMAL_RADIUS,
    as_batch,
    fit_inputs,
    ray_coords,
    square_support_normals,
    strips,
    unit_normals,
)

__all__ = [
    "HHA",
    "bench_hha",
    "depth_to_hha",
    "estimate_gravity",
    "gravity_rotation",
    "matlab_uint8",
    "square_support_normals",
]

GRAVITY_NORMAL_RADIUS = 10  # 21×21 support for the gravity estimate (patchSize(2))
DISPARITY_SCALE_CM = 31000.0
MIN_DEPTH_CM = 100.0
ANGLE_OFFSET_DEG = 128.0 - 90.0
FLOOR_LIMIT_CM = -90.0
FLOOR_FALLBACK_CM = -130.0


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

    On CPU the image is processed in strips of rows
    (:data:`rgbx_fusion.geometry.plane_fit.STRIP_PIXELS`), so that the
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
    depth, K = as_batch(depth_m, K, dtype)
    b, h, w = depth.shape
    pad = max(NORMAL_RADIUS, GRAVITY_NORMAL_RADIUS)
    inputs = fit_inputs(depth, missing, pad)  # shared by both supports
    fields = ((NORMAL_RADIUS, True), (GRAVITY_NORMAL_RADIUS, False))
    (normals, no_normal), (coarse, _) = unit_normals(depth, K, inputs, pad, fields)
    assert no_normal is not None
    gravity = estimate_gravity(coarse, reach=1.0 + 1e-5)  # unit or zero normals
    col = gravity_rotation(gravity)[:, :, 1, None, None]  # (B, 3, 1, 1)
    g = gravity[:, :, None, None]
    ray_x, ray_y = ray_coords(K, h, w)
    up = col[:, 0] * ray_x  # the height is -z_cm (col · ray), in cm
    out = torch.empty(b, 3, h, w, dtype=torch.uint8, device=depth.device)
    height = torch.empty_like(depth)
    for rows in strips(depth):
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
