"""CLI smoke tests: every YAML in configs/ trains for one step on generated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_overrides import small_cli_args
from PIL import Image

from rgbx_fusion.cli import build_cli, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
TRAIN_CONFIGS = [c for c in CONFIGS if "compare" not in c.parts]


def _synthetic_root(config: Path, depth: Path, thermal: Path) -> Path:
    data = yaml.safe_load(config.read_text())["data"]
    modality = data["dataset"].get("init_args", {}).get("modality", "depth")
    return thermal if modality == "thermal" else depth


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run(
    config: Path, tiny_depth_root: Path, tiny_thermal_root: Path, tmp_path: Path
) -> None:
    text = yaml.safe_load(config.read_text())
    ds_class = text["data"]["dataset"]["class_path"]
    extra = []
    if not ds_class.endswith("SyntheticRGBX"):
        # Recipes for real datasets: same model, swapped onto generated data, offline.
        extra = [
            "--data.dataset=rgbx_fusion.data.sets.synthetic.SyntheticRGBX",
            "--model.network.init_args.pretrained=false",
            "--trainer.precision=32-true",
        ]
        if "backbone_weights" in text["model"]["network"].get("init_args", {}):
            extra.append("--model.network.init_args.backbone_weights=null")
    root = _synthetic_root(config, tiny_depth_root, tiny_thermal_root)
    args = [
        "fit",
        "--config",
        str(config),
        *extra,
        *small_cli_args(root, tmp_path),
        "--trainer.fast_dev_run=true",
    ]
    build_cli(args)


def _train_tiny(root: Path, tmp_path: Path) -> Path:
    config = Path(__file__).resolve().parents[1] / "configs" / "synthetic_mid_add.yaml"
    args = [
        "--config",
        str(config),
        *small_cli_args(root, tmp_path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--model.network.init_args.backbone=resnet18",
    ]
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert ckpt.is_file()
    return ckpt


def test_checkpoint_reloads_through_the_cli_and_predict_writes_files(
    tiny_depth_root: Path, tmp_path: Path
) -> None:
    ckpt = _train_tiny(tiny_depth_root, tmp_path)
    run_dir = ckpt.parent.parent
    saved = run_dir / "config.yaml"
    assert saved.is_file(), "every run saves its resolved config"
    resolved = yaml.safe_load(saved.read_text())
    assert resolved["model"]["network"]["init_args"]["fusion_stage"] == "mid"
    hparams = torch.load(ckpt, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert hparams["num_classes"] == 8  # linked from the data, stored with the weights
    # test from the saved config + checkpoint (weights_only loading)
    cli = build_cli(["--config", str(saved), "--data.num_workers=0"], run=False)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), weights_only=True)
    assert 0.0 <= float(cli.model.last_scores["test"]["mIoU"]) <= 1.0
    out = tmp_path / "pred"
    build_cli(
        [
            "predict",
            "--config",
            str(saved),
            "--data.num_workers=0",
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    labels = sorted((out / "labels").glob("*.png"))
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name for p in labels] == [f"{i:05d}.png" for i in range(16, 20)]
    assert len(overlays) == 4
    lab = np.array(Image.open(labels[0]))
    assert lab.shape == (48, 64) and lab.max() < 8


def test_unknown_config_key_is_rejected(tiny_depth_root: Path, tmp_path: Path, capsys) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "synthetic_mid_add.yaml"
    with pytest.raises(SystemExit):
        build_cli(["--config", str(config), "--model.lrr=0.1"], run=False)
    err = capsys.readouterr().err
    assert "lrr" in err and "lr" in err


def test_list_and_prepare_commands(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["list", "fusions"])
    assert exc.value.code == 0
    listing = capsys.readouterr().out
    assert "AddFusion" in listing and "CMXFusion" in listing and "GFLOPs" in listing
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "prepare",
                "synthetic",
                "--root",
                str(tmp_path / "s"),
                "--num-train",
                "2",
                "--num-val",
                "1",
                "--num-test",
                "1",
                "--height",
                "32",
                "--width",
                "48",
                "--workers",
                "1",
            ]
        )
    assert exc.value.code == 0
    assert (tmp_path / "s" / "dataset.json").is_file()


def test_fit_test_trains_several_configs_into_one_table(
    tiny_depth_root: Path, tmp_path: Path, capsys
) -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    overrides = [
        f"--override={o}"
        for o in (
            *small_cli_args(tiny_depth_root, tmp_path)[1:],
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
        )
    ]
    out = tmp_path / "results.json"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit-test",
                "--config",
                str(configs / "synthetic_mid_add.yaml"),
                "--config",
                str(configs / "synthetic_rgb_only.yaml"),
                "--root",
                str(tiny_depth_root),
                "--out",
                str(out),
                *overrides,
            ]
        )
    assert exc.value.code == 0
    import json

    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["synthetic_mid_add", "synthetic_rgb_only"]
    for r in results:
        assert 0.0 <= r["mIoU"] <= 1.0 and len(r["iou"]) == 8
    assert "synthetic_rgb_only" in capsys.readouterr().out
