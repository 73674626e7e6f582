"""Pinhole helpers and z-buffered depth reprojection against closed-form geometry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rgbx_fusion.geometry.camera import (
    as_rigid,
    depth_to_points,
    project_points,
    reproject_depth,
    transform_points,
)

NYU_K = torch.tensor([[518.8579, 0.0, 325.5824], [0.0, 519.4696, 253.7362], [0.0, 0.0, 1.0]])


def _intrinsics(fx: float, fy: float, cx: float, cy: float) -> Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _pose(deg_y: float, t: tuple[float, float, float]) -> Tensor:
    """``T_dst_from_src``: rotation about the camera Y axis, then translation (metres)."""
    c, s = math.cos(math.radians(deg_y)), math.sin(math.radians(deg_y))
    return torch.tensor(
        [[c, 0.0, s, t[0]], [0.0, 1.0, 0.0, t[1]], [-s, 0.0, c, t[2]], [0, 0, 0, 1.0]]
    )


def _pixels(h: int, w: int) -> Tensor:
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack((u, v), dim=-1)  # (H, W, 2) as (u, v)


def test_back_projection_then_projection_returns_to_the_pixel_grid() -> None:
    depth = torch.rand(2, 1, 48, 64) * 5 + 0.3
    K = torch.stack((NYU_K / 10, NYU_K / 8))
    K[:, 2, 2] = 1.0
    points = depth_to_points(depth, K)
    assert points.shape == (2, 48, 64, 3)
    assert torch.equal(points[..., 2], depth[:, 0])  # Z is the depth, exactly
    uv = project_points(points, K)
    torch.testing.assert_close(uv, _pixels(48, 64).expand(2, -1, -1, -1), atol=1e-3, rtol=0)


def test_transform_points_applies_R_then_t_in_any_layout() -> None:
    T = _pose(10.0, (0.1, -0.2, 0.3))
    points = torch.randn(2, 5, 7, 3)
    expected = points @ T[:3, :3].T + T[:3, 3]
    torch.testing.assert_close(transform_points(points, T), expected)
    torch.testing.assert_close(transform_points(points, T[:3]), expected)
    torch.testing.assert_close(transform_points(points, T.expand(2, 4, 4)), expected)
    assert torch.equal(as_rigid(T[:3]), T)
    assert torch.equal(transform_points(points, torch.eye(4)), points)


def test_identity_calibration_returns_the_depth_exactly() -> None:
    depth = torch.rand(2, 1, 120, 160) * 6 + 0.5
    depth[0, 0, 30:50, 70:90] = 0  # holes stay holes
    K = NYU_K / 4
    K[2, 2] = 1.0
    assert torch.equal(reproject_depth(depth, K, K, torch.eye(4), (120, 160)), depth)


def test_tilted_plane_matches_the_closed_form_depth_in_the_rgb_camera() -> None:
    h_src, w_src, h_dst, w_dst = 192, 256, 120, 160
    k_src = _intrinsics(200.0, 200.0, 127.5, 95.5)  # depth camera: wider and denser than rgb
    k_dst = _intrinsics(140.0, 141.0, 80.2, 59.7)  # rgb camera
    T = _pose(2.0, (-0.05, 0.01, 0.02))
    n, d = torch.tensor([0.25, -0.15, 1.0]), 2.5  # plane n·P = d in the depth camera
    rays = (
        torch.cat((_pixels(h_src, w_src), torch.ones(h_src, w_src, 1)), -1)
        @ torch.linalg.inv(k_src).T
    )
    depth = (d / (rays @ n))[None, None]
    # The same plane in the rgb frame: P = Rᵀ(P' − t)  ⇒  (R n)·P' = d + (R n)·t.
    n_dst = T[:3, :3] @ n
    d_dst = d + n_dst @ T[:3, 3]

    def closed_form(uv: Tensor) -> Tensor:
        ray = torch.cat((uv, torch.ones_like(uv[..., :1])), -1) @ torch.linalg.inv(k_dst).T
        return d_dst / (ray @ n_dst)

    # 1) every point lands where the plane says: its Z equals the closed form at its (u, v)
    moved = transform_points(depth_to_points(depth, k_src), T)
    landed = project_points(moved, k_dst)
    torch.testing.assert_close(moved[..., 2], closed_form(landed), atol=1e-4, rtol=0)
    # 2) the z-buffered image: the winner of pixel q landed within half a pixel of q
    out = reproject_depth(depth, k_src, k_dst, T, (h_dst, w_dst))[0, 0]
    truth = closed_form(_pixels(h_dst, w_dst))
    grad_v, grad_u = torch.gradient(truth)
    hit = out > 0
    err_px = (out - truth).abs() / (grad_u.abs() + grad_v.abs())
    assert hit.float().mean() > 0.9
    assert err_px[hit].max() <= 0.5 + 1e-2, err_px[hit].max()
    print(
        f"tilted plane: landing error mean {err_px[hit].mean():.3f} px, max {err_px[hit].max():.3f}"
    )


def test_z_buffer_keeps_the_nearest_surface_and_leaves_disocclusions_empty() -> None:
    K = _intrinsics(100.0, 100.0, 49.5, 19.5)
    depth = torch.full((1, 1, 40, 100), 3.0)  # a wall at 3 m ...
    depth[..., 40:60] = 1.0  # ... and a box at 1 m in front of it (columns 40..59)
    T = _pose(0.0, (-0.1, 0.0, 0.0))  # rgb camera 10 cm to the right: disparity = fx b / Z
    out = reproject_depth(depth, K, K, T, (40, 100))[0, 0]
    # box: 10 px shift -> columns 30..49; it hides the wall that also lands on 30..36
    assert (out[:, 30:50] == 1.0).all()
    # wall: 3.33 px shift; columns 0..29 and 57..96 see it, 50..56 were hidden by the box
    assert (out[:, :30] == 3.0).all() and (out[:, 57:97] == 3.0).all()
    assert (out[:, 50:57] == 0).all() and (out[:, 97:] == 0).all()


def test_batched_calibration_matches_per_sample_calls_and_carries_gradient() -> None:
    depth = (torch.rand(3, 1, 30, 40) * 3 + 1).requires_grad_()
    K = torch.stack([_intrinsics(40.0 + 5 * i, 41.0, 19.5, 14.5) for i in range(3)])
    T = torch.stack([_pose(3.0 * i, (-0.05 * i, 0.0, 0.01)) for i in range(3)])
    out = reproject_depth(depth, K, K, T, (30, 40))
    for i in range(3):
        single = reproject_depth(depth[i : i + 1], K[i], K[i], T[i], (30, 40))
        assert torch.equal(out[i : i + 1], single)
    out.sum().backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0


def test_depth_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        depth_to_points(torch.rand(2, 10, 10), NYU_K)
