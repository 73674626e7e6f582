"""N-stream fusions: absent streams masked (never read), renormalisation, pairwise modes."""

from __future__ import annotations

import importlib
import pkgutil
from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import rgbx_fusion.models.fusion as fusion_pkg
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.fusion import (
    AddFusion,
    AFFFusion,
    ConcatFusion,
    MaxFusion,
    WeightedSumFusion,
)
from rgbx_fusion.models.fusion.multi import (
    MultiChannelAttentionFusion,
    MultiConcatFusion,
    MultiFusionBase,
    MultiGatedFusion,
    MultiMaxFusion,
    MultiMeanFusion,
    MultiSumFusion,
    MultiWeightedFusion,
    masked_softmax,
)
from rgbx_fusion.models.fusion.multi_pairwise import (
    MULTI_FUSIONS,
    PairwiseAggregateFusion,
    PairwiseEachFusion,
    build_multi_fusion,
    is_pairwise_factory,
)

C, N = 8, 3
PRESENT = torch.tensor([[True, True, True], [True, False, True], [True, True, False]])


def build(cls: type[MultiFusionBase], channels: int = C, streams: int = N) -> MultiFusionBase:
    if cls in (PairwiseEachFusion, PairwiseAggregateFusion):
        return cls(channels, streams, AFFFusion)  # type: ignore[call-arg]
    return cls(channels, streams)


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Non-zero values everywhere (zero-initialised gates and absence biases included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module.eval()


def maps(batch: int = 3, n: int = N, size: tuple[int, int] = (5, 6)) -> list[Tensor]:
    return [torch.randn(batch, C, *size) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(MULTI_FUSIONS))
def test_absent_values_are_never_read(name: str) -> None:
    """Garbage (even NaN and inf) in an absent stream leaves the output unchanged."""
    block = randomise(build(MULTI_FUSIONS[name]))
    xs = maps()
    garbage = [x.clone() for x in xs]
    garbage[1][1] = float("nan")
    garbage[2][2] = float("inf")
    with torch.no_grad():
        ref, out = block(xs, PRESENT), block(garbage, PRESENT)
    assert out.shape == (3, C, 5, 6)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


CONVEX = ["mean", "weighted", "max", "gated", "channel_attention"]


@pytest.mark.parametrize("name", CONVEX)
def test_identical_present_streams_pass_through(name: str) -> None:
    """Weights renormalised over the present streams: equal present maps X give back X."""
    block = randomise(build(MULTI_FUSIONS[name]))
    x = torch.randn(3, C, 5, 6)
    xs = [x, x.clone(), x.clone()]
    xs[1][1] = torch.randn(C, 5, 6)  # absent for sample 1
    xs[2][2] = torch.randn(C, 5, 6)  # absent for sample 2
    with torch.no_grad():
        torch.testing.assert_close(block(xs, PRESENT), x)


def test_sum_is_renormalised_and_equals_add_when_all_present() -> None:
    xs = maps(n=2)
    both = torch.ones(3, 2, dtype=torch.bool)
    out = MultiSumFusion(C, 2)(xs, both)
    assert torch.equal(out, AddFusion(C)(*xs))  # bit for bit
    xs3 = maps()
    out3 = MultiSumFusion(C, N)(xs3, PRESENT)
    torch.testing.assert_close(out3[1], 1.5 * (xs3[0][1] + xs3[2][1]))
    torch.testing.assert_close(MultiMeanFusion(C, N)(xs3, PRESENT)[2], (xs3[0][2] + xs3[1][2]) / 2)


def test_two_stream_forms_equal_the_pairwise_fusions() -> None:
    xs = maps(n=2)
    weighted = randomise(MultiWeightedFusion(C, 2, per_channel=True))
    pair = WeightedSumFusion(C, per_channel=True)
    pair.logits.data.copy_(weighted.logits.data)
    concat = randomise(MultiConcatFusion(C, 2))
    pair_concat = ConcatFusion(C).eval()
    pair_concat.load_state_dict(
        {k: v for k, v in concat.state_dict().items() if k != "absent_bias"}
    )
    with torch.no_grad():
        torch.testing.assert_close(weighted(xs), pair(*xs))
        torch.testing.assert_close(concat(xs), pair_concat(*xs))
        torch.testing.assert_close(MultiMaxFusion(C, 2)(xs), MaxFusion(C)(*xs))


def test_masked_weighted_and_gated_equal_the_present_only_result() -> None:
    """Stream 2 absent = a two-stream block over streams 0 and 1 (absence bias folded in)."""
    xs = maps()
    absent2 = torch.tensor([[True, True, False]] * 3)
    weighted = randomise(MultiWeightedFusion(C, N))
    small = MultiWeightedFusion(C, 2)
    small.logits.data.copy_(weighted.logits.data[:2])
    gated = randomise(MultiGatedFusion(C, N))
    small_gated = MultiGatedFusion(C, 2)
    with torch.no_grad():
        small_gated.gate.conv.weight.copy_(gated.gate.conv.weight[:2, : 2 * C])
        small_gated.gate.conv.bias.copy_(gated.gate.conv.bias[:2] + gated.gate.absent_bias[2, :2])  # type: ignore[union-attr]
        small_gated.gate.absent_bias.copy_(gated.gate.absent_bias[:2, :2])
        torch.testing.assert_close(weighted(xs, absent2), small(xs[:2]))
        torch.testing.assert_close(gated(xs, absent2), small_gated(xs[:2]))
        # concat: the absent slot contributes its absence bias and nothing else
        concat = randomise(MultiConcatFusion(C, N))
        conv, bn = concat.proj[0], concat.proj[1]
        y = F.conv2d(torch.cat(xs[:2], 1), conv.weight[:, : 2 * C])
        expected = torch.relu(bn(y + concat.absent_bias[2].view(1, -1, 1, 1)))
        torch.testing.assert_close(concat(xs, absent2), expected)


def test_max_ignores_absent_streams() -> None:
    xs = maps()
    xs[2] = xs[2] + 100.0  # would win everywhere if it were read
    out = MultiMaxFusion(C, N)(xs, PRESENT)
    torch.testing.assert_close(out[1], torch.maximum(xs[0][1], xs[2][1]))
    torch.testing.assert_close(out[2], torch.maximum(xs[0][2], xs[1][2]))


def test_masked_softmax_with_nothing_present_is_zero_with_finite_gradients() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    w = masked_softmax(logits, mask, dim=1)
    assert torch.equal(w[0], torch.zeros(3))
    torch.testing.assert_close(w[1], torch.softmax(logits[1, [0, 2]], 0)[[0, 0, 1]] * mask[1])
    (w * torch.randn(2, 3)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_pairwise_each_and_aggregate() -> None:
    torch.manual_seed(0)
    rgb, d, t = maps()
    each = randomise(PairwiseEachFusion(C, N, AFFFusion))
    agg = randomise(PairwiseAggregateFusion(C, N, AFFFusion))
    f1, f2, f = each.pairs[0], each.pairs[1], agg.fusion
    with torch.no_grad():
        out_each, out_agg = each([rgb, d, t], PRESENT), agg([rgb, d, t], PRESENT)
        # all present: mean of the pairs / one fusion with the mean of the aux streams
        torch.testing.assert_close(out_each[:1], ((f1(rgb, d) + f2(rgb, t)) / 2)[:1])
        torch.testing.assert_close(out_agg[:1], f(rgb, (d + t) / 2)[:1])
        # one aux absent: the other one alone
        torch.testing.assert_close(out_each[1:2], f2(rgb, t)[1:2])
        torch.testing.assert_close(out_agg[2:], f(rgb, d)[2:])
        # no aux present: rgb stands in as the partner
        none = torch.tensor([[True, False, False]] * 3)
        torch.testing.assert_close(each([rgb, d, t], none), (f1(rgb, rgb) + f2(rgb, rgb)) / 2)
        torch.testing.assert_close(agg([rgb, d, t], none), f(rgb, rgb))


def test_weighted_aggregate_softmax_over_present_aux() -> None:
    rgb, d, t = maps()
    agg = PairwiseAggregateFusion(C, N, AddFusion, aggregate="weighted")
    assert agg.logits is not None
    agg.logits.data.copy_(torch.tensor([0.0, 1.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    out = agg([rgb, d, t], PRESENT)
    torch.testing.assert_close(out[0], rgb[0] + w[0] * d[0] + w[1] * t[0])
    torch.testing.assert_close(out[1], rgb[1] + t[1])


def test_pairwise_each_skips_a_pair_absent_for_the_whole_batch() -> None:
    each = PairwiseEachFusion(C, N, AddFusion)
    calls: list[int] = []
    each.pairs[1].register_forward_hook(lambda *_: calls.append(1))
    no_thermal = torch.tensor([[True, True, False]] * 3)
    each(maps(), no_thermal)
    assert calls == []
    each(maps(), PRESENT)
    assert calls == [1]


@pytest.mark.parametrize("name", sorted(MULTI_FUSIONS))
def test_gradcheck_with_absent_streams(name: str) -> None:
    block = build(MULTI_FUSIONS[name], channels=4).double().eval()
    xs = [torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(N)]
    assert torch.autograd.gradcheck(lambda *t: block(list(t), PRESENT), xs, eps=1e-6, atol=1e-5)


def test_build_multi_fusion_tells_the_factory_kinds_apart() -> None:
    assert is_pairwise_factory(AFFFusion) and is_pairwise_factory(partial(AFFFusion, reduction=2))
    assert not is_pairwise_factory(MultiGatedFusion)
    assert not is_pairwise_factory(partial(MultiWeightedFusion, per_channel=True))
    assert is_pairwise_factory(lambda c: AddFusion(c))
    assert isinstance(build_multi_fusion(AFFFusion, C, N, "each"), PairwiseEachFusion)
    assert isinstance(build_multi_fusion(AFFFusion, C, N, "aggregate"), PairwiseAggregateFusion)
    assert isinstance(build_multi_fusion(MultiMaxFusion, C, N), MultiMaxFusion)
    bad: Any = lambda c, n: torch.nn.Identity()  # noqa: E731
    with pytest.raises(ConfigError, match="MultiFusionBase"):
        build_multi_fusion(bad, C, N)
    with pytest.raises(ConfigError, match="channels"):
        build_multi_fusion(lambda c, n: MultiConcatFusion(4, n), C, N)


def test_multi_fusions_lists_every_n_stream_operator() -> None:
    for info in pkgutil.walk_packages(fusion_pkg.__path__, fusion_pkg.__name__ + "."):
        importlib.import_module(info.name)

    def subclasses(cls: type) -> set[type]:
        return {s for sub in cls.__subclasses__() for s in (sub, *subclasses(sub))}

    ours = {c for c in subclasses(MultiFusionBase) if c.__module__.startswith(fusion_pkg.__name__)}
    assert ours == set(MULTI_FUSIONS.values())
    assert all(cls.summary for cls in ours)
    assert MultiChannelAttentionFusion in ours
