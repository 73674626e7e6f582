"""CorrelationAlign: exact identity at initialisation, its building blocks, batches and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rgbx_fusion.alignment_report import flow_from_matrix
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align import ALIGNERS, CorrelationAlign
from rgbx_fusion.models.align.correlation import (
    MODELS,
    fit_motion,
    local_correlation,
    matrix_flow,
    soft_argmax,
    structure_descriptor,
)
from rgbx_fusion.models.align.flow import pixel_grid

SMALL = {"features": 8, "hidden": 8}


def _similarity(deg: float, scale: float, tx: float, ty: float, h: int, w: int) -> Tensor:
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    lin = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2] = lin
    m[:2, 2] = centre - lin @ centre + torch.tensor([tx, ty], dtype=torch.float64)
    return m


def test_registered_for_listings() -> None:
    assert ALIGNERS["correlation"] is CorrelationAlign
    assert CorrelationAlign.summary


CASES = [  # (model, options, (B, C_rgb, C_aux, H, W))
    ("translation", {}, (1, 3, 1, 17, 23)),
    ("similarity", {}, (3, 3, 2, 32, 48)),
    ("affine", {"residual_flow": True}, (2, 3, 1, 24, 40)),
    ("homography", {"levels": 3}, (2, 4, 4, 5, 9)),
    ("similarity", {"descriptor": "raw", "shared": False, "levels": 1}, (2, 3, 1, 20, 28)),
    ("affine", {"stride": 2, "residual_flow": True, "flow_stride": 1}, (1, 8, 8, 1, 1)),
]


@pytest.mark.parametrize(("model", "options", "shape"), CASES, ids=[str(i) for i in range(6)])
def test_identity_at_initialisation(
    model: str, options: dict[str, object], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    b, c1, c2, h, w = shape
    align = CorrelationAlign(c1, c2, model=model, **SMALL, **options)  # type: ignore[arg-type]
    rgb, aux = torch.randn(b, c1, h, w), torch.rand(b, c2, h, w) * 10
    aux[:, :, : h // 3] = 0  # a hole
    out_rgb, out_aux = align(rgb, aux)
    assert out_rgb is rgb
    assert torch.equal(out_aux, aux)  # bit-exact
    flow = align.last_displacement()
    assert flow is not None and flow.shape == (b, 2, h, w) and not flow.requires_grad
    assert flow.abs().max() == 0
    matrix = align.last_transform()
    assert matrix is not None and torch.equal(matrix, torch.eye(3).expand(b, 3, 3))


def test_float64_and_gradients_reach_every_parameter() -> None:
    align = CorrelationAlign(3, 1, model="affine", residual_flow=True, **SMALL).double()
    with torch.no_grad():  # as after some training: gates open, residual flow on
        align.gates.fill_(0.05)
        assert align.flow_net is not None
        align.flow_net[-1].weight.normal_(0.0, 0.01)
    rgb, aux = torch.randn(2, 3, 24, 32, dtype=torch.float64), torch.rand(2, 1, 24, 32).double()
    flows = align.displacements(rgb, aux)
    assert all(f.dtype == torch.float64 and f.shape == (2, 2, 24, 32) for f in flows)
    assert len(flows) == align.levels + 1
    _, out = align(rgb, aux)
    assert out.dtype == torch.float64
    loss = sum(f.square().mean() for f in align.displacements(rgb, aux)) + out.square().mean()
    reg = align.regularization()
    assert reg is not None
    (loss + reg).backward()
    missing = [n for n, p in align.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model"):
        CorrelationAlign(3, 1, model="rigid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="power of two"):
        CorrelationAlign(3, 1, stride=6)
    with pytest.raises(ConfigError, match="shared"):
        CorrelationAlign(3, 1, descriptor="raw", shared=True)
    with pytest.raises(ConfigError, match="freeze"):
        CorrelationAlign(3, 1, freeze=True)
    with pytest.raises(ValueError, match="share batch size"):
        CorrelationAlign(3, 1)(torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 9))


def test_matrix_flow_is_flow_from_matrix() -> None:
    m = _similarity(5.0, 1.08, 3.0, -2.0, 24, 32)[None].repeat(2, 1, 1)
    m[1, 2, :2] = torch.tensor([2e-4, -1e-4])  # a homography
    torch.testing.assert_close(matrix_flow(m, 24, 32), flow_from_matrix(m, (24, 32)).double())


def test_local_correlation_and_soft_argmax_find_a_shift() -> None:
    f = torch.randn(2, 6, 9, 11)
    shifted = torch.roll(f, shifts=(1, -2), dims=(2, 3))  # aux(p + (-2, 1)) = rgb(p)
    cost = local_correlation(f, shifted, 3)
    brute = torch.zeros_like(cost)
    for k, (dy, dx) in enumerate((dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)):
        for y in range(9):
            for x in range(11):
                if 0 <= y + dy < 9 and 0 <= x + dx < 11:
                    brute[:, k, y, x] = (f[:, :, y, x] * shifted[:, :, y + dy, x + dx]).mean(1)
    torch.testing.assert_close(cost, brute)
    match = soft_argmax(torch.softmax(cost * 1000, dim=1), 3)
    torch.testing.assert_close(match[:, :, 4, 5], torch.tensor([[-2.0, 1.0]] * 2))
    uniform = torch.full((1, 49, 2, 2), 1 / 49)
    assert soft_argmax(uniform, 3).abs().max() == 0  # exactly zero, not round-off


@pytest.mark.parametrize("model", MODELS)
def test_fit_motion_recovers_exact_correspondences(model: str) -> None:
    truth = {
        "translation": torch.tensor([[1, 0, 0.1], [0, 1, -0.05], [0, 0, 1]]),
        "similarity": torch.tensor([[0.95, -0.08, 0.1], [0.08, 0.95, -0.05], [0, 0, 1]]),
        "affine": torch.tensor([[1.05, 0.03, 0.1], [-0.06, 0.93, -0.05], [0, 0, 1]]),
        "homography": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.02, -0.015, 1]]),
    }[model].double()[None]
    points = (pixel_grid(7, 9, dtype=torch.float64).flatten(2).transpose(1, 2) - 4) / 4
    moved = points @ truth[:, :2, :2].transpose(1, 2) + truth[:, None, :2, 2]
    moved = moved / (points @ truth[:, 2:, :2].transpose(1, 2) + 1)
    weights = torch.full((1, 63), 1 / 63, dtype=torch.float64)
    fitted = fit_motion(points, moved, weights, model, ridge=1e-9)
    tol = 2e-3 if model == "homography" else 1e-6  # one linearised perspective step
    torch.testing.assert_close(fitted, truth, atol=tol, rtol=0)
    nothing = fit_motion(points, points, torch.zeros_like(weights), model)
    assert torch.equal(nothing, torch.eye(3, dtype=torch.float64)[None])  # no weight: identity


def test_structure_descriptor_ignores_units_contrast_sign_and_holes() -> None:
    torch.manual_seed(1)
    depth = torch.rand(1, 1, 20, 24) * 4 + 1
    a = structure_descriptor(depth)
    torch.testing.assert_close(structure_descriptor(-50 * depth), a)  # units, contrast sign
    assert a.shape == (1, 3, 20, 24) and a.abs().max() <= 1
    flat = torch.full((1, 1, 20, 24), 2.0)
    flat[..., 5:12, 6:14] = 0  # a hole in a flat wall: no edge
    assert structure_descriptor(flat).abs().max() == 0
