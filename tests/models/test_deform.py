"""Deformable conv and DeformableAlign: exact math on tiny CPU inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rgbx_fusion.models.align import ALIGNERS
from rgbx_fusion.models.align.deform import (
    DeformableAlign,
    ModulatedDeformConv2d,
    modulated_deform_conv2d,
)

H, W = 16, 20


def constant_offsets(batch: int, groups: int, k: int, dy: float, dx: float) -> Tensor:
    offset = torch.zeros(batch, 2 * groups * k * k, H, W, dtype=torch.float64)
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    return offset


@pytest.mark.parametrize(("k", "dilation", "groups"), [(3, 1, 1), (3, 2, 2), (1, 1, 1), (5, 1, 4)])
def test_zero_offset_deform_conv_equals_plain_conv(k: int, dilation: int, groups: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, H, W, dtype=torch.float64)
    weight = torch.randn(6 if groups == 1 else 8, 8 // groups, k, k, dtype=torch.float64)
    bias = torch.randn(weight.shape[0], dtype=torch.float64)
    offset = torch.zeros(2, 2 * 2 * k * k, H, W, dtype=torch.float64)  # two offset groups
    expected = F.conv2d(
        x, weight, bias, padding=dilation * (k // 2), dilation=dilation, groups=groups
    )
    for mask in (None, torch.ones(2, 2 * k * k, H, W, dtype=torch.float64)):
        out = modulated_deform_conv2d(x, offset, mask, weight, bias, dilation=dilation)
        torch.testing.assert_close(out, expected)


def test_masks_scale_each_tap() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 8, H, W, dtype=torch.float64)
    weight = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 18, H, W, dtype=torch.float64)
    half = torch.full((1, 9, H, W), 0.5, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, half, weight)
    torch.testing.assert_close(out, 0.5 * F.conv2d(x, weight, padding=1))


@pytest.mark.parametrize(("dy", "dx"), [(2, -1), (-3, 0), (0, 4), (1, 1)])
def test_integer_shift_is_constant_offsets(dy: int, dx: int) -> None:
    """Constant offsets (dy, dx) on every tap give conv(x) read at (y + dy, x + dx)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, H, W, dtype=torch.float64)
    weight = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    out = modulated_deform_conv2d(x, constant_offsets(1, 1, 3, dy, dx), None, weight)
    conv = F.conv2d(x, weight, padding=1)
    # interior: rows/cols whose shifted 3×3 window stays inside the map
    ys = slice(max(0, -dy) + 1, H - max(0, dy) - 1)
    xs = slice(max(0, -dx) + 1, W - max(0, dx) - 1)
    shifted = torch.roll(conv, shifts=(-dy, -dx), dims=(2, 3))
    torch.testing.assert_close(out[..., ys, xs], shifted[..., ys, xs])


def test_aligner_is_registered() -> None:
    assert ALIGNERS["deform"] is DeformableAlign
    assert DeformableAlign.summary and "\n" not in DeformableAlign.summary


@pytest.mark.parametrize(
    ("c_rgb", "c_aux", "options"),
    [(8, 8, {}), (16, 8, {}), (3, 1, {}), (8, 8, {"groups": 8}), (8, 8, {"kernel_size": 5})],
)
def test_deformable_align_is_identity_at_init(c_rgb: int, c_aux: int, options: dict) -> None:
    torch.manual_seed(0)
    align = DeformableAlign(c_rgb, c_aux, **options)
    rgb, aux = torch.randn(2, c_rgb, H, W), torch.randn(2, c_aux, H, W)
    out_rgb, out_aux = align(rgb, aux)
    assert out_rgb is rgb
    assert torch.equal(out_aux, aux)
    offset = align.last_transform()
    assert offset is not None and offset.shape == (
        2,
        2 * align.dcn.offset_groups * align.dcn.kernel_size**2,
        H,
        W,
    )
    assert not offset.any()


def test_default_offset_groups_divide_aux_channels() -> None:
    assert DeformableAlign(8, 64).dcn.offset_groups == 8
    assert DeformableAlign(8, 12).dcn.offset_groups == 4
    assert DeformableAlign(3, 1).dcn.offset_groups == 1
    assert DeformableAlign(8).dcn.in_channels == 8  # aux_channels defaults to rgb_channels


@pytest.mark.parametrize(("dy", "dx"), [(2, -1), (-1, 3)])
def test_deformable_align_represents_a_known_shift(dy: int, dx: int) -> None:
    """With offsets (dy, dx) in conv_offset's bias, aux is read at (y + dy, x + dx)."""
    torch.manual_seed(0)
    align = DeformableAlign(4, 8)
    with torch.no_grad():
        taps = align.dcn.offset_groups * align.dcn.kernel_size**2
        align.dcn.offset_bias[0 : 2 * taps : 2] = dy
        align.dcn.offset_bias[1 : 2 * taps : 2] = dx
    aux = torch.randn(1, 8, H, W)
    _, out = align(torch.randn(1, 4, H, W), aux)
    ys = slice(max(0, -dy), H - max(0, dy))
    xs = slice(max(0, -dx), W - max(0, dx))
    shifted = torch.roll(aux, shifts=(-dy, -dx), dims=(2, 3))
    torch.testing.assert_close(out[..., ys, xs], shifted[..., ys, xs])


def test_deformable_align_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    align = DeformableAlign(8, 8)
    rgb = torch.randn(1, 8, H, W, requires_grad=True)
    aux = torch.randn(1, 8, H, W, requires_grad=True)
    _, out = align(rgb, aux)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in align.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert aux.grad is not None and aux.grad.abs().sum() > 0


def test_deformable_align_gradcheck_float64() -> None:
    torch.manual_seed(0)
    align = DeformableAlign(2, 2).double()
    with torch.no_grad():  # non-integer offsets, away from bilinear kinks
        align.dcn.conv_offset.weight.normal_(std=0.05)
        align.dcn.offset_bias.uniform_(0.2, 0.3)
    rgb = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    aux = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, a: align(r, a)[1], (rgb, aux), atol=1e-5)


def test_deformable_align_rejects_mismatched_inputs() -> None:
    align = DeformableAlign(8, 4)
    with pytest.raises(ValueError, match="same batch and grid"):
        align(torch.randn(1, 8, H, W), torch.randn(1, 4, H, W - 2))
    with pytest.raises(ValueError, match="channels"):
        align(torch.randn(1, 8, H, W), torch.randn(1, 5, H, W))


def test_modulated_deform_conv_dcnv2_init() -> None:
    dcn = ModulatedDeformConv2d(8, 8, guide_channels=16, offset_groups=8)
    offset, mask = dcn.offsets_and_masks(torch.randn(1, 16, H, W))
    assert offset.shape == (1, 2 * 8 * 9, H, W) and not offset.any()
    assert mask.shape == (1, 8 * 9, H, W) and torch.all(mask == 0.5)
    assert dcn.weight.abs().sum() > 0
    assert dcn(torch.randn(1, 8, H, W), torch.randn(1, 16, H, W)).shape == (1, 8, H, W)


def test_identity_reset_needs_matching_channels_and_unit_masks() -> None:
    with pytest.raises(ValueError, match="mask_scale"):
        ModulatedDeformConv2d(8, 8, guide_channels=8).reset_to_identity()
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        ModulatedDeformConv2d(8, 4, guide_channels=8, mask_scale=2.0).reset_to_identity()
    with pytest.raises(ValueError, match="must divide"):
        ModulatedDeformConv2d(6, 6, guide_channels=8, offset_groups=4)
