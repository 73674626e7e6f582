"""Pinhole-camera helpers: back-projection, rigid transforms, projection and depth reprojection.

Convention (every function here):
    Pixel ``(u, v)`` = (column, row) with pixel centres at integer coordinates (OpenCV), so
    ``u = fx * X / Z + cx``. Camera frame: X right, Y down, Z forward (metres). ``K`` is the
    3×3 intrinsic matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``; ``T_b_from_a`` is a 4×4
    rigid transform taking points in camera ``a`` to camera ``b``: ``P_b = R P_a + t``.
    Depth is the Z coordinate (not the ray length) in metres, 0 = missing.
"""

from __future__ import annotations

import torch
from kornia.geometry.depth import depth_to_3d_v2
from torch import Tensor


def _batched(matrix: Tensor, batch: int, rows: int) -> Tensor:
    """Broadcast a ``(r, c)`` or ``(B, r, c)`` matrix to ``(batch, r, c)``."""
    if matrix.ndim == 2:
        matrix = matrix[None]
    if matrix.ndim != 3 or matrix.shape[1] != rows or matrix.shape[0] not in (1, batch):
        raise ValueError(
            f"expected a ({rows}, c) or ({batch}, {rows}, c) matrix, got {tuple(matrix.shape)}"
        )
    return matrix.expand(batch, -1, -1)


def as_rigid(transform: Tensor) -> Tensor:
    """Promote a ``(..., 3, 4)`` ``[R | t]`` to ``(..., 4, 4)``; ``(..., 4, 4)`` passes through."""
    if transform.shape[-2:] == (4, 4):
        return transform
    if transform.shape[-2:] != (3, 4):
        raise ValueError(
            f"a rigid transform must be (..., 3, 4) or (..., 4, 4), got {tuple(transform.shape)}"
        )
    bottom = transform.new_zeros(*transform.shape[:-2], 1, 4)
    bottom[..., 0, 3] = 1
    return torch.cat((transform, bottom), dim=-2)


def depth_to_points(depth_m: Tensor, K: Tensor) -> Tensor:
    """Back-project a depth map to 3D points in the camera frame (kornia ``depth_to_3d_v2``).

    Args:
        depth_m: depth (Z) in metres; 0 = missing (gives the point (0, 0, 0)).
        K: intrinsics, shared ``(3, 3)`` or per sample ``(B, 3, 3)``.

    Shape:
        depth_m: (B, 1, H, W) -> (B, H, W, 3), last axis (X, Y, Z) in metres.
    """
    if depth_m.ndim != 4 or depth_m.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth_m.shape)}")
    b = depth_m.shape[0]
    K = _batched(K.to(depth_m), b, 3)
    return depth_to_3d_v2(depth_m[:, 0], K)


def transform_points(points: Tensor, T: Tensor) -> Tensor:
    """Apply a rigid transform ``P' = R P + t`` to points of any layout.

    Shape:
        points: (B, ..., 3); T: (4, 4), (3, 4), (B, 4, 4) or (B, 3, 4) -> (B, ..., 3)
    """
    b = points.shape[0]
    T = _batched(as_rigid(T.to(points)), b, 4)
    flat = points.reshape(b, -1, 3)
    moved = flat @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    return moved.reshape(points.shape)


def project_points(points: Tensor, K: Tensor, eps: float = 1e-6) -> Tensor:
    """Project camera-frame points to pixels, ``(u, v) = (K P)_{xy} / Z``.

    Points with ``Z <= eps`` (behind or on the camera) get a finite but meaningless position;
    callers mask them with ``points[..., 2] > eps``.

    Shape:
        points: (B, ..., 3); K: (3, 3) or (B, 3, 3) -> (B, ..., 2) pixel coordinates.
    """
    b = points.shape[0]
    K = _batched(K.to(points), b, 3)
    flat = points.reshape(b, -1, 3)
    homog = flat @ K.transpose(1, 2)
    z = homog[..., 2:].clamp_min(eps)
    return (homog[..., :2] / z).reshape(*points.shape[:-1], 2)


def reproject_depth(
    depth_src: Tensor,
    K_src: Tensor,
    K_dst: Tensor,
    T_dst_from_src: Tensor,
    out_hw: tuple[int, int],
    eps: float = 1e-6,
) -> Tensor:
    """Render a depth map seen by camera ``src`` from camera ``dst`` (forward splatting).

    Every valid source pixel is back-projected, moved into the destination camera, projected,
    and written to the nearest destination pixel; when several land on one pixel the nearest
    (smallest Z) wins (a z-buffer via ``scatter_reduce(..., "amin")``). Destination pixels that
    receive no point (disocclusions, out of view, or gaps when upsampling) stay 0.

    Args:
        depth_src: source depth in metres, 0 = missing.
        K_src: source intrinsics (for the source resolution), ``(3, 3)`` or ``(B, 3, 3)``.
        K_dst: destination intrinsics (for ``out_hw``), ``(3, 3)`` or ``(B, 3, 3)``.
        T_dst_from_src: rigid transform from source to destination camera,
            ``(4, 4)``/``(3, 4)`` or batched.
        out_hw: destination ``(H', W')``.
        eps: points with ``Z <= eps`` in the destination camera are dropped.

    Returns:
        Destination depth (its Z) in metres. With ``K_src == K_dst``, identity ``T`` and the
        same size, the input is returned exactly.

    Shape:
        depth_src: (B, 1, H, W) -> (B, 1, H', W')
    """
    b = depth_src.shape[0]
    h, w = out_hw
    points = transform_points(depth_to_points(depth_src, K_src), T_dst_from_src).reshape(b, -1, 3)
    uv = project_points(points, K_dst, eps)
    z = points[..., 2]
    col = torch.floor(uv[..., 0] + 0.5)
    row = torch.floor(uv[..., 1] + 0.5)
    valid = (depth_src.reshape(b, -1) > 0) & (z > eps)
    valid = valid & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    # Invalid points go to one extra slot past the end, dropped below: no boolean indexing, so
    # the whole operation stays vectorised (and shape-static for export).
    index = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).long()
    index = index + torch.arange(b, device=index.device)[:, None] * (h * w)
    index = torch.where(valid, index, torch.full_like(index, b * h * w))
    inf = torch.full((b * h * w + 1,), float("inf"), device=z.device, dtype=z.dtype)
    zbuf = inf.scatter_reduce(0, index.reshape(-1), z.reshape(-1), reduce="amin", include_self=True)
    zbuf = zbuf[:-1].reshape(b, 1, h, w)
    return torch.where(torch.isinf(zbuf), torch.zeros_like(zbuf), zbuf)
