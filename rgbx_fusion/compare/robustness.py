"""Robustness sweeps: test mIoU of trained checkpoints under perturbed inputs.

The perturbations (:mod:`rgbx_fusion.compare.perturbations`: misregistration and sensor
degradations; :mod:`rgbx_fusion.compare.missing`: missing and noisy modalities) act on
normalised test batches inside the evaluation loop; nothing is written to disk. Each
distinct input is evaluated once per checkpoint, and every run keeps its scores in its
folder so that a rerun evaluates only what is new.

Summary:
    ``shift_curve`` averages the four directions: at |shift| = s, the mean mIoU of
    ``aux_shift_x_px`` at ±s and ``aux_shift_y_px`` at ±s (s = 0: the clean score). It
    is written as the derived kind ``aux_shift_abs_px`` (levels 0, 2, ..., 10).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rgbx_fusion.compare.missing import (
    MISSING_PREFIX,
    AuxLayout,
    is_modality_kind,
    modality_kinds,
    plot_missing,
    write_missing_table,
)
from rgbx_fusion.compare.missing import apply as apply_protocol
from rgbx_fusion.compare.missing import label as protocol_label
from rgbx_fusion.compare.perturbations import PERTURBATIONS, perturb, setting
from rgbx_fusion.data.atomic import write_text_atomic

SHIFT_CURVE = "aux_shift_abs_px"  # the derived four-direction kind of ``shift_curve``
_SHIFT_XY = ("aux_shift_x_px", "aux_shift_y_px")
MISSING_PANEL = "modality missing entirely"  # the bar panel of every ``missing:`` kind
LABELS: dict[str, str] = {
    SHIFT_CURVE: "aux shift |px|, mean of right/left/down/up",
    "aux_shift_x_px": "aux shift x px (+ right)",
    "aux_shift_y_px": "aux shift y px (+ down)",
    "aux_rotation_deg": "aux rotation ° (+ counter-clockwise)",
    "aux_scale": "aux scale (> 1 enlarges)",
    "aux_shift_px": "aux shift right px",
}


def sweep(
    score: Callable[[str, float], float],
    perturbations: Mapping[str, Sequence[float]],
    known: Mapping[tuple[str, float], float] | None = None,
) -> dict[str, list[float]]:
    """Every curve of ``perturbations``, calling ``score`` once per distinct ``setting``.

    ``known`` holds scores already measured (keyed by ``setting``); they are reused.
    """
    scores = dict(known or {})
    curves: dict[str, list[float]] = {}
    for kind, levels in perturbations.items():
        curves[kind] = []
        for level in levels:
            key = setting(kind, level)
            if key not in scores:
                scores[key] = score(kind, level)
            curves[kind].append(scores[key])
    return curves


def shift_curve(
    levels: Mapping[str, Sequence[float]], curves: Mapping[str, Sequence[float]]
) -> dict[float, float]:
    """``|shift| -> mean mIoU`` over the four directions (x ±s and y ±s).

    Only the ``|shift|`` at which all four were evaluated; 0 is the clean score. Empty
    unless both ``aux_shift_x_px`` and ``aux_shift_y_px`` were swept.
    """
    if not all(k in levels and k in curves for k in _SHIFT_XY):
        return {}
    value = {
        (kind, float(level)): float(miou)
        for kind in _SHIFT_XY
        for level, miou in zip(levels[kind], curves[kind], strict=True)
    }
    out: dict[float, float] = {}
    for s in sorted({abs(level) for _, level in value}):
        four = [value.get((kind, sign * s)) for kind in _SHIFT_XY for sign in (1.0, -1.0)]
        present = [v for v in four if v is not None]
        if s == 0 or len(present) == 4:
            out[s] = sum(present) / len(present)
    return out


def _number(x: float) -> float:
    """``x`` as an int when whole (2 rather than 2.0 in the CSV), else as is."""
    return int(x) if float(x).is_integer() else x


def _cached(loader: Iterable[dict[str, Any]], limit_bytes: int = 2**30) -> list[Any] | None:
    """The loader's batches in a list, or ``None`` when they exceed ``limit_bytes``."""
    batches, size = [], 0
    for batch in loader:
        size += sum(t.numel() * t.element_size() for t in batch.values() if isinstance(t, Tensor))
        if size > limit_bytes:
            return None
        batches.append(batch)
    return batches


