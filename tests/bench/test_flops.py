from __future__ import annotations

import pytest
import torch
from torch import nn

from rgbx_fusion.bench.flops import count_flops, count_parameters, parse_size


def test_conv_flops_are_two_per_multiply_add() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    flops = count_flops(conv, torch.randn(1, 8, 10, 12))
    assert flops == 2 * 8 * 16 * 9 * 10 * 12


def test_shared_parameters_count_once() -> None:
    lin = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(lin, lin)) == 20


def test_parse_size() -> None:
    assert parse_size("120x160") == (120, 160)
    with pytest.raises(ValueError, match="120x160"):
        parse_size("120by160")


def test_split_weight_projections_count_every_product() -> None:
    # project_tokens sums per-part products with an in-place baddbmm_, which PyTorch's
    # counter does not list: the count must still equal that of one Linear on the concat.
    from rgbx_fusion.models.fusion.cross_attention import project_tokens

    lin = nn.Linear(12, 5, bias=False)

    class Split(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return project_tokens(lin, a, b)

    a, b = torch.randn(2, 30, 4), torch.randn(2, 30, 8)
    assert count_flops(Split(), a, b) == 2 * 2 * 30 * 12 * 5
