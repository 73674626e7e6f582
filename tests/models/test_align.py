"""Explicit aligners: exact identity at init, conventions, gradients, misregistration recovery."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine, warp_perspective
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align import (
    ALIGNERS,
    AffineAlign,
    AlignBase,
    DepthReprojection,
    FlowAlign,
    HomographyAlign,
    TPSAlign,
)
from rgbx_fusion.models.align.affine import matrix_to_pixels
from rgbx_fusion.models.align.flow import flow_smoothness, pixel_grid, warp_by_flow

MINE = ("affine", "homography", "tps", "flow", "reproject")
BUILDERS: dict[str, Callable[[int, int], AlignBase]] = {
    "affine": lambda c1, c2: AffineAlign(c1, c2),
    "affine-deep-head": lambda c1, c2: AffineAlign(c1, c2, head_blocks=4),
    "homography": lambda c1, c2: HomographyAlign(c1, c2),
    "tps": lambda c1, c2: TPSAlign(c1, c2, grid_size=3, bending_weight=0.1),
    "flow": lambda c1, c2: FlowAlign(c1, c2, levels=3),
    "flow-stride2": lambda c1, c2: FlowAlign(c1, c2, levels=2, finest_stride=2),
    "affine-free": lambda c1, c2: AffineAlign(c1, c2, mode="free"),
    "homography-free": lambda c1, c2: HomographyAlign(c1, c2, mode="free"),
    "tps-free": lambda c1, c2: TPSAlign(c1, c2, mode="free"),
    "flow-free": lambda c1, c2: FlowAlign(c1, c2, mode="free", levels=2),
    "reproject": lambda c1, c2: DepthReprojection(c1, 1),
}


def test_registry_lists_every_aligner_with_a_summary() -> None:
    for name in MINE:
        assert issubclass(ALIGNERS[name], AlignBase)
        assert ALIGNERS[name].summary
        ALIGNERS[name](3, 1)  # defaults are enough to build one


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("shape", [(1, 3, 2, 17, 23), (2, 8, 5, 32, 48), (3, 4, 1, 9, 40)])
def test_identity_at_initialisation(name: str, shape: tuple[int, ...]) -> None:
    b, c1, c2, h, w = shape
    c2 = 1 if name == "reproject" else c2
    rgb, aux = torch.rand(b, c1, h, w), torch.rand(b, c2, h, w) * 10
    out_rgb, out_aux = BUILDERS[name](c1, c2)(rgb, aux)
    assert out_rgb is rgb
    assert torch.equal(out_aux, aux)  # bit-exact, not just close


def test_warp_by_flow_matches_grid_sample_align_corners_false() -> None:
    image = torch.rand(2, 3, 13, 17, dtype=torch.float64)
    flow = torch.randn(2, 2, 13, 17, dtype=torch.float64) * 4
    pos = pixel_grid(13, 17, dtype=torch.float64) + flow
    size = torch.tensor([17.0, 13.0], dtype=torch.float64).view(1, 2, 1, 1)
    grid = ((2 * pos + 1) / size - 1).permute(0, 2, 3, 1)
    ref = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(warp_by_flow(image, flow), ref)


def _rot_scale(deg: float, scale: float, tx: float, ty: float) -> Tensor:
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    return torch.tensor([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def test_affine_theta_is_affine_grid_theta_and_kornia_inverse() -> None:
    aux = gaussian_blur2d(torch.rand(1, 2, 24, 32), (7, 7), (2.0, 2.0))
    theta = _rot_scale(4.0, 0.95, 0.1, -0.05)
    aligner = AffineAlign(3, 2, mode="free")
    aligner.set_matrix(theta)
    out = aligner(torch.zeros(1, 3, 24, 32), aux)[1]
    grid = F.affine_grid(theta[None, :2], [1, 2, 24, 32], align_corners=False)
    torch.testing.assert_close(out, F.grid_sample(aux, grid, align_corners=False))
    src_to_dst = torch.linalg.inv(matrix_to_pixels(theta[None], 24, 32))[:, :2]
    ref = warp_affine(aux, src_to_dst, (24, 32), align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(aligner.last_transform(), theta[None, :2])


def test_homography_matches_kornia_warp_perspective() -> None:
    aux = gaussian_blur2d(torch.rand(1, 1, 24, 32), (7, 7), (2.0, 2.0))
    hom = _rot_scale(-3.0, 1.02, -0.04, 0.08)
    hom[2, :2] = torch.tensor([0.05, -0.03])
    aligner = HomographyAlign(3, 1, mode="free")
    aligner.set_matrix(hom)
    out = aligner(torch.zeros(1, 3, 24, 32), aux)[1]
    src_to_dst = torch.linalg.inv(matrix_to_pixels(hom[None], 24, 32))
    ref = warp_perspective(aux, src_to_dst, (24, 32), align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_tps_interpolates_offsets_and_contains_affine_maps() -> None:
    h, w = 21, 31  # odd: the centre control point sits on a pixel centre
    tps = TPSAlign(1, 1, grid_size=3, mode="free")
    offsets = torch.zeros(9, 2)
    offsets[4] = torch.tensor([0.1, -0.2])
    tps.set_offsets(offsets)
    flow = tps.displacement(torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w))
    torch.testing.assert_close(flow[0, :, 10, 15], torch.tensor([0.1 * w / 2, -0.2 * h / 2]))
    theta = _rot_scale(5.0, 1.1, 0.2, -0.1)
    tps.set_offsets(tps.centres @ theta[:2, :2].T + theta[:2, 2] - tps.centres)
    affine = AffineAlign(1, 1, mode="free")
    affine.set_matrix(theta)
    x = torch.zeros(1, 1, h, w)
    torch.testing.assert_close(tps.displacement(x, x), affine.displacement(x, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["affine", "homography", "tps", "flow"])
def test_gradient_reaches_the_parameters_that_matter(name: str) -> None:
    aligner = BUILDERS[name](3, 2)
    rgb, aux = (
        torch.rand(2, 3, 20, 28),
        gaussian_blur2d(torch.rand(2, 2, 20, 28), (5, 5), (1.5, 1.5)),
    )
    target = torch.rand(2, 2, 20, 28)

    def backward() -> dict[str, bool]:
        aligner.zero_grad()
        out = aligner(rgb, aux)[1]
        loss = (out - target).square().mean()
        reg = aligner.regularization()
        (loss if reg is None else loss + reg).backward()
        return {
            n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in aligner.named_parameters()
        }

    at_init = backward()  # only the zero-initialised last layers can move at first
    last = [n for n in at_init if n.startswith(("head.fc", "nets.0.5", "nets.1.5", "nets.2.5"))]
    assert last and all(at_init[n] for n in last), at_init
    with torch.no_grad():
        for n, p in aligner.named_parameters():
            if n in last:
                p.normal_(0, 1e-2)
    assert all(backward().values()), "every parameter gets a gradient once off the identity"


@pytest.mark.parametrize("name", ["affine-free", "homography-free", "tps-free", "flow-free"])
def test_free_mode_parameters_get_gradient_at_init(name: str) -> None:
    aligner = BUILDERS[name](3, 1)
    aux = gaussian_blur2d(torch.rand(1, 1, 20, 28), (5, 5), (1.5, 1.5))
    out = aligner(torch.rand(1, 3, 20, 28), aux)[1]
    (out - torch.rand_like(out)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())


def test_regularisers() -> None:
    x = pixel_grid(16, 20).float()
    affine_flow = 0.1 * x.flip(1) + 0.05 * x
    assert flow_smoothness(torch.ones(1, 2, 16, 20)) == 0
    assert flow_smoothness(affine_flow, order=1) > 0
    assert flow_smoothness(affine_flow, order=2).abs() < 1e-6
    flow = FlowAlign(1, 1, mode="free", smoothness_weight=0.5)
    rgb = aux = torch.rand(1, 1, 16, 20)
    flow(rgb, aux)
    reg = flow.regularization()
    assert reg is not None and reg == 0 and reg.requires_grad
    assert flow.last_transform() is not None and flow.last_transform().shape == (1, 2, 16, 20)
    tps = TPSAlign(1, 1, grid_size=3, mode="free", bending_weight=1.0)
    tps.set_offsets(0.1 * tps.centres)  # an affine field: no bending
    tps(rgb, aux)
    assert tps.regularization() is not None and tps.regularization().abs() < 1e-5
    tps.set_offsets(torch.randn(9, 2) * 0.1)
    tps(rgb, aux)
    assert tps.regularization() is not None and tps.regularization() > 1e-4


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="share batch size"):
        AffineAlign(3, 1)(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ConfigError, match="mode"):
        FlowAlign(3, 1, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="power of two"):
        FlowAlign(3, 1, finest_stride=3)
    with pytest.raises(ConfigError, match="1-channel depth"):
        DepthReprojection(3, 3)
    with pytest.raises(ConfigError, match="needs mode='free'"):
        AffineAlign(3, 1).set_matrix(torch.eye(3))


def test_depth_reprojection_identity_default_and_batched_calibration() -> None:
    K = torch.tensor([[518.9, 0.0, 325.6], [0.0, 519.5, 253.7], [0.0, 0.0, 1.0]]) / 4
    K[2, 2] = 1.0
    depth = torch.rand(2, 1, 120, 160) * 4 + 0.5
    depth[:, :, 10:20, 30:40] = 0  # missing stays missing
    rgb = torch.rand(2, 3, 120, 160)
    assert torch.equal(DepthReprojection(3, 1, K, K, torch.eye(4))(rgb, depth)[1], depth)
    # uncalibrated: a resize onto the rgb grid; 2× down, every 2×2 block lands on one pixel
    # (u -> u/2 - 1/4) and the z-buffer keeps its nearest valid depth
    down = DepthReprojection()(torch.rand(2, 3, 60, 80), depth)[1]
    valid = torch.where(depth > 0, depth, torch.full_like(depth, math.inf))
    nearest = -F.max_pool2d(-valid, 2)
    assert torch.equal(down, torch.where(nearest.isinf(), torch.zeros_like(nearest), nearest))
    # per-sample calibration: sample 1 sees a fronto-parallel wall through a 10 cm baseline
    wall = torch.full((2, 1, 120, 160), 2.0)
    t = torch.eye(4).repeat(2, 1, 1)
    t[1, 0, 3] = -0.1
    aligner = DepthReprojection()
    aligner.set_calibration(K.expand(2, 3, 3), K.expand(2, 3, 3), t)
    out = aligner(rgb, wall)[1]
    assert torch.equal(out[0], wall[0])
    shift = K[0, 0].item() * 0.1 / 2.0  # disparity in px = fx * baseline / Z
    assert (out[1, 0, :, : math.floor(160 - shift) - 1] == 2.0).all()
    assert (out[1, 0, :, math.ceil(160 - shift) + 1 :] == 0).all()
    assert aligner.last_transform() is not None and aligner.last_transform().shape == (2, 4, 4)


# --- recovery of a known misregistration (8 px shift + 3° rotation + 5% scale) -------------


def _true_map(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Return (rgb pixel → aux pixel map T(p), inverse map T⁻¹(p)) on the pixel grid."""
    a = _rot_scale(3.0, 1.05, 0.0, 0.0)[:2, :2]
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2]).view(1, 2, 1, 1)
    t = 8.0 * torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]).view(1, 2, 1, 1)
    p = pixel_grid(h, w)
    forward = torch.einsum("ij,bjhw->bihw", a, p - c) + c + t
    inverse = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(a), p - c - t) + c
    return forward, inverse


