"""Config smoke tests: every recipe in configs/ trains for one step on generated data.

A recipe is a family's ``base.yaml`` alone, the stack of layers that a variant file's
header command names (``--config configs/<family>/base.yaml [--config <data layer>]
--config <the file>``), or a standalone file of ``STANDALONE`` (its header command names
it alone). Every file in configs/ belongs to a recipe or is a compare config, whose
variants are parsed with the same layers.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from cli_overrides import run_stage, small_cli_args

from rgbx_fusion.compare.grid import load_compare_config
from rgbx_fusion.experiment import resolve

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
COMPARE = sorted((CONFIGS / "compare").glob("*.yaml"))
FAMILIES = sorted(path.parent for path in CONFIGS.glob("*/base.yaml"))
_CONFIG_ARG = re.compile(r"--config\s+(\S+)")


def header(path: Path) -> list[str]:
    """The comment lines a config file starts with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def header_stack(path: Path) -> list[Path]:
    """The ``--config`` layers of the ``rgbx-fusion`` command in a file's header comment."""
    for line in header(path):
        if "rgbx-fusion" in line and "--config" in line:
            return [ROOT / layer for layer in _CONFIG_ARG.findall(line)]
    return []


#: Recipes that are one file, not a family's base and variants (another task's configs).
STANDALONE = {
    "align/synthetic_depth": [CONFIGS / "align" / "synthetic_depth.yaml"],
    "align/synthetic_thermal": [CONFIGS / "align" / "synthetic_thermal.yaml"],
}


def recipes() -> dict[str, list[Path]]:
    """Recipe name → config layers: each base alone, each variant file's header stack."""
    stacks = {}
    for family in FAMILIES:
        for layer in sorted(family.glob("*.yaml")):
            name = f"{family.name}/{layer.stem}"
            stacks[name] = [layer] if layer.stem == "base" else header_stack(layer)
    return stacks


FAMILY_RECIPES = recipes()
RECIPES = {**FAMILY_RECIPES, **STANDALONE}


def test_every_config_file_is_a_recipe_layer_or_a_compare_config() -> None:
    covered = {layer for stack in RECIPES.values() for layer in stack} | set(COMPARE)
    files = set(CONFIGS.rglob("*.yaml"))
    assert files - covered == set(), "files in configs/ that no recipe or compare config uses"
    assert {f.name for f in FAMILIES} >= {"synthetic", "nyudv2", "mfnet"}
    assert {p.stem for p in COMPARE} >= {"synthetic_depth", "synthetic_thermal", "synthetic_stages"}


@pytest.mark.parametrize("name", sorted(STANDALONE))
def test_standalone_headers_name_the_file_alone(name: str) -> None:
    (layer,) = STANDALONE[name]
    assert 1 <= len(header(layer)) <= 3, f"{layer}: start with a comment of 1-3 lines"
    assert header_stack(layer) == [layer], f"{layer}: header command"


@pytest.mark.parametrize("name", sorted(FAMILY_RECIPES))
def test_variant_headers_name_their_stack(name: str) -> None:
    """A variant's header command starts from its family's base and ends with the file."""
    family, stem = name.split("/")
    layer = CONFIGS / family / f"{stem}.yaml"
    lines = header(layer)
    assert 1 <= len(lines) <= 3, f"{layer}: start with a comment of 1-3 lines"
    assert header_stack(layer)[0] == CONFIGS / family / "base.yaml", f"{layer}: header command"
    stack = RECIPES[name]
    assert stack[0] == CONFIGS / family / "base.yaml" and stack[-1] == layer
    assert all(p.parent == CONFIGS / family and p.is_file() for p in stack), stack
    assert len(set(stack)) == len(stack)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.stem)
def test_one_yaml_style(path: Path) -> None:
    """Block style throughout: flow style only for short lists such as ``[120, 160]``."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0]
        assert "{" not in text, f"{path}:{number}: write mappings in block style"


def _twin(name: str) -> str | None:
    """The nyudv2 recipe whose model an mfnet recipe repeats (run instead of it: slow)."""
    family, stem = name.split("/")
    return f"nyudv2/{stem}" if family == "mfnet" and f"nyudv2/{stem}" in RECIPES else None


@pytest.mark.parametrize("name", sorted(n for n in RECIPES if _twin(n)))
def test_mfnet_recipes_train_the_nyudv2_models(name: str) -> None:
    """Only data and schedule differ, and the fast_dev_run below swaps both out, so each
    mfnet recipe's run there would repeat its nyudv2 twin's: it is marked slow."""
    twin = _twin(name)
    assert twin is not None
    assert resolve(RECIPES[name])["model"] == resolve(RECIPES[twin])["model"]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if _twin(n) else n for n in sorted(RECIPES)]
)
def test_every_recipe_runs_fast_dev_run(
    name: str,
    tiny_depth_root: Path,
    tiny_thermal_root: Path,
    tiny_rgbdt_root: Path,
    tmp_path: Path,
) -> None:
    stack = RECIPES[name]
    config = resolve(stack)
    extra = []
    if not config["data.dataset.class_path"].endswith("SyntheticRGBX"):
        # Recipes for real datasets: same model, swapped onto generated data, offline.
        extra = [
            "--data.dataset=rgbx_fusion.data.sets.synthetic.SyntheticRGBX",
            "--model.network.init_args.pretrained=false",
            "--trainer.precision=32-true",
        ]
        if config.get("model.network.init_args.backbone_weights") is not None:
            extra.append("--model.network.init_args.backbone_weights=null")
    modality = config.get("data.dataset.init_args.modality")
    roots = {"thermal": tiny_thermal_root, "depth,thermal": tiny_rgbdt_root}
    root = roots.get(modality, tiny_depth_root)
    if config.get("model.network.init_args.input_align.init_args.checkpoint"):
        # a trained aligner's checkpoint: here an untrained one with the recipe's settings
        align = config["model.network.init_args.input_align"]
        module, _, cls = align.class_path.rpartition(".")
        factory = getattr(importlib.import_module(module), cls)
        weights = tmp_path / "aligner.pt"
        init = {k: v for k, v in align.init_args.items() if k not in ("checkpoint", "freeze")}
        torch.save(factory(3, 1, **init).state_dict(), weights)
        extra.append(f"--model.network.init_args.input_align.init_args.checkpoint={weights}")
    layers = [arg for layer in stack for arg in ("--config", str(layer))]
    run_stage(
        ["fit", *layers, *extra, *small_cli_args(root, tmp_path), "--trainer.fast_dev_run=true"]
    )


@pytest.mark.parametrize("path", COMPARE, ids=lambda p: p.stem)
def test_compare_variants_resolve(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run of a shipped compare config is a valid training config (resolved, not run)."""
    monkeypatch.chdir(ROOT)
    config = load_compare_config(path)
    for variant in config.variants:
        layers = config.layers(variant)
        assert all(CONFIGS in layer.resolve().parents for layer in layers), variant.name
        resolved = resolve(layers, config.cli_args(variant, config.seeds[0]))
        assert resolved["seed_everything"] == config.seeds[0]
        for key, value in {**config.overrides, **variant.overrides}.items():
            if isinstance(value, Mapping):
                continue  # class paths resolve to their shortest form
            got = resolved[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, (variant.name, key)
