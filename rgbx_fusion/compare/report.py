"""Aggregate per-run metrics over seeds and write results.csv / results.md / plots.

Convention:
    ``std`` is the sample standard deviation over seeds (``ddof=1``), 0 for one seed.
    The Pareto front minimises GFLOPs and maximises test mIoU: a variant is on it when
    no other variant is at least as cheap *and* at least as accurate, and strictly
    better in one of the two.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rgbx_fusion.data.atomic import atomic_path, write_text_atomic

RUN_KEYS = ("variant", "seed", "stage", "fusion", "aligner", "params", "gflops")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for none.

    >>> mean_std([1.0, 3.0])
    (2.0, 1.4142135623730951)
    """
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, score)`` not dominated (lower cost, higher score).

    >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.7)])
    [0, 2]
    """
    front = []
    for i, (ci, si) in enumerate(points):
        dominated = any(
            cj <= ci and sj >= si and (cj < ci or sj > si)
            for j, (cj, sj) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def aggregate(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (in first-seen order): costs, and mean ± std over its seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in metrics:
        groups.setdefault(m["variant"], []).append(m)
    rows = []
    for name, runs in groups.items():
        first = runs[0]
        row: dict[str, Any] = {
            "variant": name,
            "stage": first.get("stage", "?"),
            "fusion": first.get("fusion", "-"),
            "aligner": first.get("aligner", "-"),
            "params": int(first.get("params", 0)),
            "gflops": float(first.get("gflops", float("nan"))),
            "latency_ms": mean_std([r["latency_ms"] for r in runs if "latency_ms" in r])[0],
            "peak_memory_mb": mean_std(
                [r["peak_memory_mb"] for r in runs if "peak_memory_mb" in r]
            )[0],
            "seeds": " ".join(str(r["seed"]) for r in runs),
        }
        for key in ("val_mIoU", "test_mIoU", "test_pixel_acc"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in runs])
        classes = first.get("classes", [])
        for c, cls in enumerate(classes):
            ious = [r["iou"][c] for r in runs if not math.isnan(r["iou"][c])]
            row[f"iou_{cls}"] = mean_std(ious)[0]
        row["classes"] = list(classes)
        rows.append(row)
    return rows


def _csv_text(rows: Sequence[dict[str, Any]], skip: Sequence[str] = ()) -> str:
    fields = [k for k in rows[0] if k not in skip] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _pm(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (variants sorted by test mIoU, best first)."""
    classes: list[str] = rows[0]["classes"] if rows else []
    front = set(pareto_front([(r["gflops"], r["test_mIoU_mean"]) for r in rows]))
    head = [
        "variant",
        "stage",
        "fusion",
        "aligner",
        "params (M)",
        "GFLOPs",
        "latency ms",
        "peak MB",
        "val mIoU",
        "test mIoU",
        *classes,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(range(len(rows)), key=lambda i: -_finite(rows[i]["test_mIoU_mean"]))
    for i in order:
        r = rows[i]
        cells = [
            r["variant"] + (" *" if i in front else ""),
            r["stage"],
            r["fusion"],
            r["aligner"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.3f}",
            _num(r["latency_ms"], 1),
            _num(r["peak_memory_mb"], 0),
            _pm(r["val_mIoU_mean"], r["val_mIoU_std"]),
            _pm(r["test_mIoU_mean"], r["test_mIoU_std"]),
            *[_num(r[f"iou_{c}"], 3) for c in classes],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _num(x: float, digits: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Test mIoU (mean ± std) against GFLOPs, the Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["gflops"], r["test_mIoU_mean"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.errorbar(r["gflops"], r["test_mIoU_mean"], yerr=r["test_mIoU_std"], fmt="o", capsize=3)
        ax.annotate(
            r["variant"],
            (r["gflops"], r["test_mIoU_mean"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, 4),
        )
    front = sorted((pts[i] for i in pareto_front(pts)), key=lambda p: p[0])
    if front:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="k",
            linestyle="--",
            label="Pareto front",
        )
        ax.legend()
    ax.set_xlabel("GFLOPs (batch 1, training resolution)")
    ax.set_ylabel("test mIoU")
    ax.set_title("accuracy vs compute")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_per_class(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars: per-class test IoU of every variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes: list[str] = rows[0]["classes"] if rows else []
    n = max(len(rows), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) * max(1, n / 3)), 4.5))
    for k, r in enumerate(rows):
        xs = [c + (k - (n - 1) / 2) * width for c in range(len(classes))]
        ys = [0.0 if math.isnan(r[f"iou_{c}"]) else r[f"iou_{c}"] for c in classes]
        ax.bar(xs, ys, width=width, label=r["variant"])
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel("test IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("per-class IoU")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def failed_runs_markdown(failed: Sequence[dict[str, Any]]) -> str:
    """The "Failed runs" section of results.md (empty without failed runs)."""
    if not failed:
        return ""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["## Failed runs", "", "| variant | seed | error | log |", "|---|---|---|---|"]
    for f in failed:
        row = (f.get("variant", "?"), f.get("seed", "?"), f.get("error", ""), f.get("log", ""))
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    metrics: Sequence[dict[str, Any]],
    out: Path,
    failed: Sequence[dict[str, Any]] = (),
    gallery: int = 6,
) -> list[dict[str, Any]]:
    """Write runs.csv, results.csv, results.md, the two plots, the gallery and report.html;
    return the aggregated rows.

    ``failed``: runs that crashed, ``{"variant", "seed", "status": "failed", "error": <first
    line>, "log": <path>}``; listed in results.md and report.html. ``gallery``: how many
    test images the qualitative gallery shows (0: none; see
    :mod:`rgbx_fusion.compare.gallery`); it is drawn when a finished run's checkpoint is
    on disk.
    """
    from rgbx_fusion.compare.gallery import build_gallery
    from rgbx_fusion.compare.html import write_html_report

    out = Path(out)
    rows = aggregate(metrics)
    runs = [{k: m.get(k) for k in (*RUN_KEYS, "val_mIoU", "test_mIoU")} for m in metrics]
    write_text_atomic(out / "runs.csv", _csv_text(runs))
    write_text_atomic(out / "results.csv", _csv_text(rows, skip=("classes",)))
    seeds = sorted({int(m["seed"]) for m in metrics})
    md = (
        "# Fusion comparison\n\n"
        f"Checkpoint chosen on val, scores on test; mean ± std over seeds {seeds}. "
        "`*` marks the Pareto front (GFLOPs vs test mIoU). Per-class columns: test IoU.\n\n"
        + markdown_table(rows)
        + "\n![mIoU vs GFLOPs](miou_vs_gflops.png)\n\n![per-class IoU](per_class_iou.png)\n"
    )
    if failed:
        md += "\n" + failed_runs_markdown(failed)
    write_text_atomic(out / "results.md", md)
    if rows:
        plot_pareto(rows, out / "miou_vs_gflops.png")
        plot_per_class(rows, out / "per_class_iou.png")
    shown = build_gallery(metrics, out, count=gallery) if gallery > 0 else None
    write_html_report(out, rows, metrics, failed, shown)
    return rows
