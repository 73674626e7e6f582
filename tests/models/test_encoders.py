from __future__ import annotations

import pytest
import timm
import torch

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.encoders import DualEncoder, StagedBackbone

# A ResNet, a ConvNeXt, a PVTv2 (MiT-like), a Swin-like NHWC model and MobileNet/EfficientNet.
FAMILIES = [
    ("resnet18", {}),
    ("convnext_atto", {}),
    ("pvt_v2_b0", {}),
    ("swin_tiny_patch4_window7_224", {"img_size": (64, 96), "window_size": 4}),
    ("mobilenetv3_small_050", {}),
    ("efficientnet_b0", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_staged_backbone_matches_timm(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    staged = StagedBackbone(name, 2, **kwargs).eval()
    torch.manual_seed(0)
    ref = timm.create_model(name, features_only=True, in_chans=2, **kwargs).eval()
    x = torch.randn(1, 2, 64, 96)
    ours = staged(x)
    theirs = [
        t if t.shape[1] == c else t.permute(0, 3, 1, 2)
        for t, c in zip(ref(x), ref.feature_info.channels(), strict=True)
    ][-len(ours) :]
    assert staged.feature_spec.reductions == (4, 8, 16, 32)
    for a, b, c in zip(ours, theirs, staged.feature_spec.channels, strict=True):
        assert a.shape[1] == c  # always NCHW
        torch.testing.assert_close(a, b)


def test_dual_encoder_projects_a_different_aux_backbone() -> None:
    enc = DualEncoder("resnet18", aux_channels=1, aux_backbone="convnext_atto")
    r, a = enc(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64))
    assert [t.shape for t in r] == [t.shape for t in a]
    assert not enc.widths_match


def test_shared_weights_use_one_backbone() -> None:
    enc = DualEncoder("resnet18", aux_channels=1, share_weights=True)
    assert enc.aux is enc.rgb
    r, a = enc(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64))
    assert r[0].shape == a[0].shape


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown timm model"):
        StagedBackbone("resnet_does_not_exist")


def test_pretrained_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rgbx_fusion.errors import OfflineWeightsError
    from rgbx_fusion.models.encoders import staged

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(staged.timm, "create_model", offline)
    with pytest.raises(OfflineWeightsError, match="pretrained: false"):
        StagedBackbone("resnet18", pretrained=True)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "efficientnet_b0"])
def test_extending_the_input_conv_keeps_rgb_behaviour(name: str) -> None:
    from rgbx_fusion.models.encoders import extend_input_channels

    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval()
    rgb = torch.randn(1, 3, 64, 64)
    before = model(rgb)
    extend_input_channels(model, 5)
    after = model(torch.cat([rgb, torch.zeros(1, 2, 64, 64)], 1))
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)
    grey = rgb.mean(1, keepdim=True)
    changed = model(torch.cat([rgb, grey, grey], 1))
    assert not torch.allclose(changed[0], before[0])


def test_early_fusion_with_pretrained_weights_extends_rgb_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pretrained + 4 inputs: built with 3 channels (the pretrained ones), then extended."""
    from rgbx_fusion.models.encoders import staged

    calls = []
    real = staged.timm.create_model

    def fake(name, **kwargs):
        calls.append(kwargs["in_chans"])
        kwargs["pretrained"] = False  # offline: stand-in for the downloaded weights
        return real(name, **kwargs)

    monkeypatch.setattr(staged.timm, "create_model", fake)
    backbone = StagedBackbone("resnet18", 4, pretrained=True)
    assert calls == [3]
    first = backbone.segments[0][0]
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 4
    torch.testing.assert_close(first.weight[:, 3], first.weight[:, :3].mean(1))
