"""Compare configs: load, validate and expand into named variants.

A compare config is a small YAML file; its variants are built from the same config
layers as a hand-run ``rgbx-fusion fit --config base --config variant``::

    base: [configs/synthetic/base.yaml]       # layers every variant starts from (a string = one)
    seeds: [0]                                # each becomes --seed_everything
    overrides:                                # dotted keys shared by every run (budget, ...)
      trainer.max_epochs: 3
    variants:                                 # named variants: extra layers and/or overrides
      - name: mid_add                         # nothing extra: the base itself
      - name: mid_se
        config: configs/synthetic/mid_se.yaml # a string or a list of layers, after the base's
      - name: mid_se_slow
        config: [configs/synthetic/mid_se.yaml]
        overrides:                            # dotted keys, after the shared overrides
          model.lr: 0.001
    grid:                                     # optional cartesian product, expands to variants
      model.network.init_args.fusion:
        - {class_path: rgbx_fusion.models.fusion.simple.AddFusion}
        - {class_path: rgbx_fusion.models.fusion.channel_attention.SEFusion}
    executor:                                 # optional: where the runs train (executors.py)
      kind: slurm
      slurm: {partition: gpu, time: "06:00:00", gpus_per_task: 1}

A layer path is looked up in the working directory, then (for a loaded file) in each
folder above the compare config, so ``configs/...`` works from anywhere in the repository.

Convention:
    One run's arguments are ``--config`` for each base layer, then each of the variant's
    layers, then the shared overrides, the variant's overrides and ``--seed_everything``
    (:meth:`CompareConfig.run_args`). Later layers and overrides win, as on the command line.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rgbx_fusion.compare.executors import ExecutorSettings, parse_executor
from rgbx_fusion.errors import ConfigError

KEYS = ("base", "seeds", "overrides", "variants", "grid", "executor")
VARIANT_KEYS = ("name", "config", "overrides")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Variant:
    """One model to train: a folder-safe name, its dotted CLI overrides and extra config layers."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    config: tuple[Path, ...] = ()


@dataclass(frozen=True)
class CompareConfig:
    """A validated compare config (see the module docstring)."""

    base: tuple[Path, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any]
    variants: tuple[Variant, ...]
    source: Path | None = None
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)

    def layers(self, variant: Variant) -> tuple[Path, ...]:
        """The config files of one variant, in order: the base layers, then its own."""
        return (*self.base, *variant.config)

    def config_args(self, variant: Variant) -> list[str]:
        """``--config <layer>`` for each of :meth:`layers`."""
        return [arg for layer in self.layers(variant) for arg in ("--config", str(layer))]

    def cli_args(self, variant: Variant, seed: int) -> list[str]:
        """``--key=value`` arguments for one run (after the ``--config`` layers)."""
        merged = {**self.overrides, **variant.overrides, "seed_everything": seed}
        return [f"--{key}={format_value(value)}" for key, value in merged.items()]

    def run_args(self, variant: Variant, seed: int) -> list[str]:
        """The Lightning CLI arguments of one run: :meth:`config_args` + :meth:`cli_args`."""
        return [*self.config_args(variant), *self.cli_args(variant, seed)]


def format_value(value: Any) -> str:
    """A YAML value as jsonargparse reads it on the command line (JSON for non-strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def _short(value: Any) -> str:
    """A short, folder-safe label of one grid value (class name for class paths)."""
    if isinstance(value, Mapping) and "class_path" in value:
        value = str(value["class_path"]).rsplit(".", 1)[-1]
    elif value is None:
        value = "none"
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(value)).strip("_")
    return text or "x"


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[Variant]:
    """Cartesian product of option lists → variants named ``key=value,...`` (short form).

    >>> [v.name for v in expand_grid({"a.b": [1, 2], "c": ["x"]})]
    ['b-1_c-x', 'b-2_c-x']
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"grid: expected a mapping of dotted keys to option lists, got {grid!r}")
    for key, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"grid.{key}: expected a non-empty list of options, got {options!r}")
    keys = list(grid)
    variants = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = "_".join(
            f"{k.rsplit('.', 1)[-1]}-{_short(v)}" for k, v in zip(keys, combo, strict=True)
        )
        variants.append(Variant(name, dict(zip(keys, combo, strict=True))))
    return variants


