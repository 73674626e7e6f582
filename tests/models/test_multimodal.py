"""MultiModalSegmenter: shapes, absent modalities, parity with RGBXSegmenter, export, errors."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align import AffineAlign
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.fusion import AFFFusion, CMXFusion, ConcatFusion
from rgbx_fusion.models.fusion.multi import (
    MultiConcatFusion,
    MultiGatedFusion,
    MultiMeanFusion,
    MultiWeightedFusion,
)
from rgbx_fusion.models.multimodal import MultiModalSegmenter, load_rgbx_weights
from rgbx_fusion.models.segmenter import RGBXSegmenter

BACKBONE = "test_resnet"
H, W, K = 32, 48, 4
MODS = {"depth": 1, "thermal": 3, "events": 2}
DECODER = partial(FPNDecoder, channels=16)


def net(
    modalities: dict[str, int] | None = None, stage: str = "mid", **kw: Any
) -> MultiModalSegmenter:
    torch.manual_seed(0)
    kw.setdefault("decoder", DECODER)
    kw.setdefault("dropout", 0.0)
    return MultiModalSegmenter(K, modalities or dict(MODS), stage, backbone=BACKBONE, **kw)  # type: ignore[arg-type]


def inputs(
    modalities: dict[str, int] | None = None, batch: int = 3
) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    mods = modalities or MODS
    rgb = torch.randn(batch, 3, H, W, generator=g)
    return rgb, {n: torch.randn(batch, c, H, W, generator=g) for n, c in mods.items()}


def mask(*rows: tuple[int, ...]) -> Tensor:
    return torch.tensor(rows, dtype=torch.bool)


MIXED = mask((1, 1, 1), (1, 0, 1), (0, 1, 0))  # depth, thermal, events per sample


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("aux_encoder", ["separate", "shared"])
@pytest.mark.parametrize("stage", ["early", "mid", "late"])
def test_shapes(stage: str, aux_encoder: str, n: int) -> None:
    mods = dict(list(MODS.items())[:n])
    model = net(mods, stage, aux_encoder=aux_encoder)
    rgb, aux = inputs(mods)
    present = MIXED[:, :n].clone()
    present[0] = True
    assert model(rgb, aux, present).shape == (3, K, H, W)
    assert model(rgb, aux).shape == (3, K, H, W)


CONFIGS: dict[str, dict[str, Any]] = {
    "mid-separate-sum": {},
    "mid-shared-gated": {"aux_encoder": "shared", "fusion": MultiGatedFusion},
    "mid-concat-token": {"fusion": MultiConcatFusion, "absent": "token"},
    "mid-each-aff": {"fusion": AFFFusion, "pairwise": "each"},
    "mid-aggregate-cmx": {"fusion": CMXFusion, "pairwise": "aggregate", "aggregate": "weighted"},
    "late-weighted": {"stage": "late", "late_fusion": "weighted"},
    "late-shared-token": {"stage": "late", "aux_encoder": "shared", "absent": "token"},
    "early-separate": {"stage": "early"},
    "early-shared": {"stage": "early", "aux_encoder": "shared"},
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_absent_values_do_not_change_the_logits(name: str, train: bool) -> None:
    """Perturbing (even NaN-filling) an absent modality's tensor leaves every logit as it was."""
    options = dict(CONFIGS[name])
    model = net(stage=options.pop("stage", "mid"), **options).train(train)
    rgb, aux = inputs()
    garbage = {n: x.clone() for n, x in aux.items()}
    garbage["thermal"][1] = float("nan")
    garbage["depth"][2] = torch.randn(3, H, W)[:1] * 100
    garbage["events"][2] = float("inf")
    ref = model(rgb, aux, MIXED)
    out = model(rgb, garbage, MIXED)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eager_skipping_equals_the_masked_graph_path(name: str) -> None:
    options = dict(CONFIGS[name])
    stage = options.pop("stage", "mid")
    eager = net(stage=stage, **options).eval()
    masked = net(stage=stage, skip_absent=False, **options).eval()
    rgb, aux = inputs()
    with torch.no_grad():
        torch.testing.assert_close(eager(rgb, aux, MIXED), masked(rgb, aux, MIXED))


def _count_calls(module: nn.Module) -> list[int]:
    batches: list[int] = []
    module.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    return batches