def _known(cached: Mapping[str, Any]) -> dict[tuple[str, float], float]:
    """The scores of a run's earlier ``robustness.json``, keyed by ``setting``."""
    levels, curves = cached.get("levels"), cached.get("curves")
    if not isinstance(levels, dict) or not isinstance(curves, dict):
        return {}
    known: dict[tuple[str, float], float] = {}
    for kind, values in curves.items():
        for level, miou in zip(levels.get(kind, []), values, strict=False):
            known[setting(kind, level)] = float(miou)
    return known


def build_run(resolved_config: str | Path) -> tuple[Any, Any]:
    """``(task, datamodule)`` of a run, built from its recorded config (no loader workers,
    no logger); the weights are those of a fresh model until :func:`restore_checkpoint`."""
    from rgbx_fusion.experiment import build

    exp = build([resolved_config], {"data.num_workers": 0, "trainer.logger": False})
    return exp.task, exp.datamodule


def restore_checkpoint(task: Any, datamodule: Any, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``task`` and its normalisation into ``datamodule``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = ckpt.get(type(datamodule).__qualname__)
    if isinstance(state, dict):
        datamodule.load_state_dict(state)
    task.load_state_dict(ckpt["state_dict"])


def load_run(resolved_config: str | Path, checkpoint: str | Path) -> tuple[Any, Any]:
    """``(task, datamodule)`` of a finished run, holding the weights of ``checkpoint`` (on CPU)."""
    task, dm = build_run(resolved_config)
    restore_checkpoint(task, dm, checkpoint)
    return task, dm


@torch.no_grad()
def evaluate_checkpoint(
    resolved_config: str | Path,
    checkpoint: str | Path,
    perturbations: Mapping[str, Sequence[float]] = PERTURBATIONS,
    known: Mapping[tuple[str, float], float] | None = None,
) -> dict[str, list[float]]:
    """Test mIoU of one checkpoint at every level of every perturbation.

    Each distinct input (``setting``) is evaluated once; ``known`` scores are reused,
    and the checkpoint is not even loaded when every score is known.
    """
    known = dict(known or {})
    wanted = {setting(k, level) for k, levels in perturbations.items() for level in levels}
    if wanted <= known.keys():
        return sweep(lambda kind, level: math.nan, perturbations, known)

    from rgbx_fusion.tasks.metrics import SegmentationMetrics

    model, dm = load_run(resolved_config, checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    metric = SegmentationMetrics(model.num_classes, model.ignore_index).to(device)
    rgb_mean = torch.tensor(dm.rgb_mean, dtype=torch.float32)
    rgb_std = torch.tensor(dm.rgb_std, dtype=torch.float32)
    loader = dm.test_dataloader()
    batches = _cached(loader) or loader  # decoded once when the test split fits in memory

    layout = AuxLayout.of(dm)
    memo = dict(known)  # this run's scores by input: protocols reuse equivalent settings

    def score(kind: str, level: float) -> float:
        key = layout.equivalent(kind, level) if is_modality_kind(kind) else setting(kind, level)
        if key in memo:
            return memo[key]
        metric.reset()
        for i, batch in enumerate(batches):
            gen = torch.Generator().manual_seed(i)
            rgb, aux, present = batch["rgb"], batch["aux"], batch.get("present")
            if is_modality_kind(key[0]):
                aux, present = apply_protocol(key[0], key[1], aux, present, layout, gen)
            elif key[0] != "clean":
                rgb, aux = perturb(batch, key[0], key[1], rgb_mean, rgb_std, gen)
            args = (rgb.to(device), aux.to(device))
            logits = model(*args) if present is None else model(*args, present.to(device))
            metric.update(logits.argmax(1), batch["mask"].to(device))
        memo[key] = float(metric.scores()["mIoU"])
        return memo[key]

    return sweep(score, perturbations, known)


FIELDS = ["variant", "seed", "perturbation", "level", "test_mIoU"]


def run_modalities(resolved_config: str | Path) -> list[str]:
    """The aux modality names a run's recorded config reads (``data.dataset.init_args.
    modality``, comma-separated), or none when the dataset does not name them."""
    import yaml

    try:
        doc = yaml.safe_load(Path(resolved_config).read_text())
        value = doc["data"]["dataset"]["init_args"]["modality"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    return [m.strip() for m in str(value).split(",") if m.strip()] if value else []


#: ``compare --robustness-kinds``: the groups of perturbations a sweep may be limited to.
GROUPS = ("registration", "sensor", "modality")
_REGISTRATION = (
    "aux_shift_x_px",
    "aux_shift_y_px",
    "aux_rotation_deg",
    "aux_scale",
    "aux_shift_px",
)


def group_of(kind: str) -> str:
    """``registration`` (aux moved against RGB), ``modality`` (missing / noisy
    modalities) or ``sensor`` (aux noise and holes, dark or noisy RGB)."""
    if kind in _REGISTRATION:
        return "registration"
    return "modality" if is_modality_kind(kind) else "sensor"


def default_perturbations(
    metrics: Sequence[dict[str, Any]], groups: Sequence[str] = GROUPS
) -> dict[str, tuple[float, ...]]:
    """:data:`PERTURBATIONS` plus the missing/noisy-modality protocols of every aux
    modality the runs read (:mod:`rgbx_fusion.compare.missing`), limited to ``groups``."""
    names = dict.fromkeys(n for m in metrics for n in run_modalities(m["resolved_config"]))
    kinds = {**PERTURBATIONS, **modality_kinds(list(names))} if names else dict(PERTURBATIONS)
    return {k: v for k, v in kinds.items() if group_of(k) in groups}


def run_robustness(
    metrics: Sequence[dict[str, Any]],
    out: Path,
    perturbations: Mapping[str, Sequence[float]] | None = None,
    groups: Sequence[str] = GROUPS,
) -> list[dict[str, Any]]:
    """Sweep every run's best checkpoint; write robustness.csv / .json / .png / .md.

    ``perturbations``: kind → levels, by default :func:`default_perturbations` of
    ``groups``.

    Each run's scores are cached in its folder (``robustness.json``): a rerun with the
    same levels evaluates nothing, one with other levels only the settings not scored
    yet. Rows: one per run, kind and level, then the run's ``aux_shift_abs_px`` rows
    (``shift_curve``) when both shift directions were swept.
    """
    if perturbations is None:
        perturbations = default_perturbations(metrics, groups)
    rows: list[dict[str, Any]] = []
    levels = {k: list(v) for k, v in perturbations.items()}
    for m in metrics:
        folder = out / "runs" / m["variant"] / f"seed{m['seed']}"
        cache = folder / "robustness.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if cached.get("levels") == levels:
            curves = cached["curves"]
        else:
            curves = evaluate_checkpoint(
                m["resolved_config"], m["checkpoint"], perturbations, _known(cached)
            )
        shift = shift_curve(levels, curves)
        doc: dict[str, Any] = {"levels": levels, "curves": curves}
        if shift:
            doc["shift_curve"] = {
                "abs_px": [_number(s) for s in shift],
                "test_mIoU": list(shift.values()),
            }
        if doc != cached:
            write_text_atomic(cache, json.dumps(doc, indent=2))
        run = {"variant": m["variant"], "seed": m["seed"]}
        for kind, values in curves.items():
            for level, miou in zip(levels[kind], values, strict=True):
                rows.append({**run, "perturbation": kind, "level": level, "test_mIoU": miou})
        for s, miou in shift.items():
            rows.append(
                {**run, "perturbation": SHIFT_CURVE, "level": _number(s), "test_mIoU": miou}
            )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "robustness.csv", buf.getvalue())
    summary = summarize(rows)
    write_text_atomic(out / "robustness.json", json.dumps(summary, indent=2))
    write_missing_table(summary, out / "robustness.md")
    if rows:
        plot_robustness(rows, out / "robustness.png")
    return rows


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[float, float]]]:
    """``variant -> kind -> level -> mean test mIoU over seeds``, in the rows' order."""
    acc: dict[str, dict[str, dict[float, list[float]]]] = {}
    for r in rows:
        per_kind = acc.setdefault(r["variant"], {}).setdefault(r["perturbation"], {})
        per_kind.setdefault(float(r["level"]), []).append(float(r["test_mIoU"]))
    return {
        v: {k: {x: sum(ys) / len(ys) for x, ys in pts.items()} for k, pts in kinds.items()}
        for v, kinds in acc.items()
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sweep per variant, mean over seeds: the content of ``robustness.json``.

    ``{"seeds": {variant: [...]}, "levels": {kind: [...]}, "curves": {variant: {kind:
    [...]}}, "shift_curve": {"abs_px": [...], "test_mIoU": {variant: [...]}}}``; a
    variant lacking a level has ``null`` there.
    """
    means = _means(rows)
    seeds: dict[str, list[Any]] = {}
    for r in rows:
        if r["seed"] not in seeds.setdefault(r["variant"], []):
            seeds[r["variant"]].append(r["seed"])
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows))
    levels = {k: sorted({float(r["level"]) for r in rows if r["perturbation"] == k}) for k in kinds}
    curves = {
        v: {k: [per.get(k, {}).get(x) for x in levels[k]] for k in kinds}
        for v, per in means.items()
    }
    summary: dict[str, Any] = {
        "seeds": seeds,
        "levels": {k: [_number(x) for x in xs] for k, xs in levels.items()},
        "curves": curves,
    }
    if SHIFT_CURVE in levels:
        summary["shift_curve"] = {
            "abs_px": [_number(x) for x in levels[SHIFT_CURVE]],
            "test_mIoU": {v: c[SHIFT_CURVE] for v, c in curves.items()},
        }
    return summary


def plot_robustness(rows: Sequence[dict[str, Any]], path: Path, columns: int = 5) -> None:
    """One panel per perturbation, one curve per variant (mean over seeds).

    The four-direction shift curve (``aux_shift_abs_px``) comes first, then the kinds in
    the rows' order (signed x and y shifts, rotation, scale, ...), ``columns`` per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rgbx_fusion.compare.report import _save

    kinds = list(dict.fromkeys(r["perturbation"] for r in rows))
    if SHIFT_CURVE in kinds:
        kinds.remove(SHIFT_CURVE)
        kinds.insert(0, SHIFT_CURVE)
    missing = [k for k in kinds if k.startswith(MISSING_PREFIX)]
    if missing:  # one bar panel for every "modality missing entirely" case
        kinds = [k for k in kinds if k not in missing] + [MISSING_PANEL]
    means = _means(rows)
    ncols = max(1, min(columns, len(kinds)))
    nrows = -(-len(kinds) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]  # distinct colours for 20 variants
    flat = [ax for row in axes for ax in row]
    for ax, kind in zip(flat, kinds, strict=False):
        if kind == MISSING_PANEL:
            plot_missing(ax, means)
            continue
        for n, (v, per_kind) in enumerate(means.items()):
            pts = per_kind.get(kind, {})
            xs = sorted(pts)
            style = {"color": colors[n % 20], "linestyle": ("-", "--", ":")[n // 20 % 3]}
            ax.plot(xs, [pts[x] for x in xs], marker="o", markersize=3, label=v, **style)
        ax.set_xlabel(protocol_label(kind) if is_modality_kind(kind) else LABELS.get(kind, kind))
        ax.set_ylabel("test mIoU")
        ax.grid(alpha=0.3)
        if kind == "rgb_dark_factor":
            ax.invert_xaxis()  # darker to the right, like the other panels
    for ax in flat[len(kinds) :]:
        ax.set_visible(False)
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    _save(fig, path)
