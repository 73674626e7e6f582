"""Training speed options: channels_last, torch.compile, bf16-mixed, the cheap non-finite guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from cli_overrides import small_cli_args

from rgbx_fusion.experiment import build
from rgbx_fusion.tasks.guards import NonFiniteGuard
from rgbx_fusion.tasks.segmentation import SegmentationTask

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"


def _fit(root: Path, tmp_path: Path, *extra: str) -> Any:
    args = [
        "--config",
        str(CONFIG),
        *small_cli_args(root, tmp_path),
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--model.network.init_args.backbone=resnet10t",
        "--model.network.init_args.decoder.init_args.channels=16",
        *extra,
    ]
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    return cli


def _changed(before: dict[str, torch.Tensor], task: SegmentationTask) -> list[str]:
    after = task.state_dict()
    return [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]


def test_channels_last_converts_weights_and_inputs(tiny_depth_root: Path, tmp_path: Path) -> None:
    seen: list[bool] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen.extend(t.is_contiguous(memory_format=torch.channels_last) for t in args)

    cli = build(
        args=[
            "--config",
            str(CONFIG),
            *small_cli_args(tiny_depth_root, tmp_path),
            "--model.network.init_args.backbone=resnet10t",
            "--model.channels_last=true",
        ]
    )
    conv = next(m for m in cli.task.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cli.task.net.register_forward_pre_hook(hook)
    cli.task.eval()(torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32))
    assert seen == [True, True]


def test_bf16_mixed_channels_last_fit_on_cpu(tiny_depth_root: Path, tmp_path: Path) -> None:
    cli = _fit(
        tiny_depth_root,
        tmp_path,
        "--trainer.precision=bf16-mixed",
        "--model.channels_last=true",
    )
    assert cli.trainer.global_step == 1
    assert all(torch.isfinite(p).all() for p in cli.task.parameters())


@pytest.mark.compile
@pytest.mark.parametrize(
    "backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)]
)  # Inductor builds C++ kernels: about a minute on 2 CPU cores
def test_compiled_network_fits_one_step(
    backend: str, tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_module = torch.nn.Module.compile
    options: list[dict[str, Any]] = []

    def compile_with(self: torch.nn.Module, **kwargs: Any) -> None:
        options.append(kwargs)
        compile_module(self, backend=backend, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with)
    cli = _fit(tiny_depth_root, tmp_path, "--model.compile=true")
    assert cli.trainer.global_step == 1
    assert options == [{"dynamic": False}]
    assert cli.task.net._compiled_call_impl is not None
    # compiled in place: checkpoint keys are the eager network's
    assert not any("_orig_mod" in k for k in cli.task.state_dict())


def test_nonfinite_off_skips_the_check(
    tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SegmentationTask._loss

    def loss(self: SegmentationTask, logits: torch.Tensor, mask: torch.Tensor) -> Any:
        total, parts = original(self, logits, mask)
        return total * float("nan"), parts

    monkeypatch.setattr(SegmentationTask, "_loss", loss)
    reads: list[int] = []
    monkeypatch.setattr(
        "rgbx_fusion.tasks.guards.NonFiniteGuard.check", lambda *a, **k: reads.append(1)
    )
    cli = _fit(tiny_depth_root, tmp_path, "--model.nonfinite=off")
    assert cli.trainer.global_step == 1 and not reads and not cli.task._guard.losses


def test_guard_reads_losses_and_gradients_together() -> None:
    net = torch.nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    guard = NonFiniteGuard()
    guard.add_loss(torch.tensor(1.0), [{"name": "a"}])
    guard.add_loss(torch.tensor(2.0), [{"name": "b"}])
    assert guard.check(net) is None and [m["name"] for m in guard.checked_meta] == ["a", "b"]
    assert net.weight.grad is not None
    net.weight.grad[0, 0] = float("inf")
    assert guard.check(net) == ("gradient of weight", pytest.approx(float("nan"), nan_ok=True))
    assert guard.check(net, gradients=False) is None  # a gradient scaler handles inf gradients
    guard.add_loss(torch.tensor(float("nan")), None)
    what, _ = guard.check(net) or ("", 0.0)
    assert what == "loss" and not guard.losses


@pytest.mark.slow
@pytest.mark.compile
def test_inductor_trains_a_mit_network_at_two_sizes() -> None:
    # A second input size makes torch.compile retrace; with symbolic sizes Inductor
    # fails to lower timm's MiT, so the task compiles static shapes. About 4 minutes.
    from rgbx_fusion.bench.benchmark import network_builders, network_init_args

    args = network_init_args(
        [CONFIG.parents[1] / "nyudv2" / "base.yaml", CONFIG.parents[1] / "nyudv2" / "cmx_b2.yaml"]
    )
    builders = network_builders({**args, "backbone": "mit_b0"}, num_classes=3, aux_channels=1)
    task = SegmentationTask(lambda n, a: builders["model"](), 3, 1, compile=True)
    eager = builders["model"]()
    eager.load_state_dict(task.net.state_dict())
    for net in (task.net, eager):
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout2d):
                m.p = 0.0
    for size in ((32, 48), (48, 64)):
        rgb, aux = torch.randn(2, 3, *size), torch.randn(2, 1, *size)
        results = []
        for net in (task.net, eager):
            net.zero_grad()
            out = net(rgb, aux)
            out.square().mean().backward()
            results.append([out, *(p.grad for p in net.parameters())])
        for got, ref in zip(*results, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
