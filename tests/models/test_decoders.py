"""Decoders: output shape, gradients, batch 1, and the exact math of the MLP decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.models.align.deform import ModulatedDeformConv2d
from rgbx_fusion.models.decoders import (
    DECODERS,
    ASPPDecoder,
    FaPNDecoder,
    FPNDecoder,
    MLPDecoder,
)
from rgbx_fusion.models.decoders.aspp import scale_rates
from rgbx_fusion.models.fusion.channel_attention import FeatureSelection

CHANNELS = (8, 16, 24, 32)


def pyramid(
    batch: int, levels: int, height: int = 64, width: int = 80, first_stride: int = 4
) -> list[Tensor]:
    """Encoder-like features: stride ``first_stride · 2^i``, sizes rounded up as convs do."""
    feats = []
    for i in range(levels):
        s = first_stride * 2**i
        feats.append(torch.randn(batch, CHANNELS[i], -(-height // s), -(-width // s)))
    return feats


def build(name: str, levels: int, **options: object) -> nn.Module:
    return DECODERS[name](CHANNELS[:levels], channels=16, **options)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_defaults_build(name: str) -> None:
    decoder = DECODERS[name]([16, 32, 64, 128])
    assert isinstance(decoder.out_channels, int) and decoder.out_channels > 0


@pytest.mark.parametrize("levels", [4, 3])
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_output_shape_non_square(name: str, levels: int) -> None:
    torch.manual_seed(0)
    decoder = build(name, levels)
    feats = pyramid(2, levels, 64, 80)
    out = decoder(feats)
    assert out.shape == (2, decoder.out_channels, 16, 20)
    assert decoder.out_channels == 16
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_odd_sizes_and_other_first_stride(name: str) -> None:
    decoder = build(name, 3)
    feats = pyramid(1, 3, 50, 37, first_stride=2)  # 25×19, 13×10, 7×5
    assert decoder.eval()(feats).shape == (1, 16, 25, 19)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_gradient_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    decoder = build(name, 4).train()
    feats = [f.requires_grad_() for f in pyramid(2, 4, 32, 40)]
    out = decoder(feats)
    # a random projection, not .sum(): the sum of a BatchNorm output has no gradient
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    used = [0, 3] if name == "aspp" else range(4)  # ASPP reads the finest and coarsest only
    for i in used:
        grad = feats[i].grad
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_batch_one_eval_is_deterministic(name: str) -> None:
    decoder = build(name, 4).eval()
    feats = pyramid(1, 4)
    with torch.no_grad():
        a, b = decoder(feats), decoder(feats)
    assert a.shape == (1, 16, 16, 20)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_wrong_features_raise_clear_error(name: str) -> None:
    decoder = build(name, 4)
    with pytest.raises(ValueError, match="feature levels"):
        decoder(pyramid(1, 3))
    feats = pyramid(1, 4)
    feats[1] = torch.randn(1, 5, 8, 10)
    with pytest.raises(ValueError, match="level 1"):
        decoder(feats)


def test_mlp_concatenation_order_is_coarsest_first() -> None:
    torch.manual_seed(0)
    decoder = MLPDecoder(CHANNELS, channels=16).eval()
    feats = pyramid(2, 4)
    size = feats[0].shape[-2:]
    projected = []
    for i, f in enumerate(feats):
        linear: nn.Linear = getattr(decoder, f"linear_c{i + 1}").proj
        tokens = f.flatten(2).transpose(1, 2)  # SegFormer's token layout
        mapped = linear(tokens).transpose(1, 2).reshape(f.shape[0], -1, *f.shape[-2:])
        projected.append(F.interpolate(mapped, size=size, mode="bilinear", align_corners=False))
    fuse = decoder.linear_fuse
    cat = torch.cat([projected[3], projected[2], projected[1], projected[0]], dim=1)
    expected = F.relu(fuse.bn(fuse.conv(cat)))
    with torch.no_grad():
        torch.testing.assert_close(decoder(feats), expected)
        wrong = F.relu(fuse.bn(fuse.conv(torch.cat(projected, dim=1))))
        assert not torch.allclose(decoder(feats), wrong)


def literal_mlp_decoder(decoder: MLPDecoder, feats: list[Tensor]) -> Tensor:
    """The MLP decoder's equation in its written order: project, upsample, concat, fuse."""
    size = feats[0].shape[-2:]
    projected = []
    for i, f in enumerate(feats):
        linear: nn.Linear = getattr(decoder, f"linear_c{i + 1}").proj
        mapped = F.conv2d(f, linear.weight[:, :, None, None], linear.bias)
        projected.append(F.interpolate(mapped, size=size, mode="bilinear", align_corners=False))
    fuse = decoder.linear_fuse
    return F.relu(fuse.bn(fuse.conv(torch.cat(projected[::-1], dim=1))))


