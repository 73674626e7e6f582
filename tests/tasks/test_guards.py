"""Training guards: non-finite loss/gradients, checkpoints of other networks, out of memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_overrides import run_stage, small_cli_args

from rgbx_fusion import __version__
from rgbx_fusion.errors import (
    ConfigError,
    DeviceMemoryError,
    NonFiniteError,
    WeightsMismatchError,
)
from rgbx_fusion.experiment import build
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.tasks.guards import check_checkpoint_fits, describe_batch
from rgbx_fusion.tasks.segmentation import SegmentationTask

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"


def _args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIG),
        *small_cli_args(root, tmp_path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--model.network.init_args.backbone=resnet10t",
        "--model.network.init_args.decoder.init_args.channels=32",
        *extra,
    ]


def _fit(args: list[str]) -> Any:
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    return cli


def _nan_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    original = SegmentationTask._loss

    def loss(self: SegmentationTask, logits: torch.Tensor, mask: torch.Tensor) -> Any:
        total, parts = original(self, logits, mask)
        return total * float("nan"), parts

    monkeypatch.setattr(SegmentationTask, "_loss", loss)


def test_nan_loss_stops_and_names_the_batch_samples(
    tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_loss(monkeypatch)
    with pytest.raises(NonFiniteError, match=r"non-finite loss .*step 0; samples: \d{5}, \d{5}"):
        _fit(_args(tiny_depth_root, tmp_path))


def test_nan_loss_skip_leaves_the_weights_unchanged(
    tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_loss(monkeypatch)
    cli = build(args=_args(tiny_depth_root, tmp_path, "--model.nonfinite=skip"))
    before = {k: v.clone() for k, v in cli.task.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="skipped the update"):
        cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    after = cli.task.state_dict()
    changed = [
        k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])
    ]
    assert not [k for k in changed if "running" not in k], "no parameter moved"


def test_infinite_gradient_stops_with_the_parameter_name(
    tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SegmentationTask.training_step

    def step(self: SegmentationTask, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        head = next(p for n, p in self.net.named_parameters() if n.startswith("head"))
        head.register_hook(lambda g: g * float("inf"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "training_step", step)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of net\.head"):
        _fit(_args(tiny_depth_root, tmp_path))


def test_describe_batch_names_samples_and_files() -> None:
    meta = [{"name": "a", "rgb_path": "x/a.png"}, {"name": "b"}]
    assert describe_batch(meta) == "a (x/a.png), b"


def test_cuda_out_of_memory_becomes_advice(
    tiny_depth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def step(self: SegmentationTask, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SegmentationTask, "training_step", step)
    with pytest.raises(DeviceMemoryError) as info:
        run_stage(["fit", *_args(tiny_depth_root, tmp_path)])
    message = str(info.value)
    assert "Tried to allocate 2.00 GiB" in message
    assert "--data.batch_size (now 2)" in message
    assert "--data.train_size (now [48, 64])" in message or "(now (48, 64))" in message
    assert "precision=bf16-mixed" in message


@pytest.fixture(scope="module")
def trained(tiny_depth_root: Path, module_tmp: Path) -> Path:
    out = module_tmp
    cli = run_stage(["fit", *_args(tiny_depth_root, out)])  # as from the command line
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def test_checkpoint_carries_version_class_names_and_config(trained: Path) -> None:
    meta = torch.load(trained, map_location="cpu", weights_only=True)["rgbx_fusion"]
    assert meta["version"] == __version__
    assert len(meta["class_names"]) == 8 and meta["class_names"][0] == "floor"
    config = yaml.safe_load(meta["config"])
    assert config["model"]["network"]["init_args"]["backbone"] == "resnet10t"
    assert config["data"]["batch_size"] == 2


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("--model.network.init_args.backbone=resnet18", "backbone: checkpoint 'resnet10t'"),
        (
            "--model.network.init_args.fusion=rgbx_fusion.models.fusion.channel_attention.SEFusion",
            "fusion: checkpoint AddFusion, now SEFusion",
        ),
    ],
)
def test_checkpoint_of_another_network_lists_the_keys(
    override: str, hint: str, trained: Path, tiny_depth_root: Path, tmp_path: Path
) -> None:
    # The CLI rebuilds the network from the checkpoint; Python callers pass their own model.
    cli = build(args=_args(tiny_depth_root, tmp_path, override))
    with pytest.raises(WeightsMismatchError) as info:
        cli.trainer.test(cli.task, datamodule=cli.datamodule, ckpt_path=trained, weights_only=True)
    message = str(info.value)
    assert hint in message
    assert "keys" in message and "net." in message


def test_checkpoint_with_other_num_classes_lists_the_head(trained: Path) -> None:
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    net = checkpoint["hyper_parameters"]["network"]["init_args"]

    def network(num_classes: int, aux_channels: int) -> RGBXSegmenter:
        return RGBXSegmenter(num_classes, aux_channels, backbone=net["backbone"])

    task = SegmentationTask(network, num_classes=5)
    task.hparams["network"] = checkpoint["hyper_parameters"]["network"]
    with pytest.raises(WeightsMismatchError, match="num_classes: checkpoint 8, now 5"):
        check_checkpoint_fits(task, checkpoint)


def test_fusion_with_a_fixed_width_fails_at_build_time() -> None:
    from rgbx_fusion.models.fusion.simple import AddFusion

    # The CLI rejects 'channels' in a fusion's init_args when parsing; from Python a factory
    # can still fix it, and the network says so instead of a shape error in forward.
    with pytest.raises(ConfigError, match=r"AddFusion has channels=7 but its encoder stage"):
        RGBXSegmenter(8, 1, backbone="resnet10t", fusion=lambda c: AddFusion(7))