def test_absent_modality_encoders_run_only_on_present_samples() -> None:
    model = net()
    depth, thermal = (
        _count_calls(model.aux.encoders["depth"]),
        _count_calls(model.aux.encoders["thermal"]),
    )
    rgb, aux = inputs()
    model(rgb, aux, mask((1, 0, 1), (1, 0, 0), (0, 0, 1)))
    assert thermal == [] and depth == [2]  # thermal absent everywhere: never run
    shared = net(aux_encoder="shared")
    calls = _count_calls(shared.aux.encoder)
    shared(rgb, aux, mask((1, 0, 0), (1, 0, 0), (1, 0, 0)))
    assert calls == [3]  # only depth ran through the shared encoder
    late = net(stage="late")
    late_calls = _count_calls(late.aux_branches.branches["events"])
    late(rgb, aux, mask((1, 1, 0), (1, 1, 0), (1, 1, 0)))
    assert late_calls == []


@pytest.mark.parametrize(
    ("fusion", "extra"),
    [
        (MultiMeanFusion, {}),
        (MultiWeightedFusion, {}),
        (AFFFusion, {"pairwise": "each"}),
        (AFFFusion, {"pairwise": "aggregate"}),
    ],
    ids=["mean", "weighted", "each-aff", "aggregate-aff"],
)
def test_one_present_modality_equals_the_network_declared_with_it_alone(
    fusion: Any, extra: dict[str, Any]
) -> None:
    """Renormalisation: depth + (absent) thermal == a depth-only network with the same weights."""
    both = net({"depth": 1, "thermal": 1}, fusion=fusion, **extra).eval()
    alone = net({"depth": 1}, fusion=fusion, **extra).eval()
    state = {}
    for key, value in both.state_dict().items():
        if "thermal" in key or ".pairs.1." in key:
            continue
        if key.startswith("fusions.") and key.endswith(".logits"):
            value = value[:2]  # rgb, depth
        state[key] = value
    alone.load_state_dict(state)
    rgb, aux = inputs({"depth": 1, "thermal": 1})
    with torch.no_grad():
        out = both(rgb, aux, mask((1, 0), (1, 0), (1, 0)))
        ref = alone(rgb, {"depth": aux["depth"]})
    torch.testing.assert_close(out, ref)


def _rgbx(stage: str, **kw: Any) -> RGBXSegmenter:
    torch.manual_seed(3)
    model = RGBXSegmenter(K, 1, stage, backbone=BACKBONE, decoder=DECODER, dropout=0.0, **kw)
    with torch.no_grad():  # perturb zero-initialised parts so that they matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


PARITY: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "mid-add": ("mid", {}, {}),
    "mid-input-affine": ("mid", {"input_align": AffineAlign}, {"input_align": AffineAlign}),
    "mid-cmx-each": ("mid", {"fusion": CMXFusion}, {"fusion": CMXFusion, "pairwise": "each"}),
    "mid-cmx-aggregate": (
        "mid",
        {"fusion": CMXFusion},
        {"fusion": CMXFusion, "pairwise": "aggregate"},
    ),
    "mid-concat": ("mid", {"fusion": ConcatFusion}, {"fusion": MultiConcatFusion}),
    "early": ("early", {"fusion": None}, {}),
    "late-mean": ("late", {"fusion": None}, {}),
    "late-weighted": (
        "late",
        {"fusion": None, "late_fusion": "weighted"},
        {"late_fusion": "weighted"},
    ),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_one_modality_reproduces_rgbx_segmenter(name: str) -> None:
    stage, rgbx_kw, multi_kw = PARITY[name]
    ref = _rgbx(stage, **rgbx_kw)
    model = net({"depth": 1}, stage, **multi_kw).eval()
    load_rgbx_weights(model, ref.state_dict())
    rgb, aux = inputs({"depth": 1}, batch=2)
    with torch.no_grad():
        expected = ref(rgb, aux["depth"])
        torch.testing.assert_close(model(rgb, aux), expected)
        torch.testing.assert_close(model(rgb, aux, torch.ones(2, 1, dtype=torch.bool)), expected)
    if name == "mid-add":
        shapes = sorted(tuple(p.shape) for p in model.parameters())
        assert shapes == sorted(tuple(p.shape) for p in ref.parameters())
        assert torch.equal(model(rgb, aux), expected)  # bit for bit


def test_per_modality_input_aligners_are_identity_at_init_and_only_see_their_modality() -> None:
    model = net(input_align={"thermal": AffineAlign}).eval()
    assert list(model.input_aligners) == ["thermal"]
    seen = _count_calls(model.input_aligners["thermal"])
    channels: list[int] = []
    model.input_aligners["thermal"].register_forward_pre_hook(
        lambda _m, a: channels.append(a[1].shape[1])
    )
    plain = net().eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("input_aligners")}
    )
    rgb, aux = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, aux, MIXED), plain(rgb, aux, MIXED))
    assert seen == [2] and channels == [3]  # thermal (3 channels), on its two present samples
    with torch.no_grad():  # a non-identity warp moves thermal only
        model.input_aligners["thermal"].head.fc.bias.add_(0.2)  # type: ignore[union-attr]
        only_depth = mask((1, 0, 0), (1, 0, 0), (1, 0, 0))
        torch.testing.assert_close(model(rgb, aux, only_depth), plain(rgb, aux, only_depth))
        assert not torch.allclose(model(rgb, aux, MIXED), plain(rgb, aux, MIXED))


