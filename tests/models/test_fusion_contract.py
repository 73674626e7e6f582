"""Contract suite: every FUSIONS and RECTIFIERS entry keeps the base-class promises."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import rgbx_fusion.models.fusion as fusion_pkg
from rgbx_fusion.models.fusion import (
    FUSIONS,
    RECTIFIERS,
    CMXFusion,
    FeatureRectify,
    FusionBase,
    RectifyBase,
)
from rgbx_fusion.models.fusion.cross_attention import default_heads

C = 8
OPERATORS: dict[str, type[nn.Module]] = {
    **{f"fusion-{name}": cls for name, cls in FUSIONS.items()},
    **{f"rectify-{name}": cls for name, cls in RECTIFIERS.items()},
}
NAMES = list(OPERATORS)


def build(name: str, channels: int = C) -> nn.Module:
    """Seeded instance whose all-zero parameters (gammas, BN biases, logits) are perturbed.

    A zero-initialised gate hides the branch behind it: outputs would not depend on
    it and its gradients would be zero, so the checks below could not fail there.
    """
    torch.manual_seed(0)
    module = OPERATORS[name](channels)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, 0.5)
    return module


def outputs(module: Callable[..., Any], x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
    out = module(x, y)
    return out if isinstance(out, tuple) else (out,)


def inputs(*shape: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(
        shape, generator=g, dtype=dtype
    )


def expected_outputs(name: str) -> int:
    return 2 if name.startswith("rectify-") else 1


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_non_square(name: str) -> None:
    module = build(name).train()
    for size in [(5, 7), (3, 10)]:
        x, y = inputs(2, C, *size)
        outs = outputs(module, x, y)
        assert len(outs) == expected_outputs(name)
        for out in outs:
            assert out.shape == x.shape
            assert out.dtype == x.dtype
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name: str) -> None:
    module = build(name).train()
    x, y = inputs(2, C, 5, 7)
    x.requires_grad_(True)
    y.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    loss = sum((out * torch.randn(out.shape, generator=g)).sum() for out in outputs(module, x, y))
    assert isinstance(loss, Tensor)
    loss.backward()
    for tensor_name, tensor in [("x_rgb", x), ("x_aux", y), *module.named_parameters()]:
        assert tensor.grad is not None, f"{tensor_name} got no gradient"
        assert tensor.grad.abs().sum() > 0, f"{tensor_name} got an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(1, 1), (3, 4)])
def test_batch_one_matches_batched(name: str, size: tuple[int, int]) -> None:
    # Eval mode: BatchNorm on a 1×1 map cannot train with a batch of one.
    module = build(name).eval()
    x, y = inputs(3, C, *size)
    with torch.no_grad():
        batched = outputs(module, x, y)
        single = outputs(module, x[1:2], y[1:2])
    for b, s in zip(batched, single, strict=True):
        assert s.shape == (1, C, *size)
        torch.testing.assert_close(s, b[1:2])


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name: str) -> None:
    module = build(name).eval()
    x, y = inputs(2, C, 6, 5)
    cl = torch.channels_last
    with torch.no_grad():
        ref = outputs(module, x, y)
        got = outputs(module, x.to(memory_format=cl), y.to(memory_format=cl))
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o, r)
        # Outputs keep the inputs' layout, so the decoder runs on the one it expects.
        assert r.is_contiguous(), f"{name}: NCHW inputs gave strides {r.stride()}"
        assert o.is_contiguous(memory_format=cl), f"{name}: channels_last inputs gave {o.stride()}"


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str) -> None:
    module = build(name).double().eval()
    x, y = inputs(2, C, 4, 5, dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: outputs(module, a, b), (x, y), fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_odd_channel_counts_build_with_defaults(name: str) -> None:
    for channels in (3, 20):
        module = build(name, channels).eval()
        x, y = inputs(2, channels, 3, 2)
        with torch.no_grad():
            for out in outputs(module, x, y):
                assert out.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_inputs_raise(name: str) -> None:
    module = build(name).eval()
    x, _ = inputs(2, C, 5, 7)
    with pytest.raises(ValueError, match="same shape"):
        module(x, x[..., :6])
    with pytest.raises(ValueError, match="channels"):
        wide = torch.randn(2, C + 1, 5, 7)
        module(wide, wide)


@pytest.mark.parametrize("name", NAMES)
def test_non_positive_channels_raise(name: str) -> None:
    with pytest.raises(ValueError):
        OPERATORS[name](0)


@pytest.mark.parametrize("name", NAMES)
def test_summary_and_docstring(name: str) -> None:
    cls = OPERATORS[name]
    summary = getattr(cls, "summary", "")
    assert summary and "\n" not in summary
    assert cls.__doc__ is not None and "Shape:" in cls.__doc__


@pytest.mark.compile
@pytest.mark.parametrize("name", NAMES)
def test_compile_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    module = build(name).eval()
    x, y = inputs(2, C, 5, 6)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        ref = outputs(module, x, y)
        got = outputs(compiled, x, y)
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o, r)


@pytest.mark.compile
@pytest.mark.parametrize("name", NAMES)
def test_compiled_training_matches_eager(name: str) -> None:
    """Forward and backward in training mode, traced with symbolic sizes: a network's
    stages call the same fusion code with different map sizes, which makes
    torch.compile retrace with dynamic shapes (hand-written backwards must survive that).
    """
    torch._dynamo.reset()
    eager, compiled_module = build(name).train(), build(name).train()
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True, dynamic=True)
    x, y = inputs(2, C, 5, 6)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(x.shape, generator=g) for _ in range(expected_outputs(name))]
    results = []
    for module, net in ((eager, eager), (compiled, compiled_module)):
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        outs = outputs(module, a, b)
        loss = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        grads = torch.autograd.grad(loss, [a, b, *net.parameters()], allow_unused=True)
        results.append([*outs, *grads])
    for ref, got in zip(*results, strict=True):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref)


@pytest.mark.export
@pytest.mark.parametrize("name", NAMES)
def test_torch_export(name: str) -> None:
    module = build(name).eval()
    x, y = inputs(2, C, 5, 6)
    exported = torch.export.export(module, (x, y))
    with torch.no_grad():
        ref = outputs(module, x, y)
        got = outputs(exported.module(), x, y)
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o, r)


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_registries_cover_every_operator_in_the_package() -> None:
    for info in pkgutil.walk_packages(fusion_pkg.__path__, fusion_pkg.__name__ + "."):
        importlib.import_module(info.name)

    def defined_here(cls: type) -> bool:
        return cls.__module__.startswith(fusion_pkg.__name__) and not cls.__name__.startswith("_")

    fusions = {cls for cls in _all_subclasses(FusionBase) if defined_here(cls)}
    rectifiers = {cls for cls in _all_subclasses(RectifyBase) if defined_here(cls)}
    assert fusions - set(FUSIONS.values()) == set(), "add these to FUSIONS"
    assert rectifiers - set(RECTIFIERS.values()) == set(), "add these to RECTIFIERS"
    for cls in [*FUSIONS.values(), *RECTIFIERS.values()]:
        assert cls.__name__ in fusion_pkg.__all__


def test_cmx_parameter_names_match_the_official_implementation() -> None:
    ffm = {name for name, _ in CMXFusion(64).named_parameters()}
    for name in [
        "cross.channel_proj1.weight",
        "cross.channel_proj2.bias",
        "cross.cross_attn.kv1.weight",
        "cross.cross_attn.kv2.weight",
        "cross.end_proj1.weight",
        "cross.end_proj2.weight",
        "cross.norm1.weight",
        "cross.norm2.bias",
        "channel_emb.residual.weight",
        *(f"channel_emb.channel_embed.{i}.weight" for i in (0, 1, 3, 4)),
        "channel_emb.norm.weight",
    ]:
        assert name in ffm
    assert "cross.cross_attn.kv1.bias" not in ffm
    frm = {name for name, _ in FeatureRectify(64).named_parameters()}
    for part in ("channel_weights", "spatial_weights"):
        for i in (0, 2):
            assert f"{part}.mlp.{i}.weight" in frm
    assert "head_mask" not in CMXFusion(64, num_heads=2).state_dict()


def test_default_heads_follow_mit_widths() -> None:
    assert [default_heads(c) for c in (64, 128, 320, 512)] == [1, 2, 5, 8]
    assert default_heads(96) == 1 and default_heads(8) == 1
    assert CMXFusion(320).cross.cross_attn.num_heads == 5


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16(name: str) -> None:
    module = build(name).train()
    x, y = inputs(2, C, 5, 6)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = outputs(module, x, y)
    sum(out.float().sum() for out in outs).backward()  # type: ignore[union-attr]
    assert all(torch.isfinite(out).all() for out in outs)
    assert x.grad is not None and torch.isfinite(x.grad).all()