def _scene(x: Tensor, y: Tensor) -> Tensor:
    """Depth (m) of a tilted wall with a bump, a box, a disk and a wedge in front of it."""
    d = 3.0 + 0.008 * x + 0.004 * y + 0.3 * torch.exp(-((x - 90) ** 2 + (y - 60) ** 2) / 300)
    d = torch.where((x > 20) & (x < 55) & (y > 15) & (y < 50), 1.6 + 0.003 * x, d)
    d = torch.where((x - 95) ** 2 + (y - 30) ** 2 < 225, 2.2 - 0.002 * y, d)
    return torch.where((y > 60) & (y < 85) & (x > 30) & (x - 30 < (y - 60) * 1.5), 2.0, d)


def _render(points: Tensor, ss: int = 8) -> Tensor:
    """Box-filtered (ss×ss supersampled) render of :func:`_scene` at pixel positions."""
    offsets = [(i + 0.5) / ss - 0.5 for i in range(ss)]
    acc = sum(_scene(points[:, 0] + ox, points[:, 1] + oy) for oy in offsets for ox in offsets)
    return (acc / ss**2)[:, None]


def _pair(kind: str, nyu: Path | None) -> tuple[Tensor, Tensor]:
    """(depth on the rgb grid, misregistered aux) with aux(T(p)) = depth(p)."""
    if kind == "synthetic":
        h, w = 96, 128
        return _render(pixel_grid(h, w)), _render(_true_map(h, w)[1])
    assert nyu is not None
    full = torch.from_numpy(np.load(nyu / "Depth" / "0.npy")).float()[None, None]
    depth = F.interpolate(full, size=(120, 160), mode="area")
    return depth, warp_by_flow(depth, _true_map(120, 160)[1] - pixel_grid(120, 160))


