"""Shared blocks: ConvNormAct's names and padding, resize_to's sizes and modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rgbx_fusion.models.layers import ConvNormAct, resize_to


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (3, 1), (3, 6)])
def test_conv_norm_act_keeps_the_size(kernel_size: int, dilation: int) -> None:
    block = ConvNormAct(3, 5, kernel_size, dilation)
    assert block(torch.randn(2, 3, 11, 6)).shape == (2, 5, 11, 6)
    assert block.conv.bias is None
    assert [k.split(".")[0] for k in block.state_dict()][:2] == ["conv", "bn"]


def test_resize_to_is_a_no_op_at_the_same_size() -> None:
    x = torch.randn(1, 2, 5, 7)
    assert resize_to(x, torch.empty(3, 9, 5, 7)) is x


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resize_to_matches_interpolate(mode: str) -> None:
    x, ref = torch.randn(1, 2, 5, 7), torch.empty(1, 1, 13, 10)
    corners = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(x, size=(13, 10), mode=mode, **corners)
    torch.testing.assert_close(resize_to(x, ref, mode), expected, rtol=0, atol=0)
