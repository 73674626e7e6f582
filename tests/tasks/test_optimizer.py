"""Parameter groups of SegmentationTask's optimiser."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch

from rgbx_fusion.models.align import AffineAlign, FlowAlign
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.tasks.optim import adamw
from rgbx_fusion.tasks.segmentation import SegmentationTask


def _groups(task: SegmentationTask) -> list[dict]:
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)  # type: ignore[assignment]
    opt = task.configure_optimizers()["optimizer"]
    return opt.param_groups


def test_aligner_parameters_get_their_own_rate_and_free_transforms_no_decay() -> None:
    net = partial(
        RGBXSegmenter,
        backbone="resnet18",
        input_align=partial(AffineAlign, mode="free"),
        align=[partial(FlowAlign, levels=1), None, None, None],
    )
    task = SegmentationTask(net, num_classes=3, lr=1e-3, weight_decay=0.05, align_lr_scale=10)
    groups = _groups(task)
    delta = task.net.input_align.delta
    flow_conv = task.net.aligners[0].nets[0][0].weight
    backbone_conv = next(p for p in task.net.encoder.parameters() if p.ndim == 4)

    def group_of(p: torch.Tensor) -> dict:
        return next(g for g in groups if any(q is p for q in g["params"]))

    assert group_of(delta)["lr"] == 1e-2 and group_of(delta)["weight_decay"] == 0.0
    assert group_of(flow_conv)["lr"] == 1e-2 and group_of(flow_conv)["weight_decay"] == 0.05
    assert group_of(backbone_conv)["lr"] == 1e-3
    assert group_of(backbone_conv)["weight_decay"] == 0.05
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in task.parameters())


def test_without_aligners_one_rate() -> None:
    task = SegmentationTask(partial(RGBXSegmenter, backbone="resnet18"), num_classes=3, lr=1e-3)
    assert {g["lr"] for g in _groups(task)} == {1e-3}


def test_task_optimizer_is_fused_on_cpu() -> None:
    task = SegmentationTask(partial(RGBXSegmenter, backbone="resnet18"), num_classes=3, lr=1e-3)
    assert all(g["fused"] for g in _groups(task))


def test_fused_step_equals_the_reference_step() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for fused in (None, False):  # None: the helper's choice (fused on CPU)
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": params[:1], "weight_decay": 0.05}, {"params": params[1:]}]
        opt = adamw(groups, lr=1e-2, fused=fused) if fused is False else adamw(groups, lr=1e-2)
        assert all(bool(g["fused"]) is (fused is None) for g in opt.param_groups)
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0][0], weights[0])


def test_parameters_off_supported_devices_take_the_unfused_step() -> None:
    assert adamw([torch.nn.Parameter(torch.zeros(3))]).param_groups[0]["fused"]
    opt = adamw([torch.nn.Parameter(torch.zeros(3, device="meta"))])
    assert not opt.param_groups[0]["fused"]
