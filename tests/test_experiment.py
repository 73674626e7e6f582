"""The config-to-objects API: layers and overrides → resolved config → objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.experiment import build, config_args, override_args, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_become_cli_arguments() -> None:
    args = override_args({"trainer.max_epochs": 2, "data.train_size": [48, 64], "x": "a b"})
    assert args == ["--trainer.max_epochs=2", "--data.train_size=[48, 64]", "--x=a b"]
    assert override_args(["--model.lr=0.1"]) == ["--model.lr=0.1"]
    assert config_args(["a.yaml", Path("b.yaml")], {"k": True}) == [
        *["--config", "a.yaml", "--config", "b.yaml", "--k=true"]
    ]


def test_layers_stack_and_overrides_win_without_reading_data() -> None:
    layers = [CONFIGS / "synthetic" / "base.yaml", CONFIGS / "synthetic" / "mid_se.yaml"]
    cfg = resolve(layers, {"model.lr": 0.5, "data.dataset.init_args.root": "/nonexistent"})
    assert cfg.model.lr == 0.5
    assert cfg.model.network.init_args.fusion.class_path.endswith("SEFusion")
    assert cfg.model.network.init_args.decoder.init_args.channels == 96  # from the base
    assert cfg.trainer.default_root_dir == "runs/synthetic_mid_se"  # from the variant


def test_unpickling_checkpoints_is_refused(tiny_depth_root: Path, tmp_path: Path) -> None:
    overrides = {
        "data.dataset.init_args.root": str(tiny_depth_root),
        "trainer.default_root_dir": str(tmp_path),
        "weights_only": False,
    }
    with pytest.raises(ConfigError, match="weights_only"):
        build([CONFIGS / "synthetic" / "base.yaml"], overrides)


def test_built_objects_are_linked_and_record_their_config(
    tiny_depth_root: Path, tmp_path: Path
) -> None:
    exp = build(
        [CONFIGS / "synthetic" / "base.yaml", CONFIGS / "synthetic" / "rgb_only.yaml"],
        {
            "data.dataset.init_args.root": str(tiny_depth_root),
            "trainer.default_root_dir": str(tmp_path),
        },
    )
    assert exp.task.num_classes == exp.datamodule.num_classes == 8  # linked, never typed
    assert exp.task.net.fusion_stage == "rgb_only"
    assert "fusion_stage: rgb_only" in (exp.task.run_config or "")
    network = exp.task.hparams["network"]  # plain data: a checkpoint alone rebuilds it
    assert network["init_args"]["fusion_stage"] == "rgb_only"
    assert [type(lg).__name__ for lg in exp.trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]
