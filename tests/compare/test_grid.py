"""Compare-config validation and grid expansion."""

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

BASE = str(Path(__file__).resolve().parents[2] / "configs" / "synthetic_mid_add.yaml")
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


def test_single_seed_integer_and_default_seed() -> None:
    variants = [{"name": "a"}]
    assert parse_compare_config({"base": BASE, "seeds": 3, "variants": variants}).seeds == (3,)
    config = parse_compare_config({"base": BASE, "variants": variants})
    assert config.seeds == (0,) and config.variants == (Variant("a", {}),)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([1, 2], "top level"),
        ({"variants": [{"name": "a"}]}, "base"),
        ({"base": "nope/missing.yaml", "variants": [{"name": "a"}]}, "base"),
        ({"base": BASE, "variants": [{"name": "a"}], "sedes": [0]}, "unknown keys"),
        ({"base": BASE, "seeds": [], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE, "seeds": ["0"], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE, "seeds": [0, 0], "variants": [{"name": "a"}]}, "seeds"),
        ({"base": BASE}, "variants"),
        ({"base": BASE, "variants": {"a": {}}}, "variants"),
        ({"base": BASE, "variants": [{"overrides": {}}]}, "variants[0]"),
        ({"base": BASE, "variants": [{"name": "a/b"}]}, "variants[0].name"),
        ({"base": BASE, "variants": [{"name": "a", "over": {}}]}, "variants[0]"),
        ({"base": BASE, "variants": [{"name": "a", "overrides": [1]}]}, "variants[0].overrides"),
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


def test_load_resolves_base_relative_to_the_config_and_reports_bad_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(BASE).parents[1]
    monkeypatch.chdir(tmp_path)  # the base path is not relative to the working directory
    config = load_compare_config(repo / "configs" / "compare" / "synthetic_depth.yaml")
    assert config.base.resolve() == Path(BASE).resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        load_compare_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_compare_config(bad)
