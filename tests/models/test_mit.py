"""MiT encoders on timm's PVTv2 and the conversion of official ``mit_bX.pth`` files."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from cmx_reference import MiT, randomize
from torch import nn

from rgbx_fusion.errors import (
    CheckpointError,
    ConfigError,
    OfflineWeightsError,
    WeightsMismatchError,
)
from rgbx_fusion.models.convert.mit import (
    convert_mit_state_dict,
    detect_mit_variant,
    load_mit,
    mit_key_map,
    mit_shapes,
)
from rgbx_fusion.models.encoders.mit import MIT_SPECS, create_mit
from rgbx_fusion.models.segmenter import RGBXSegmenter


@pytest.fixture(scope="module")
def mit_b0() -> MiT:
    return randomize(MiT("b0")).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def mit_b0_file(mit_b0: MiT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mit") / "mit_b0.pth"
    torch.save(mit_b0.state_dict(), path)
    return path


@pytest.mark.parametrize("variant", sorted(MIT_SPECS))
def test_official_names_and_shapes_of_every_variant(variant: str) -> None:
    with torch.device("meta"):
        official = MiT(variant).state_dict()
    assert sorted(mit_key_map(variant)) == sorted(official)
    assert {k: tuple(v) for k, v in mit_shapes(variant).items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    assert detect_mit_variant(official) == variant
    with torch.device("meta"):
        timm_keys = set(create_mit(variant).state_dict())
    assert set(mit_key_map(variant).values()) == timm_keys


def test_norm_epsilons_and_mlp_ratio_match_mit() -> None:
    model = create_mit("b0")
    assert model.patch_embed.norm.eps == 1e-5
    stage = model.stages[1]
    assert stage.downsample.norm.eps == 1e-5
    block = stage.blocks[0]
    assert block.attn.norm.eps == 1e-5  # spatial-reduction norm
    assert block.norm1.eps == block.norm2.eps == stage.norm.eps == 1e-6
    assert block.mlp.fc1.out_features == 4 * 64  # MLP ratio 4 (PVTv2: 8)
    assert model.stages[3].blocks[0].attn.sr is None  # sr ratio 1 in the last stage
    assert [s.blocks[0].attn.num_heads for s in model.stages] == [1, 2, 5, 8]


def test_every_tensor_lands_in_its_place(mit_b0: MiT) -> None:
    official = mit_b0.state_dict()
    converted = convert_mit_state_dict(official)
    table = mit_key_map("b0")
    assert len(converted) == len(official)
    for src, dst in table.items():
        assert converted[dst] is official[src]
    # spot checks of the mapping rules, written out independently of the table
    assert converted["stages.2.downsample.proj.weight"] is official["patch_embed3.proj.weight"]
    assert (
        converted["stages.1.blocks.1.mlp.dwconv.bias"]
        is official["block2.1.mlp.dwconv.dwconv.bias"]
    )
    assert converted["stages.3.norm.weight"] is official["norm4.weight"]
    assert converted["stages.0.blocks.0.attn.kv.weight"].shape == (64, 32)  # one Linear C→2C


def test_converted_mit_reproduces_the_reference_forward(mit_b0: MiT) -> None:
    ref = copy.deepcopy(mit_b0).double()
    model = create_mit("b0").double().eval()
    model.load_state_dict(convert_mit_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 70, 90, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.forward_features(x)
        got = model.forward_intermediates(x, intermediates_only=True)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_load_mit_from_file_with_and_without_head(mit_b0: MiT, mit_b0_file: Path) -> None:
    full = load_mit(mit_b0_file)
    assert isinstance(full, nn.Module) and full.num_classes == 1000
    torch.testing.assert_close(full.head.weight, mit_b0.head.weight)
    headless = load_mit(mit_b0_file, "mit_b0", model=create_mit("b0", num_classes=0))
    torch.testing.assert_close(headless.stages[0].norm.bias, mit_b0.norm1.bias)


def test_timm_registry_and_segmenter_weights_option(mit_b0: MiT, mit_b0_file: Path) -> None:
    feats = timm.create_model("mit_b0", features_only=True)
    assert feats.feature_info.channels() == [32, 64, 160, 256]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    net = RGBXSegmenter(4, aux_channels=1, backbone="mit_b0", backbone_weights=str(mit_b0_file))
    rgb_stream, aux_stream = net.encoder.rgb, net.encoder.aux
    torch.testing.assert_close(
        rgb_stream.segments[2].stages_2.blocks[1].attn.q.weight, mit_b0.block3[1].attn.q.weight
    )
    torch.testing.assert_close(aux_stream.segments[3].stages_3.norm.weight, mit_b0.norm4.weight)
    # one aux channel: timm sums the RGB filters of the first convolution
    w = aux_stream.segments[0].patch_embed.proj.weight
    assert w.shape == (32, 1, 7, 7)
    torch.testing.assert_close(w[:, 0], mit_b0.patch_embed1.proj.weight.sum(1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = rgb_stream.eval()(x)
        ref = mit_b0.forward_features(x)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mismatches_are_listed_and_nothing_loads(mit_b0: MiT) -> None:
    sd = dict(mit_b0.state_dict())
    del sd["block2.1.attn.kv.weight"]
    sd["block2.1.attn.qkv.weight"] = torch.zeros(1)
    sd["norm4.bias"] = torch.zeros(7)
    with pytest.raises(WeightsMismatchError) as info:
        convert_mit_state_dict(sd)
    err = info.value
    assert err.missing == ["block2.1.attn.kv.weight"]
    assert err.unexpected == ["block2.1.attn.qkv.weight"]
    assert len(err.shapes) == 1 and "norm4.bias" in err.shapes[0]
    message = str(err)
    assert "block2.1.attn.kv.weight" in message and "nothing was loaded" in message

    model = create_mit("b0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as info:
        convert_mit_state_dict(mit_b0.state_dict(), variant="b1")
    assert "shaped like MiT-B0" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_raise_typed_errors(tmp_path: Path, mit_b0_file: Path) -> None:
    with pytest.raises(CheckpointError, match="not an official MiT"):
        detect_mit_variant({"conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mit(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_mit(tmp_path / "junk.pth")
    with pytest.raises(ConfigError, match="unknown MiT variant"):
        create_mit("b9")
    with pytest.raises(OfflineWeightsError, match="backbone_weights"):
        timm.create_model("mit_b1", pretrained=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        RGBXSegmenter(3, backbone="mit_b0", backbone_weights=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="both streams"):
        RGBXSegmenter(
            3, backbone="mit_b0", aux_backbone="resnet18", backbone_weights=str(mit_b0_file)
        )


def test_any_encoder_import_registers_the_mit_family() -> None:
    """``backbone: mit_b2`` works wherever a stream is built, whichever module was imported."""
    code = (
        "import timm\n"
        "from rgbx_fusion.models.encoders.staged import StagedBackbone\n"
        "assert timm.list_models('mit_b*') == [f'mit_b{i}' for i in range(6)]\n"
        "assert StagedBackbone('mit_b0').feature_spec.channels == (32, 64, 160, 256)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