def _blur(x: Tensor, sigma: float) -> Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(x, (k, k), (sigma, sigma), "replicate") if sigma > 0 else x


def _fit(aligner: AlignBase, depth: Tensor, aux: Tensor, margin: int) -> None:
    """Coarse-to-fine L-BFGS on a Gaussian pyramid; normalised MSE over the interior crop."""
    h, w = depth.shape[-2:]
    crop = (..., slice(margin, h - margin), slice(margin, w - margin))
    opt = torch.optim.LBFGS(
        aligner.parameters(), max_iter=40, line_search_fn="strong_wolfe", tolerance_grad=1e-12
    )

    def objective(target: Tensor, source: Tensor) -> Callable[[], Tensor]:
        scale = target[crop].var()

        def closure() -> Tensor:
            opt.zero_grad()
            loss = (aligner(target, source)[1] - target)[crop].square().mean() / scale
            reg = aligner.regularization()
            loss = loss if reg is None else loss + reg
            loss.backward()
            return loss

        return closure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: one thread is faster, and robust to load
    try:
        for sigma in (6.0, 3.0, 1.5, 0.0):
            opt.step(objective(_blur(depth, sigma), _blur(aux, sigma)))
    finally:
        torch.set_num_threads(threads)


Fittable = AffineAlign | HomographyAlign | TPSAlign | FlowAlign
RECOVER: dict[str, Callable[[], Fittable]] = {
    "affine": lambda: AffineAlign(1, 1, mode="free"),
    "homography": lambda: HomographyAlign(1, 1, mode="free"),
    "tps": lambda: TPSAlign(1, 1, grid_size=4, mode="free", bending_weight=0.05),
    # 2nd-order smoothness: zero for the (affine) truth; plain TV would bias rotation/scale.
    "flow": lambda: FlowAlign(
        1, 1, mode="free", levels=2, free_grid=(4, 4), smoothness_weight=0.1, smoothness_order=2
    ),
}


@pytest.mark.parametrize("kind", ["synthetic", "real"])
@pytest.mark.parametrize("name", sorted(RECOVER))
def test_known_misregistration_is_recovered(
    name: str, kind: str, request: pytest.FixtureRequest
) -> None:
    nyu = request.getfixturevalue("nyu_sample") if kind == "real" else None
    depth, aux = _pair(kind, nyu)
    h, w = depth.shape[-2:]
    margin = 20 if kind == "synthetic" else 24  # > the largest true displacement (~18 px)
    aligner = RECOVER[name]()
    truth = _true_map(h, w)[0][..., margin : h - margin, margin : w - margin]

    def end_point_error() -> float:
        with torch.no_grad():
            moved = pixel_grid(h, w) + aligner.displacement(depth, aux)
        return (
            (moved[..., margin : h - margin, margin : w - margin] - truth).norm(dim=1).mean().item()
        )

    before = end_point_error()
    _fit(aligner, depth, aux, margin)
    after = end_point_error()
    print(f"{name}/{kind}: mean end-point error {before:.2f} px -> {after:.3f} px")
    assert before > 5.0
    assert after <= 0.5
