"""Deployment from a trained checkpoint: ``rgbx-fusion export`` and predicting on own images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from cli_overrides import run_stage, small_cli_args
from PIL import Image

from rgbx_fusion.cli import main
from rgbx_fusion.errors import CheckpointError
from rgbx_fusion.experiment import build

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def trained(tiny_depth_root: Path, module_tmp: Path) -> Path:
    """A checkpoint of the quickstart recipe after two training steps on the tiny data."""
    out = module_tmp
    args = [
        "--config",
        str(CONFIGS / "synthetic" / "base.yaml"),
        *small_cli_args(tiny_depth_root, out),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
    ]
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    return Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]


def _export(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", *args])
    assert exc.value.code == 0


@pytest.mark.export
def test_export_onnx_with_dynamic_batch_prints_parity(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    _export(["--ckpt", str(trained), "--format", "onnx", "--dynamic-batch", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "parity (onnxruntime vs PyTorch, batch 1, 3): max |Δlogit| =" in printed
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["max_abs_diff"] <= 1e-3
    assert (meta["height"], meta["width"]) == (48, 64), "size defaults to the run's eval_size"
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    assert meta["normalization"]["aux_mean"] == list(ckpt["RGBXDataModule"]["aux_mean"])
    assert meta["class_names"][0] == "floor" and meta["inputs"]["rgb"] == ["batch", 3, 48, 64]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "aux"]
    feeds = {
        "rgb": np.zeros((2, 3, 48, 64), np.float32),
        "aux": np.zeros((2, 1, 48, 64), np.float32),
    }
    (logits,) = session.run(["logits"], feeds)
    assert logits.shape == (2, 8, 48, 64)


@pytest.mark.export
def test_export_torch_export_at_a_given_size(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.pt2"
    args = ["--ckpt", str(trained), "--format", "torch_export", "--size", "32x40"]
    _export([*args, "--out", str(out)])
    assert "parity (reloaded ExportedProgram vs PyTorch, batch 1)" in capsys.readouterr().out
    program = torch.export.load(out)
    logits = program.module()(torch.zeros(1, 3, 32, 40), torch.zeros(1, 1, 32, 40))
    assert logits.shape == (1, 8, 32, 40)


def test_export_of_a_missing_checkpoint_is_a_typed_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        main(["--traceback", "export", "--ckpt", str(tmp_path / "missing.ckpt")])
    with pytest.raises(SystemExit) as exc:  # without --traceback: the message alone
        main(["export", "--ckpt", str(tmp_path / "missing.ckpt")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "does not exist" in err and "Traceback" not in err


def _own_images(root: Path, names: list[str], folder: Path) -> tuple[Path, Path]:
    """Copy some frames of the generated dataset into two plain folders, no labels."""
    rgb_dir, depth_dir = folder / "camera", folder / "depth_mm"
    rgb_dir.mkdir(parents=True)
    depth_dir.mkdir()
    for name in names:
        shutil.copy(root / "rgb" / f"{name}.png", rgb_dir / f"frame_{name}.png")
        shutil.copy(root / "depth" / f"{name}.png", depth_dir / f"frame_{name}.png")
    return rgb_dir, depth_dir


def test_predict_on_own_rgbd_folders_uses_the_checkpoint_normalisation(
    trained: Path, tiny_depth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb_dir, depth_dir = _own_images(tiny_depth_root, ["00016", "00017", "00018"], tmp_path)
    config = trained.parent.parent / "config.yaml"
    assert yaml.safe_load(config.read_text())["data"]["eval_size"] == [48, 64]
    out = tmp_path / "preds"
    cli = run_stage(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={trained}",
            f"--output_dir={out}",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.num_workers=0",
            "--data.eval_size=null",  # predict at the images' own resolution
            "--data.dataset.class_path=rgbx_fusion.data.sets.images.ImageFolderRGBX",
            f"--data.dataset.init_args.rgb_dir={rgb_dir}",
            f"--data.dataset.init_args.aux_dir={depth_dir}",
            "--data.dataset.init_args.depth_format=png16_mm",
            f"--data.dataset.init_args.checkpoint={trained}",
            "--data.dataset.init_args.K=[[60, 0, 39.5], [0, 60, 29.5], [0, 0, 1]]",
        ]
    )
    assert "estimated" not in capsys.readouterr().err, "statistics come from the checkpoint"
    saved = torch.load(trained, map_location="cpu", weights_only=True)["RGBXDataModule"]
    assert cli.datamodule.aux_mean == tuple(saved["aux_mean"])
    labels = sorted((out / "labels").glob("*.png"))
    assert [p.name for p in labels] == [f"frame_{n}.png" for n in ("00016", "00017", "00018")]
    label = np.array(Image.open(labels[0]))
    assert label.shape == (60, 80) and label.max() < 8
    overlay = np.array(Image.open(out / "overlays" / "frame_00016.png"))
    assert overlay.shape == (60, 80, 3)
