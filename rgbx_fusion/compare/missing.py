"""Missing and noisy modalities: the three robustness protocols of multi-sensor segmentation.

Kinds (swept by ``compare --robustness`` next to those of
:mod:`rgbx_fusion.compare.robustness`), for every aux modality name ``m`` of the compared
runs:

* ``missing:m``: level 1 = modality ``m`` missing from every test sample (level 0 =
  clean). A multi-modality network is told (``present[:, m]`` false) and its channels
  are set to 0; a one-aux network whose aux is ``m`` gets the all-missing aux image (0
  everywhere, the "missing" value of normalised aux), which is all it can be given.
  A run without ``m`` is unaffected (its clean score).
* ``aux_missing_p``: every aux modality missing independently per sample with
  probability p, levels 0, 0.25, 0.5, 0.75, 1 (1 = RGB alone).
* ``noise:m``: Gaussian noise of this std (normalised units) added to modality ``m``,
  levels 0, 0.5, 1; the modality stays present.

Draws come from the per-batch generator of the sweep, so every variant sees the same
missing samples and the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MISSING_P = "aux_missing_p"
MISSING_P_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
NOISE_LEVELS: tuple[float, ...] = (0.0, 0.5, 1.0)
MISSING_PREFIX, NOISE_PREFIX = "missing:", "noise:"


def is_modality_kind(kind: str) -> bool:
    """Whether ``kind`` is one of this module's protocols."""
    return kind == MISSING_P or kind.startswith((MISSING_PREFIX, NOISE_PREFIX))


