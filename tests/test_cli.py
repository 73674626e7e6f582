"""CLI tests: stages, checkpoints, predict and the toolkit commands (configs: test_configs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_overrides import run_stage, small_cli_args
from PIL import Image

from rgbx_fusion.cli import COMMANDS, main
from rgbx_fusion.errors import DatasetError
from rgbx_fusion.experiment import build

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _train_tiny(root: Path, tmp_path: Path) -> Path:
    config = CONFIG_DIR / "synthetic" / "base.yaml"
    args = [
        "--config",
        str(config),
        *small_cli_args(root, tmp_path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--model.network.init_args.backbone=resnet18",
    ]
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
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
    cli = build(args=["--config", str(saved), "--data.num_workers=0"])
    cli.trainer.test(cli.task, datamodule=cli.datamodule, ckpt_path=str(ckpt), weights_only=True)
    assert 0.0 <= float(cli.task.last_scores["test"]["mIoU"]) <= 1.0
    out = tmp_path / "pred"
    run_stage(
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
    config = CONFIG_DIR / "synthetic" / "base.yaml"
    with pytest.raises(SystemExit):
        build(args=["--config", str(config), "--model.lrr=0.1"])
    err = capsys.readouterr().err
    assert "lrr" in err and "lr" in err


def test_list_and_prepare_commands(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["list", "fusions"])
    assert exc.value.code == 0
    listing = capsys.readouterr().out
    assert "AddFusion" in listing and "CMXFusion" in listing and "GFLOPs" in listing
    with pytest.raises(SystemExit) as exc:
        main(["list", "multi-fusions", "--channels", "8", "--size", "8x8"])
    assert exc.value.code == 0
    listing = capsys.readouterr().out
    assert "MultiSumFusion" in listing and "PairwiseEachFusion" in listing
    assert "3 streams" in listing and "per pair" in listing
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


def test_fit_test_stacks_layers_into_one_run_and_writes_its_scores(
    tiny_depth_root: Path, tmp_path: Path, capsys
) -> None:
    args = [
        "fit-test",
        "--config",
        str(CONFIG_DIR / "synthetic" / "base.yaml"),
        "--config",
        str(CONFIG_DIR / "synthetic" / "rgb_only.yaml"),
        *small_cli_args(tiny_depth_root, tmp_path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.log_every_n_steps=1",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    found = list(tmp_path.rglob("test_results.json"))
    assert len(found) == 1, found  # two layers, one run
    result = json.loads(found[0].read_text())
    assert 0.0 <= result["mIoU"] <= 1.0 and len(result["iou"]) == 8
    assert result["checkpoint"] and Path(result["checkpoint"]).is_file()
    resolved = yaml.safe_load((found[0].parent / "config.yaml").read_text())
    assert resolved["model"]["network"]["init_args"]["fusion_stage"] == "rgb_only"
    assert "cushion_green" in capsys.readouterr().out
    # TensorBoard curves and the CSV log sit in the run's version folder
    assert list(found[0].parent.glob("events.out.tfevents.*"))
    header = (found[0].parent / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/lr", "val/mIoU", "test/mIoU"} <= set(header)


def test_help_lists_every_subcommand_with_a_summary(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name}" in out and summary in out


@pytest.mark.parametrize("name", [n for n in COMMANDS if COMMANDS[n][0] != "stages"])
def test_every_toolkit_option_has_help_text(name: str) -> None:
    """argparse commands: every option of every (sub)parser says what it does."""
    import argparse
    import importlib

    module = importlib.import_module(f"rgbx_fusion.cli.{COMMANDS[name][0]}")
    if not hasattr(module, "parser"):  # list builds its parser inline
        return
    pending = [module.parser()]
    while pending:
        parser = pending.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            elif action.option_strings and action.dest != "help":
                assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
                assert all("_" not in o for o in action.option_strings), action.option_strings


def test_stage_help_names_the_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "rgbx-fusion fit" in out and "--ckpt_path" in out and "--trainer.max_epochs" in out


def test_an_error_prints_its_message_without_a_traceback(tmp_path: Path, capsys) -> None:
    """`fit` before `prepare`: the missing dataset, named, and exit status 1."""
    missing = tmp_path / "not_prepared"
    args = [
        "fit",
        "--config",
        str(CONFIG_DIR / "synthetic" / "base.yaml"),
        f"--data.dataset.init_args.root={missing}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--data.num-workers=0",  # the other spelling of a config key is accepted
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err and len(err.splitlines()) <= 4
    with pytest.raises(DatasetError):
        main(["--traceback", *args])


def test_unknown_command_suggests_the_nearest(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compar"])
    assert exc.value.code == 2
    assert "did you mean 'compare'" in capsys.readouterr().err


def test_toolkit_flags_accept_the_underscore_spelling(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                *["prepare", "synthetic", "--root", str(tmp_path / "s"), "--num_train=2"],
                *["--num_val=1", "--num-test=1", "--height=32", "--width=48", "--workers=1"],
            ]
        )
    assert exc.value.code == 0
    assert len((tmp_path / "s" / "splits" / "train.txt").read_text().split()) == 2


def test_nothing_outside_the_cli_package_imports_it() -> None:
    """The layers point down: the library never imports rgbx_fusion.cli."""
    import ast

    package = Path(__file__).resolve().parents[1] / "rgbx_fusion"
    offenders = []
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "rgbx_fusion.cli" or n.startswith("rgbx_fusion.cli.") for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, offenders
