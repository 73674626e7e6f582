"""Multi-scale + flip test-time augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.tta import describe_mode, multiscale_probabilities, parse_scales


def _pointwise(rgb: Tensor, aux: Tensor) -> Tensor:
    """Per-pixel network: commutes with flips."""
    return torch.cat([rgb, aux], dim=1)[:, :3] * 2.0


def _ramp(rgb: Tensor, aux: Tensor) -> Tensor:
    """Position-dependent network: a left-to-right ramp added to class 0."""
    out = rgb.clone()
    out[:, 0] += torch.linspace(-3, 3, rgb.shape[-1])
    return out


def test_single_scale_is_a_plain_softmax() -> None:
    rgb, aux = torch.randn(2, 3, 8, 10), torch.randn(2, 1, 8, 10)
    probs = multiscale_probabilities(_ramp, rgb, aux)
    torch.testing.assert_close(probs, _ramp(rgb, aux).softmax(1))
    flipped = multiscale_probabilities(_pointwise, rgb, aux, flip=True)
    torch.testing.assert_close(flipped, _pointwise(rgb, aux).softmax(1))


def test_flip_and_scales_average_probabilities() -> None:
    rgb, aux = torch.randn(1, 3, 8, 10), torch.randn(1, 1, 8, 10)
    plain = _ramp(rgb, aux).softmax(1)
    mirrored = _ramp(rgb.flip(-1), aux.flip(-1)).flip(-1).softmax(1)
    torch.testing.assert_close(
        multiscale_probabilities(_ramp, rgb, aux, flip=True), (plain + mirrored) / 2
    )
    small = F.interpolate(rgb, size=(4, 5), mode="bilinear", align_corners=False)
    back = F.interpolate(_ramp(small, aux), size=(8, 10), mode="bilinear", align_corners=False)
    got = multiscale_probabilities(_ramp, rgb, aux, scales=(0.5, 1.0))
    torch.testing.assert_close(got, (back.softmax(1) + plain) / 2)
    assert torch.allclose(got.sum(1), torch.ones(1, 8, 10))


def test_scale_parsing_and_mode_names() -> None:
    assert parse_scales("0.5,0.75,1,1.25,1.5") == (0.5, 0.75, 1.0, 1.25, 1.5)
    assert parse_scales(None) == (1.0,)
    assert describe_mode((1.0,), False) == "single-scale"
    assert describe_mode((0.5, 1.0), True) == "multi-scale 0.5,1 + flip"
    for bad in ("0.5,x", "0,1", ""):
        with pytest.raises(ConfigError):
            parse_scales(bad)
