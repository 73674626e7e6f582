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
    from rgbx_fusion.models import encoders

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(encoders.timm, "create_model", offline)
    with pytest.raises(OfflineWeightsError, match="pretrained: false"):
        StagedBackbone("resnet18", pretrained=True)