def modality_kinds(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """The protocols' kinds and levels for aux modalities ``names``."""
    kinds: dict[str, tuple[float, ...]] = {MISSING_P: MISSING_P_LEVELS}
    kinds.update({f"{MISSING_PREFIX}{n}": (0.0, 1.0) for n in names})
    kinds.update({f"{NOISE_PREFIX}{n}": NOISE_LEVELS for n in names})
    return kinds


def label(kind: str) -> str:
    """Axis label of a protocol's curve."""
    if kind == MISSING_P:
        return "each aux modality missing with probability p"
    if kind.startswith(NOISE_PREFIX):
        return f"{kind[len(NOISE_PREFIX) :]} noise std (normalised)"
    return f"{kind[len(MISSING_PREFIX) :]} missing"


@dataclass(frozen=True)
class AuxLayout:
    """How a run's aux tensor holds its modalities.

    ``names``/``channels``: the modalities in channel order; ``multi``: the network takes
    a presence mask (a multi-modality dataset), else aux is one image named ``names[0]``.
    """

    names: tuple[str, ...]
    channels: tuple[int, ...]
    multi: bool

    @classmethod
    def of(cls, datamodule: Any) -> AuxLayout:
        """The layout of a data module's batches."""
        modalities = datamodule.modalities
        if modalities:
            return cls(tuple(modalities), tuple(modalities.values()), True)
        name = getattr(datamodule.base_dataset(datamodule.splits["test"]), "modality", "aux")
        return cls((str(name),), (int(datamodule.aux_channels),), False)

    def channel_slice(self, name: str) -> slice:
        j = self.names.index(name)
        start = sum(self.channels[:j])
        return slice(start, start + self.channels[j])

    def equivalent(self, kind: str, level: float) -> tuple[str, float]:
        """The setting that feeds this run the same input as protocol ``kind`` at
        ``level``: ``("clean", 0.0)`` when it leaves the input alone (a modality the run
        lacks), an older kind's for a one-aux run (missing = ``aux_holes_fraction`` 1,
        noise = ``aux_noise_std``), else itself."""
        if kind != MISSING_P:
            name = kind.split(":", 1)[1]
            if float(level) == 0 or name not in self.names:
                return ("clean", 0.0)
            if not self.multi:
                old = "aux_holes_fraction" if kind.startswith(MISSING_PREFIX) else "aux_noise_std"
                return (old, float(level))
        elif float(level) == 0:
            return ("clean", 0.0)
        elif float(level) == 1 and not self.multi:
            return ("aux_holes_fraction", 1.0)
        return (kind, float(level))


def apply(
    kind: str,
    level: float,
    aux: Tensor,
    present: Tensor | None,
    layout: AuxLayout,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None]:
    """``(aux, present)`` of a normalised batch under one protocol at one level.

    ``present`` is (B, M) for a multi-modality run (``None`` = all present), else ``None``.
    """
    b = aux.shape[0]
    m = len(layout.names)
    if layout.multi and present is None:
        present = torch.ones(b, m, dtype=torch.bool, device=aux.device)
    if kind == MISSING_P:
        drop = torch.rand(b, m, generator=generator) < float(level)
    elif kind.startswith(MISSING_PREFIX):
        drop = torch.zeros(b, m, dtype=torch.bool)
        name = kind[len(MISSING_PREFIX) :]
        if float(level) != 0 and name in layout.names:
            drop[:, layout.names.index(name)] = True
    elif kind.startswith(NOISE_PREFIX):
        name = kind[len(NOISE_PREFIX) :]
        if float(level) == 0 or name not in layout.names:
            return aux, present
        part = layout.channel_slice(name)
        noise = torch.randn(aux[:, part].shape, generator=generator).to(aux)
        aux = aux.clone()
        aux[:, part] += float(level) * noise
        return aux, present
    else:
        raise ValueError(f"unknown modality protocol {kind!r}")
    if not drop.any():
        return aux, present
    aux = aux.clone()
    for j, name in enumerate(layout.names):
        rows = drop[:, j].to(aux.device)
        aux[:, layout.channel_slice(name)] *= (~rows).to(aux).view(-1, 1, 1, 1)
    if present is not None:
        present = present & ~drop.to(present.device)
    return aux, present


def missing_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of the protocols per variant (mean test mIoU over seeds).

    Columns: clean, each modality missing entirely, all aux missing (p = 1), each aux
    modality missing at random with p = 0.5, and each modality under noise of std 1.
    Empty when the summary has no protocol.
    """
    levels, curves = summary.get("levels", {}), summary.get("curves", {})
    names = [k[len(MISSING_PREFIX) :] for k in levels if k.startswith(MISSING_PREFIX)]
    if MISSING_P not in levels:
        return ""

    def at(variant: str, kind: str, level: float) -> float | None:
        xs = [float(x) for x in levels.get(kind, [])]
        if float(level) not in xs:
            return None
        value = curves[variant].get(kind, [None] * len(xs))[xs.index(float(level))]
        return None if value is None or math.isnan(value) else float(value)

    head = ["variant", "clean", *(f"− {n}" for n in names), "− all aux"]
    head += ["random p = 0.5", *(f"{n} noise 1.0" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in curves:
        row: list[float | None] = [at(variant, MISSING_P, 0.0)]
        row += [at(variant, f"{MISSING_PREFIX}{n}", 1.0) for n in names]
        row += [at(variant, MISSING_P, 1.0), at(variant, MISSING_P, 0.5)]
        row += [at(variant, f"{NOISE_PREFIX}{n}", 1.0) for n in names]
        cells = ["n/a" if v is None else f"{v:.3f}" for v in row]
        lines.append("| " + " | ".join([variant, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_missing(ax: Any, means: Mapping[str, Mapping[str, Mapping[float, float]]]) -> None:
    """Grouped bars on ``ax``: per case (clean, each modality missing, all aux missing),
    one bar per variant."""
    kinds = list(dict.fromkeys(k for per in means.values() for k in per))
    names = [k[len(MISSING_PREFIX) :] for k in kinds if k.startswith(MISSING_PREFIX)]
    cases: list[tuple[str, str, float]] = [("clean", MISSING_P, 0.0)]
    cases += [(f"− {n}", f"{MISSING_PREFIX}{n}", 1.0) for n in names]
    cases.append(("− all aux", MISSING_P, 1.0))
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(means))
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]
    for n, (variant, per) in enumerate(means.items()):
        values = [per.get(kind, {}).get(level, math.nan) for _, kind, level in cases]
        xs = [i + (n - (len(means) - 1) / 2) * width for i in range(len(cases))]
        ax.bar(xs, values, width=width, color=colors[n % 20], label=variant)
    ax.set_xticks(range(len(cases)), [c[0] for c in cases], fontsize=8)
    ax.set_xlabel("modality missing entirely")
    ax.set_ylabel("test mIoU")
    ax.grid(alpha=0.3, axis="y")


def write_missing_table(summary: Mapping[str, Any], path: Path) -> str:
    """Write :func:`missing_table` to ``path`` (nothing when empty); return the table."""
    from rgbx_fusion.data.atomic import write_text_atomic

    table = missing_table(summary)
    if table:
        write_text_atomic(path, "# Missing and noisy modalities (test mIoU)\n\n" + table)
    return table
