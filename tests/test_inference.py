"""``rgbx_fusion.load_model`` on a trained checkpoint, and multi-scale + flip ``test``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_overrides import run_stage, small_cli_args

import rgbx_fusion
from rgbx_fusion.errors import CheckpointError, WeightsMismatchError
from rgbx_fusion.experiment import build
from rgbx_fusion.models.tta import multiscale_probabilities
from rgbx_fusion.tasks.metrics import SegmentationMetrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "base.yaml"


@pytest.fixture(scope="module")
def trained(tiny_depth_root: Path, module_tmp: Path) -> tuple[Path, object]:
    tmp = module_tmp
    args = [
        "--config",
        str(CONFIG),
        *small_cli_args(tiny_depth_root, tmp),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
    ]
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    return ckpt, cli


def test_load_model_round_trip(trained: tuple[Path, object]) -> None:
    ckpt, cli = trained
    model = rgbx_fusion.load_model(ckpt)
    assert not model.training and model.num_classes == 8
    dm = cli.datamodule  # type: ignore[attr-defined]
    assert model.preprocess.aux_mean == pytest.approx(dm.aux_mean)
    assert model.preprocess.aux_std == pytest.approx(dm.aux_std)
    assert model.class_names == dm.class_names
    batch = next(iter(dm.test_dataloader()))
    reference = cli.task.net.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        torch.testing.assert_close(
            model(batch["rgb"], batch["aux"]), reference(batch["rgb"], batch["aux"])
        )
    sample = dm.base_dataset("test")[0]
    x_rgb, x_aux = model.preprocess(sample["rgb"], sample["aux"])
    normalised = dm.normalizer()(sample)
    torch.testing.assert_close(x_rgb[0], normalised["rgb"])
    torch.testing.assert_close(x_aux[0], normalised["aux"])
    labels = model.predict(sample["rgb"], sample["aux"], scales=(0.5, 1.0), flip=True)
    assert labels.shape == sample["mask"].shape


def test_load_model_errors(trained: tuple[Path, object], tmp_path: Path) -> None:
    ckpt, _ = trained
    with pytest.raises(CheckpointError, match="does not exist"):
        rgbx_fusion.load_model(tmp_path / "none.ckpt")
    payload = torch.load(ckpt, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, tmp_path / "cut.ckpt")
    with pytest.raises(WeightsMismatchError, match="missing keys"):
        rgbx_fusion.load_model(tmp_path / "cut.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="no network configuration"):
        rgbx_fusion.load_model(tmp_path / "bare.ckpt")


def test_load_model_never_fetches_backbone_weights(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    """A checkpoint of a ``pretrained: true`` recipe loads offline: its state dict has it all."""
    ckpt, _ = trained
    payload = torch.load(ckpt, weights_only=True)
    init = payload["hyper_parameters"]["network"].setdefault("init_args", {})
    init["pretrained"] = True
    init["backbone_weights"] = str(tmp_path / "gone" / "resnet18.pth")
    torch.save(payload, tmp_path / "pretrained_recipe.ckpt")
    model = rgbx_fusion.load_model(tmp_path / "pretrained_recipe.ckpt")
    reference = rgbx_fusion.load_model(ckpt)
    rgb, aux = torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, aux), reference(rgb, aux))


def test_cli_test_single_and_multiscale_flip(trained: tuple[Path, object], capsys) -> None:
    ckpt, _ = trained
    config = ckpt.parent.parent / "config.yaml"
    base = ["test", "--config", str(config), "--data.num_workers=0", f"--ckpt_path={ckpt}"]
    single = run_stage(base)
    assert single.task.test_mode == "single-scale"
    assert float(single.trainer.callback_metrics["test/eval_scales"]) == 1.0
    multi = run_stage([*base, "--eval.scales", "0.5,1,1.5", "--eval.flip"])
    assert multi.task.test_mode == "multi-scale 0.5,1,1.5 + flip"
    assert "test mode: multi-scale 0.5,1,1.5 + flip" in capsys.readouterr().out
    assert float(multi.trainer.callback_metrics["test/eval_flip"]) == 1.0
    model = rgbx_fusion.load_model(ckpt)
    expected = SegmentationMetrics(8, 255)
    with torch.no_grad():
        for batch in multi.datamodule.test_dataloader():
            probs = multiscale_probabilities(model, batch["rgb"], batch["aux"], (0.5, 1, 1.5), True)
            expected.update(probs.argmax(1), batch["mask"])
    got = multi.task.last_scores["test"]["mIoU"]
    torch.testing.assert_close(got, expected.scores()["mIoU"])
    assert np.isfinite(float(single.task.last_scores["test"]["mIoU"]))
