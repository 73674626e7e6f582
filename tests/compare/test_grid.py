"""Compare-config validation, config layers and grid expansion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rgbx_fusion.compare.grid import (
    Variant,
    expand_grid,
    format_value,
    load_compare_config,
    parse_compare_config,
)
from rgbx_fusion.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = str(CONFIGS / "synthetic" / "base.yaml")
THERMAL = str(CONFIGS / "synthetic" / "thermal.yaml")
RIG = str(CONFIGS / "synthetic" / "rig.yaml")
AFFINE = str(CONFIGS / "synthetic" / "affine_align.yaml")
ADD = {"class_path": "rgbx_fusion.models.fusion.simple.AddFusion"}
SE = {"class_path": "rgbx_fusion.models.fusion.channel_attention.SEFusion"}


def test_grid_is_the_cartesian_product_with_readable_names() -> None:
    variants = expand_grid(
        {
            "model.network.init_args.fusion": [ADD, SE],
            "model.network.init_args.feedback": [False, True],
        }
    )
    assert [v.name for v in variants] == [
        "fusion-AddFusion_feedback-False",
        "fusion-AddFusion_feedback-True",
        "fusion-SEFusion_feedback-False",
        "fusion-SEFusion_feedback-True",
    ]
    assert variants[3].overrides == {
        "model.network.init_args.fusion": SE,
        "model.network.init_args.feedback": True,
    }
    assert variants[3].config == ()


def test_variants_and_grid_combine_and_cli_args_merge_overrides() -> None:
    config = parse_compare_config(
        {
            "base": BASE,
            "seeds": [1, 2],
            "overrides": {"trainer.max_epochs": 3, "model.lr": 0.01},
            "variants": [{"name": "rgb", "overrides": {"model.lr": 0.1}}],
            "grid": {"model.network.init_args.fusion": [ADD, None]},
        }
    )
    assert [v.name for v in config.variants] == ["rgb", "fusion-AddFusion", "fusion-none"]
    assert config.seeds == (1, 2)
    args = config.cli_args(config.variants[0], 2)
    assert args == ["--trainer.max_epochs=3", "--model.lr=0.1", "--seed_everything=2"]
    assert config.cli_args(config.variants[2], 1)[-2] == "--model.network.init_args.fusion=null"
    assert format_value(ADD) == '{"class_path": "rgbx_fusion.models.fusion.simple.AddFusion"}'
    assert format_value("early") == "early"


def test_run_args_stack_base_layers_then_variant_layers_then_overrides() -> None:
    config = parse_compare_config(
        {
            "base": [BASE, THERMAL],
            "overrides": {"trainer.max_epochs": 3},
            "variants": [
                {"name": "mid_add"},
                {"name": "rig", "config": RIG, "overrides": {"data.hflip": True}},
                {"name": "rig_aligned", "config": [RIG, AFFINE]},
            ],
        }
    )
    assert config.base == (Path(BASE), Path(THERMAL))
    plain, rig, aligned = config.variants
    assert plain.config == () and rig.config == (Path(RIG),)
    assert aligned.config == (Path(RIG), Path(AFFINE))
    assert config.layers(aligned) == (Path(BASE), Path(THERMAL), Path(RIG), Path(AFFINE))
    assert config.config_args(plain) == ["--config", BASE, "--config", THERMAL]
    assert config.run_args(rig, 7) == [
        *("--config", BASE, "--config", THERMAL, "--config", RIG),
        "--trainer.max_epochs=3",
        "--data.hflip=true",
        "--seed_everything=7",
    ]


def test_single_seed_integer_and_default_seed() -> None:
    variants = [{"name": "a"}]
    assert parse_compare_config({"base": BASE, "seeds": 3, "variants": variants}).seeds == (3,)
    config = parse_compare_config({"base": BASE, "variants": variants})
    assert config.seeds == (0,) and config.variants == (Variant("a", {}),)
    assert config.base == (Path(BASE),)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([1, 2], "top level"),
        ({"variants": [{"name": "a"}]}, "base"),
        ({"base": "nope/missing.yaml", "variants": [{"name": "a"}]}, "base: .*nope/missing"),
        ({"base": [BASE, "nope.yaml"], "variants": [{"name": "a"}]}, "base[1]: .*nope.yaml"),
        ({"base": [], "variants": [{"name": "a"}]}, "base"),
        ({"base": {"a": BASE}, "variants": [{"name": "a"}]}, "base"),
        ({"base": [BASE, 3], "variants": [{"name": "a"}]}, "base[1]"),
        ({"base": BASE, "variants": [{"name": "a"}], "sedes": [0]}, "unknown keys"),
        ({"base": BASE, "seeds": [], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE, "seeds": ["0"], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE, "seeds": [0, 0], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE}, "variants"),
        ({"base": BASE, "variants": {"a": {}}}, "variants"),
        ({"base": BASE, "variants": [{"overrides": {}}]}, "variants[0]"),
        ({"base": BASE, "variants": [{"name": "a/b"}]}, "variants[0].name"),
        ({"base": BASE, "variants": [{"name": "a", "over": {}}]}, "variants[0]: unknown keys"),
        ({"base": BASE, "variants": [{"name": "a", "configs": RIG}]}, "name/config/overrides"),
        ({"base": BASE, "variants": [{"name": "a", "overrides": [1]}]}, "variants[0].overrides"),
        ({"base": BASE, "variants": [{"name": "a", "config": "x.yaml"}]}, "variants[0].config: "),
        (
            {"base": BASE, "variants": [{"name": "a"}, {"name": "b", "config": [RIG, "y.yaml"]}]},
            "variants[1].config[1]: .*y.yaml",
        ),
        ({"base": BASE, "variants": [{"name": "a", "config": []}]}, "variants[0].config"),
        ({"base": BASE, "variants": [{"name": "a"}], "overrides": {"--x": 1}}, "overrides"),
        ({"base": BASE, "variants": [{"name": "a"}, {"name": "a"}]}, "duplicated names"),
        ({"base": BASE, "grid": {"model.lr": []}}, "grid.model.lr"),
        ({"base": BASE, "grid": {"model.lr": 0.1}}, "grid.model.lr"),
        ({"base": BASE, "grid": []}, "grid"),
    ],
)
def test_invalid_configs_raise_config_error_naming_the_key(data: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_compare_config(data)


def test_a_layer_must_be_a_training_config(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"variants\[0\]\.config: .*list.yaml is not a training"):
        parse_compare_config({"base": BASE, "variants": [{"name": "a", "config": str(listing)}]})
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"base\[1\]: .*broken.yaml is not valid YAML"):
        parse_compare_config({"base": [BASE, str(broken)], "variants": [{"name": "a"}]})


def test_load_resolves_layers_relative_to_the_config_and_reports_bad_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the layer paths are not relative to the working directory
    config = load_compare_config(CONFIGS / "compare" / "synthetic_thermal.yaml")
    assert [p.resolve() for p in config.base] == [Path(BASE), Path(THERMAL)]
    aligned = next(v for v in config.variants if v.name == "rig_mid_add_aligned")
    assert [p.resolve() for p in aligned.config] == [Path(RIG), Path(AFFINE)]
    assert config.run_args(aligned, 0)[:8] == [
        *("--config", str(config.base[0]), "--config", str(config.base[1])),
        *("--config", str(aligned.config[0]), "--config", str(aligned.config[1])),
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        load_compare_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_compare_config(bad)


def test_shipped_compare_configs_use_the_recipe_layers() -> None:
    """A compare variant and a hand-run ``fit`` stack the same files of configs/."""
    stages = load_compare_config(CONFIGS / "compare" / "synthetic_stages.yaml")
    assert [v.name for v in stages.variants] == [
        "early",
        "mid_add",
        "mid_se",
        "mid_iaff",
        "mid_cmx",
        "mid_cross_attention",
        "late",
    ]
    assert stages.overrides == {} and stages.seeds == (0,)  # the recipes' own budget
    for v in stages.variants:
        expected = () if v.name == "mid_add" else (CONFIGS / "synthetic" / f"{v.name}.yaml",)
        assert tuple(p.resolve() for p in v.config) == expected and not v.overrides
    for name in ("synthetic_depth", "synthetic_thermal"):
        config = load_compare_config(CONFIGS / "compare" / f"{name}.yaml")
        assert len(config.variants) == 14 and config.overrides["trainer.max_epochs"] == 3
