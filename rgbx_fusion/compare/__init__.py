"""The fusion comparison harness: variants × seeds, resumable runs, report, robustness.

``rgbx-fusion compare --config configs/compare/synthetic_depth.yaml [--robustness]``
(:mod:`rgbx_fusion.cli.compare`); see :mod:`rgbx_fusion.compare.runner` for the output layout and
:mod:`rgbx_fusion.compare.grid` for the config format.
"""

from rgbx_fusion.compare.grid import (
    CompareConfig,
    Variant,
    expand_grid,
    load_compare_config,
    parse_compare_config,
)
from rgbx_fusion.compare.report import aggregate, mean_std, pareto_front
from rgbx_fusion.compare.runner import run_compare

__all__ = [
    "CompareConfig",
    "Variant",
    "aggregate",
    "expand_grid",
    "load_compare_config",
    "mean_std",
    "pareto_front",
    "parse_compare_config",
    "run_compare",
]