@pytest.mark.parametrize("height,width", [(64, 80), (61, 77)])
def test_mlp_training_pass_matches_the_written_order(height: int, width: int) -> None:
    # Batch-statistics BN, odd sizes (levels rounded up as convs do): the reordered
    # computation gives the literal equation's output and every gradient.
    torch.manual_seed(0)
    decoder = MLPDecoder(CHANNELS, channels=16, dropout=0.0).train()
    reference = MLPDecoder(CHANNELS, channels=16, dropout=0.0).train()
    reference.load_state_dict(decoder.state_dict())
    feats = pyramid(2, 4, height, width)
    ours = [f.clone().requires_grad_() for f in feats]
    theirs = [f.clone().requires_grad_() for f in feats]
    out, expected = decoder(ours), literal_mlp_decoder(reference, theirs)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ours, theirs, strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(decoder.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(
        decoder.linear_fuse.bn.running_var, reference.linear_fuse.bn.running_var
    )


def test_mlp_gradients_come_back_in_each_inputs_layout() -> None:
    # Hooks on non-leaf inputs see the gradients as the decoder returns them (a leaf's
    # .grad is re-stored to match the leaf, which would hide a layout change).
    decoder = MLPDecoder(CHANNELS, channels=16).train()
    feats = pyramid(2, 4)
    feats[1] = feats[1].contiguous(memory_format=torch.channels_last)
    seen: dict[int, Tensor] = {}
    inputs = []
    for i, f in enumerate(feats):
        x = f.requires_grad_() * 1.0  # keeps f's layout
        x.register_hook(lambda g, i=i: seen.setdefault(i, g))
        inputs.append(x)
    decoder(inputs).sum().backward()
    for i, x in enumerate(inputs):
        layout = torch.channels_last if i == 1 else torch.contiguous_format
        assert x.is_contiguous(memory_format=layout)
        assert seen[i].is_contiguous(memory_format=layout), i


def test_mlp_state_dict_names_match_segformer_head() -> None:
    keys = set(MLPDecoder([32, 64, 160, 256], channels=32).state_dict())
    for i in range(1, 5):
        assert {f"linear_c{i}.proj.weight", f"linear_c{i}.proj.bias"} <= keys
    assert {
        "linear_fuse.conv.weight",
        "linear_fuse.bn.weight",
        "linear_fuse.bn.running_mean",
    } <= keys
    assert "linear_fuse.conv.bias" not in keys


def test_mlp_dropout_only_in_training() -> None:
    decoder = MLPDecoder(CHANNELS, channels=16, dropout=0.5)
    assert isinstance(decoder.dropout, nn.Dropout2d) and decoder.dropout.p == 0.5
    feats = pyramid(1, 4)
    decoder.eval()
    with torch.no_grad():
        assert torch.equal(decoder(feats), decoder(feats))


def test_fpn_matches_its_equations() -> None:
    torch.manual_seed(0)
    decoder = FPNDecoder(CHANNELS[:3], channels=16).eval()
    feats = pyramid(1, 3)
    lat = [decoder.lateral[i](f) for i, f in enumerate(feats)]
    t2 = lat[2]
    t1 = lat[1] + F.interpolate(t2, size=lat[1].shape[-2:], mode="nearest")
    t0 = lat[0] + F.interpolate(t1, size=lat[0].shape[-2:], mode="nearest")
    outs = [decoder.output[i](t) for i, t in enumerate([t0, t1, t2])]
    size = outs[0].shape[-2:]
    expected = outs[0] + sum(
        F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in outs[1:]
    )
    with torch.no_grad():
        torch.testing.assert_close(decoder(feats), expected)


@pytest.mark.parametrize("merge", ["sum", "concat"])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_fpn_options(merge: str, upsample: str) -> None:
    decoder = FPNDecoder(CHANNELS, channels=16, merge=merge, upsample=upsample)  # type: ignore[arg-type]
    assert decoder(pyramid(2, 4)).shape == (2, 16, 16, 20)
    assert isinstance(decoder.fuse, nn.Identity) == (merge == "sum")


def test_fpn_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="merge"):
        FPNDecoder(CHANNELS, merge="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        FPNDecoder([])


def test_fapn_structure() -> None:
    decoder = FaPNDecoder(CHANNELS, channels=16)
    assert all(isinstance(m, FeatureSelection) for m in decoder.lateral)
    assert len(decoder.align) == 3  # one FAM per top-down step
    dcn = decoder.align[0].get_submodule("dcn")
    assert isinstance(dcn, ModulatedDeformConv2d)
    assert dcn.offset_groups == 8 and dcn.mask_scale == 1.0
    with pytest.raises(ValueError, match="offset_groups"):
        FaPNDecoder(CHANNELS, channels=12)


def test_aspp_rates_follow_stride() -> None:
    assert scale_rates((6, 12, 18), 16) == (6, 12, 18)
    assert ASPPDecoder(CHANNELS).rates == (3, 6, 9)  # coarsest at 4·2³ = 32
    assert ASPPDecoder(CHANNELS[:3]).rates == (6, 12, 18)  # coarsest at 16
    assert ASPPDecoder(CHANNELS, stride=8).rates == (12, 24, 36)
    convs = [b.get_submodule("conv") for b in ASPPDecoder(CHANNELS).aspp.branches]
    assert [c.dilation[0] for c in convs if isinstance(c, nn.Conv2d)] == [1, 3, 6, 9]


def test_aspp_trains_at_batch_one() -> None:
    decoder = ASPPDecoder(CHANNELS, channels=16).train()
    out = decoder(pyramid(1, 4))
    assert out.shape == (1, 16, 16, 20)
    assert decoder.low_level.conv.out_channels == 48