@pytest.mark.parametrize(
    "name",
    [
        "mid-shared-gated",
        "mid-concat-token",
        "mid-aggregate-cmx",
        "late-shared-token",
        "early-shared",
    ],
)
def test_gradients_reach_every_used_parameter(name: str) -> None:
    options = dict(CONFIGS[name])
    # with tokens the fusion counts every stream: its absence biases are never used
    unused = "absent_bias" if options.get("absent") == "token" else "-"
    model = net(stage=options.pop("stage", "mid"), **options).train()
    with torch.no_grad():  # zero-initialised parts (timm's last BN of a block, gates) block
        for p in model.parameters():  # the gradient of what lies before them
            if not p.any():
                p.normal_(0.0, 0.1)
    rgb, aux = inputs(batch=5)
    present = mask((1, 1, 1), (1, 0, 1), (0, 1, 0), (1, 1, 1), (0, 0, 0))
    model(rgb, aux, present).square().mean().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if (p.grad is None or not p.grad.abs().sum() > 0) and not n.endswith(unused)
    ]
    assert missing == []


@pytest.mark.export
def test_mid_network_exports_with_the_presence_mask() -> None:
    model = net(
        {"depth": 1, "thermal": 1}, fusion=[MultiGatedFusion, AFFFusion, None, MultiWeightedFusion]
    ).eval()
    rgb, aux = inputs({"depth": 1, "thermal": 1})
    program = torch.export.export(model, (rgb, aux, mask((1, 1), (1, 0), (0, 1))))
    exported = program.module()
    with torch.no_grad():
        for present in [
            mask((1, 1), (1, 0), (0, 1)),
            mask((0, 1), (0, 1), (0, 0)),
            mask((1, 1), (1, 1), (1, 1)),
        ]:
            torch.testing.assert_close(exported(rgb, aux, present), model(rgb, aux, present))


def test_typed_errors_name_the_modality() -> None:
    with pytest.raises(ConfigError, match="at least one aux modality"):
        MultiModalSegmenter(K, {}, backbone=BACKBONE)
    with pytest.raises(ConfigError, match="rgb_only"):
        MultiModalSegmenter(K, {"depth": 1}, "rgb_only", backbone=BACKBONE)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'lidar'"):
        MultiModalSegmenter(K, {"depth": 1}, backbone=BACKBONE, input_align={"lidar": AffineAlign})
    model = net({"depth": 1, "thermal": 1})
    rgb, aux = inputs({"depth": 1, "thermal": 1})
    with pytest.raises(ConfigError, match="missing modality 'thermal'"):
        model(rgb, {"depth": aux["depth"]})
    with pytest.raises(ConfigError, match="undeclared modality 'events'"):
        model(rgb, {**aux, "events": aux["depth"]})
    with pytest.raises(ConfigError, match=r"aux\['thermal'\] has 3 channels, expected 1"):
        model(rgb, {**aux, "thermal": aux["thermal"].expand(-1, 3, -1, -1)})
    with pytest.raises(ConfigError, match=r"aux\['depth'\] is \(3, 1, 16, 48\)"):
        model(rgb, {**aux, "depth": aux["depth"][..., :16, :]})
    with pytest.raises(ConfigError, match=r"present must be \(B, M\) = \(3, 2\)"):
        model(rgb, aux, torch.ones(3, 3, dtype=torch.bool))


def test_config_surface_builds_from_yaml() -> None:
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MultiModalSegmenter, "net")
    cfg = yaml.safe_load(
        f"""
        net:
          num_classes: {K}
          modalities: {{depth: 1, thermal: 1}}
          backbone: {BACKBONE}
          fusion:
            class_path: rgbx_fusion.models.fusion.CMXFusion
            init_args: {{reduction: 2}}
          pairwise: aggregate
          input_align: {{thermal: rgbx_fusion.models.align.AffineAlign}}
        """
    )
    model = parser.instantiate(parser.parse_object(cfg)).net
    assert type(model.fusions[0]).__name__ == "PairwiseAggregateFusion"
    assert list(model.input_aligners) == ["thermal"]