def _check_overrides(where: str, overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of dotted keys to values, got {type(overrides).__name__}"
        )
    for key in overrides:
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise ConfigError(f"{where}: keys are dotted option names without '--', got {key!r}")
    return dict(overrides)


def _check_variants(raw: Any, source: Path | None) -> list[Variant]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"variants: expected a list of {{name, config, overrides}}, got {raw!r}")
    variants = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "name" not in item:
            raise ConfigError(f"variants[{i}]: expected a mapping with a 'name', got {item!r}")
        unknown = set(item) - set(VARIANT_KEYS)
        if unknown:
            raise ConfigError(
                f"variants[{i}]: unknown keys {sorted(unknown)}; use {'/'.join(VARIANT_KEYS)}"
            )
        name = str(item["name"])
        if not _NAME.match(name):
            raise ConfigError(
                f"variants[{i}].name: {name!r} must be folder-safe (letters, digits, _.+-)"
            )
        layers = _resolve_layers(f"variants[{i}].config", item.get("config"), source, optional=True)
        overrides = _check_overrides(f"variants[{i}].overrides", item.get("overrides"))
        variants.append(Variant(name, overrides, layers))
    return variants


def _resolve_layer(where: str, layer: Any, source: Path | None) -> Path:
    if not isinstance(layer, str | Path) or not str(layer):
        raise ConfigError(f"{where}: expected the path of a training YAML, got {layer!r}")
    path = Path(layer)
    candidates = [path]
    if source is not None and not path.is_absolute():
        candidates += [parent / path for parent in source.resolve().parents]
    found = next((cand for cand in candidates if cand.is_file()), None)
    if found is None:
        raise ConfigError(
            f"{where}: training config {str(layer)!r} not found (looked in the working directory"
            + (f" and above {source}" if source is not None else "")
            + ")"
        )
    try:
        data = yaml.safe_load(found.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {found} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {found} is not a training config (a YAML mapping)")
    return found


def _resolve_layers(
    where: str, layers: Any, source: Path | None, optional: bool = False
) -> tuple[Path, ...]:
    """A string (one layer) or a list of config paths → existing files, in order."""
    if layers is None and optional:
        return ()
    if isinstance(layers, str | Path):
        return (_resolve_layer(where, layers, source),)
    if not isinstance(layers, list) or not layers:
        raise ConfigError(
            f"{where}: expected a config path or a non-empty list of them, got {layers!r}"
        )
    return tuple(_resolve_layer(f"{where}[{i}]", layer, source) for i, layer in enumerate(layers))


def parse_compare_config(data: Any, source: Path | None = None) -> CompareConfig:
    """Validate a compare config already read from YAML; raise ConfigError naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"compare config: expected a mapping at the top level, got {data!r}")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise ConfigError(
            f"compare config: unknown keys {sorted(unknown)}; expected some of {KEYS}"
        )
    if "base" not in data:
        raise ConfigError("base: missing; name the config layers every variant starts from")
    base = _resolve_layers("base", data["base"], source)
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicated seeds in {seeds}")
    overrides = _check_overrides("overrides", data.get("overrides"))
    variants = _check_variants(data.get("variants"), source)
    if data.get("grid") is not None:
        variants += expand_grid(data["grid"])
    if not variants:
        raise ConfigError("variants: none given; add 'variants:' and/or 'grid:'")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"variants: duplicated names {dupes}")
    executor = parse_executor(data.get("executor"))
    return CompareConfig(base, tuple(seeds), overrides, tuple(variants), source, executor)


def load_compare_config(path: str | Path) -> CompareConfig:
    """Read and validate a compare config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"compare config {path} is not valid YAML: {exc}") from exc
    return parse_compare_config(data, path)
