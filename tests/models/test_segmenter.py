from __future__ import annotations

from functools import partial

import pytest
import torch

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.decoders import DECODERS
from rgbx_fusion.models.fusion import CMXFusion, FeatureRectify, SEFusion
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.models.topologies.mid import StageSkipped

STAGES = ["early", "mid", "late", "rgb_only", "aux_only"]
BACKBONE = "resnet18"


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_and_decoder_trains(stage: str, decoder: str) -> None:
    """Optimiser steps on one fixed batch reduce the loss for every stage × decoder."""
    torch.manual_seed(0)
    net = RGBXSegmenter(
        4, 1, stage, backbone=BACKBONE, decoder=partial(DECODERS[decoder], channels=32)
    )
    rgb, aux = torch.randn(2, 3, 64, 80), torch.randn(2, 1, 64, 80)
    target = (aux[:, 0] > 0).long() + 2 * (rgb[:, 0] > 0).long()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        logits = net(rgb, aux)
        assert logits.shape == (2, 4, 64, 80)
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert min(losses[-3:]) < losses[0]


def test_per_stage_fusion_list_and_cmx_feedback() -> None:
    net = RGBXSegmenter(
        3,
        1,
        "mid",
        backbone=BACKBONE,
        fusion=[None, SEFusion, SEFusion, CMXFusion],
        rectify=FeatureRectify,
        feedback=True,
    )
    assert isinstance(net.fusions[0], StageSkipped) and isinstance(net.fusions[3], CMXFusion)
    out = net(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_feedback_changes_the_next_stage_inputs() -> None:
    torch.manual_seed(0)
    a = RGBXSegmenter(3, 1, "mid", backbone=BACKBONE, feedback=False).eval()
    b = RGBXSegmenter(3, 1, "mid", backbone=BACKBONE, feedback=True).eval()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64)
    fa, fb = a.fused_features(x, y), b.fused_features(x, y)
    torch.testing.assert_close(fa[0], fb[0])  # stage 1 is the same
    assert not torch.allclose(fa[1], fb[1])  # later stages see the fused maps


def test_wrong_number_of_stage_fusions() -> None:
    with pytest.raises(ConfigError, match="one entry per stage"):
        RGBXSegmenter(3, 1, "mid", backbone=BACKBONE, fusion=[SEFusion, None])


def test_align_outside_mid_fusion_is_rejected() -> None:
    from rgbx_fusion.models.align import IdentityAlign

    with pytest.raises(ConfigError, match="fusion_stage='mid'"):
        RGBXSegmenter(3, 1, "early", backbone=BACKBONE, align=IdentityAlign)


def test_late_fusion_modes() -> None:
    for mode in ("mean", "weighted", "conv"):
        net = RGBXSegmenter(3, 2, "late", backbone=BACKBONE, late_fusion=mode)
        assert net(torch.randn(1, 3, 64, 64), torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)


def test_unknown_stage() -> None:
    with pytest.raises(ConfigError, match="fusion_stage"):
        RGBXSegmenter(3, 1, "middle")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backbone", "kwargs"),
    [
        ("convnext_atto", {}),
        ("pvt_v2_b0", {}),
        ("swin_tiny_patch4_window7_224", {"img_size": (64, 96), "window_size": 4}),
        ("mobilenetv3_small_050", {}),
    ],
    ids=["convnext", "pvt_v2", "swin_nhwc", "mobilenetv3"],
)
def test_mid_fusion_with_feedback_on_other_backbone_families(backbone: str, kwargs: dict) -> None:
    """Feedback writes fused NCHW maps back into each stream, NHWC models included."""
    net = RGBXSegmenter(
        3,
        1,
        "mid",
        backbone=backbone,
        backbone_kwargs=kwargs,
        fusion=SEFusion,
        rectify=FeatureRectify,
        feedback=True,
        decoder=partial(DECODERS["fpn"], channels=32),
    )
    out = net(torch.randn(2, 3, 64, 96), torch.randn(2, 1, 64, 96))
    assert out.shape == (2, 3, 64, 96)
    out.mean().backward()
    assert net.rectifiers[0].channel_weights.mlp[0].weight.grad is not None


def test_aux_head_supervises_the_aux_stream_in_training_only() -> None:
    from rgbx_fusion.models.align import FlowAlign
    from rgbx_fusion.tasks.segmentation import SegmentationTask

    net = partial(
        RGBXSegmenter,
        backbone="resnet18",
        aux_head_channels=16,
        input_align=partial(FlowAlign, levels=2),
    )
    task = SegmentationTask(net, num_classes=3, aux_channels=1, aux_loss_weight=0.5)
    rgb, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    mask = torch.randint(0, 3, (2, 64, 64))
    task.train()
    logits = task(rgb, aux)
    heads = task.net.auxiliary_logits()
    assert list(heads) == ["aux_head/0"] and heads["aux_head/0"].shape == (2, 3, 16, 16)
    total, parts = task._loss(logits, mask)
    assert "aux_head/0" in parts
    expected = (
        parts["ce"]
        + 0.5 * parts["aux_head/0"]
        + sum(v for k, v in parts.items() if k.startswith("align/"))
    )
    assert torch.allclose(total, expected)
    # The aux head's loss reaches the input aligner (its flow net starts at zero flow).
    parts["aux_head/0"].backward()
    flow_head = task.net.input_align.nets[-1][-1]
    assert flow_head.weight.grad is not None and flow_head.weight.grad.abs().sum() > 0
    task.eval()
    task(rgb, aux)
    assert task.net.auxiliary_logits() == {}
    assert "aux_head/0" not in task._loss(logits, mask)[1]


def test_aux_head_needs_mid_fusion() -> None:
    with pytest.raises(ConfigError, match="aux_head_channels"):
        RGBXSegmenter(3, fusion_stage="early", aux_head_channels=8)
