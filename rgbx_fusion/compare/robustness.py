"""Robustness sweeps: test mIoU of trained checkpoints under perturbed inputs.

The perturbations act on normalised batches inside the evaluation loop (nothing is
written to disk):

* ``aux_shift_px``: aux moved right by s pixels (misregistration), vacated pixels = 0;
* ``aux_rotation_deg``: aux rotated by that many degrees about the image centre
  (misregistration of a rolled camera), pixels from outside the frame = 0;
* ``aux_noise_std``: Gaussian noise of this std added to aux (in normalised units);
* ``aux_holes_fraction``: that share of the cells of an 8×8 grid of aux set to 0
  (1.0 = aux missing altogether);
* ``rgb_dark_factor``: RGB intensities (in [0, 1]) multiplied by the factor;
* ``rgb_noise_std``: Gaussian noise of this std added to RGB intensities (in [0, 1]),
  the result kept in [0, 1] like a sensor's output.

Convention:
    0 is the "missing" value of normalised aux (see ``Normalizer``), so shifts and holes
    write 0. Level 0 (1.0 for darkness) is the clean input. Noise and holes are drawn
    from a generator seeded per batch, so every variant sees the same perturbations.
    The clean input is evaluated once and shared by every curve.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rgbx_fusion.data.atomic import write_text_atomic

PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "aux_shift_px": (0, 4, 8, 16),
    "aux_rotation_deg": (0.0, 2.5, 5.0),
    "aux_noise_std": (0.0, 0.5, 1.0),
    "aux_holes_fraction": (0.0, 0.5, 1.0),
    "rgb_dark_factor": (1.0, 0.3, 0.1),
    "rgb_noise_std": (0.0, 0.1, 0.2),
}
CLEAN: dict[str, float] = {"rgb_dark_factor": 1.0}  # the level that leaves the input as is (else 0)


def is_clean(kind: str, level: float) -> bool:
    """Whether ``level`` of perturbation ``kind`` leaves the input unchanged."""
    return float(level) == CLEAN.get(kind, 0.0)


def shift_aux(aux: Tensor, pixels: int) -> Tensor:
    """Move aux ``pixels`` to the right (negative: left); vacated columns are 0.

    Shape:
        aux: (B, C, H, W) -> (B, C, H, W)
    """
    s = int(pixels)
    if s == 0:
        return aux
    out = torch.zeros_like(aux)
    if abs(s) >= aux.shape[-1]:
        return out
    if s > 0:
        out[..., s:] = aux[..., :-s]
    else:
        out[..., :s] = aux[..., -s:]
    return out


def rotate_aux(aux: Tensor, degrees: float) -> Tensor:
    """Rotate aux counter-clockwise by ``degrees`` about the image centre (bilinear, 0 outside).

    Shape:
        aux: (B, C, H, W) -> (B, C, H, W)
    """
    if float(degrees) == 0.0:
        return aux
    from kornia.geometry.transform import rotate

    angle = torch.full((aux.shape[0],), float(degrees), dtype=aux.dtype, device=aux.device)
    return rotate(aux, angle, mode="bilinear", padding_mode="zeros", align_corners=False)


def holes(aux: Tensor, fraction: float, generator: torch.Generator, cells: int = 8) -> Tensor:
    """Zero a random ``fraction`` of the cells of a ``cells``×``cells`` grid, per sample."""
    if fraction <= 0:
        return aux
    if fraction >= 1:
        return torch.zeros_like(aux)
    b = aux.shape[0]
    keep = (torch.rand(b, 1, cells, cells, generator=generator) >= fraction).float()
    keep = F.interpolate(keep, size=aux.shape[-2:], mode="nearest").to(aux)
    return aux * keep


def perturb(
    batch: Mapping[str, Tensor],
    kind: str,
    level: float,
    rgb_mean: Tensor,
    rgb_std: Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """``(rgb, aux)`` of a normalised batch under one perturbation at one level."""
    rgb, aux = batch["rgb"], batch["aux"]
    if kind == "aux_shift_px":
        return rgb, shift_aux(aux, int(level))
    if kind == "aux_rotation_deg":
        return rgb, rotate_aux(aux, float(level))
    if kind == "aux_noise_std":
        noise = torch.randn(aux.shape, generator=generator).to(aux)
        return rgb, aux + float(level) * noise
    if kind == "aux_holes_fraction":
        return rgb, holes(aux, float(level), generator)
    if kind in ("rgb_dark_factor", "rgb_noise_std"):
        mean, std = rgb_mean.to(rgb).view(1, -1, 1, 1), rgb_std.to(rgb).view(1, -1, 1, 1)
        raw = rgb * std + mean  # intensities in [0, 1]
        if kind == "rgb_dark_factor":
            raw = raw * float(level)
        elif float(level) > 0:
            noise = torch.randn(rgb.shape, generator=generator).to(rgb)
            raw = (raw + float(level) * noise).clamp(0.0, 1.0)
        return (raw - mean) / std, aux
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {sorted(PERTURBATIONS)}")


def _cached(loader: Iterable[dict[str, Any]], limit_bytes: int = 2**30) -> list[Any] | None:
    """The loader's batches in a list, or ``None`` when they exceed ``limit_bytes``."""
    batches, size = [], 0
    for batch in loader:
        size += sum(t.numel() * t.element_size() for t in batch.values() if isinstance(t, Tensor))
        if size > limit_bytes:
            return None
        batches.append(batch)
    return batches


@torch.no_grad()
def evaluate_checkpoint(
    resolved_config: str | Path,
    checkpoint: str | Path,
    perturbations: Mapping[str, Sequence[float]] = PERTURBATIONS,
) -> dict[str, list[float]]:
    """Test mIoU of one checkpoint at every level of every perturbation."""
    from rgbx_fusion.experiment import build
    from rgbx_fusion.tasks.metrics import SegmentationMetrics

    exp = build([resolved_config], {"data.num_workers": 0, "trainer.logger": False})
    model, dm = exp.task, exp.datamodule
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = ckpt.get(type(dm).__qualname__)
    if isinstance(state, dict):
        dm.load_state_dict(state)
    model.load_state_dict(ckpt["state_dict"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    metric = SegmentationMetrics(model.num_classes, model.ignore_index).to(device)
    rgb_mean = torch.tensor(dm.rgb_mean, dtype=torch.float32)
    rgb_std = torch.tensor(dm.rgb_std, dtype=torch.float32)
    loader = dm.test_dataloader()
    batches = _cached(loader) or loader  # decoded once when the test split fits in memory

    def score(kind: str, level: float) -> float:
        metric.reset()
        for i, batch in enumerate(batches):
            gen = torch.Generator().manual_seed(i)
            rgb, aux = perturb(batch, kind, level, rgb_mean, rgb_std, gen)
            logits = model(rgb.to(device), aux.to(device))
            metric.update(logits.argmax(1), batch["mask"].to(device))
        return float(metric.scores()["mIoU"])

    clean: float | None = None
    curves: dict[str, list[float]] = {}
    for kind, levels in perturbations.items():
        curves[kind] = []
        for level in levels:
            if is_clean(kind, level):
                clean = score(kind, level) if clean is None else clean
                curves[kind].append(clean)
            else:
                curves[kind].append(score(kind, level))
    return curves


def run_robustness(
    metrics: Sequence[dict[str, Any]],
    out: Path,
    perturbations: Mapping[str, Sequence[float]] = PERTURBATIONS,
) -> list[dict[str, Any]]:
    """Sweep every run's best checkpoint (cached in its folder); write robustness.csv / .png."""
    rows: list[dict[str, Any]] = []
    for m in metrics:
        folder = out / "runs" / m["variant"] / f"seed{m['seed']}"
        cache = folder / "robustness.json"
        levels = {k: list(v) for k, v in perturbations.items()}
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if cached.get("levels") == levels:
            curves = cached["curves"]
        else:
            curves = evaluate_checkpoint(m["resolved_config"], m["checkpoint"], perturbations)
            write_text_atomic(cache, json.dumps({"levels": levels, "curves": curves}, indent=2))
        for kind, values in curves.items():
            for level, miou in zip(levels[kind], values, strict=True):
                rows.append(
                    {
                        "variant": m["variant"],
                        "seed": m["seed"],
                        "perturbation": kind,
                        "level": level,
                        "test_mIoU": miou,
                    }
                )
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["variant", "seed", "perturbation", "level", "test_mIoU"]
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "robustness.csv", buf.getvalue())
    if rows:
        plot_robustness(rows, out / "robustness.png")
    return rows


def plot_robustness(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per perturbation, one curve per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rgbx_fusion.compare.report import _save

    kinds = list(dict.fromkeys(r["perturbation"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]  # distinct colours for 20 variants
    for ax, kind in zip(axes[0], kinds, strict=True):
        for n, v in enumerate(variants):
            pts: dict[float, list[float]] = {}
            for r in rows:
                if r["variant"] == v and r["perturbation"] == kind:
                    pts.setdefault(float(r["level"]), []).append(float(r["test_mIoU"]))
            xs = sorted(pts)
            style = {"color": colors[n % 20], "linestyle": ("-", "--", ":")[n // 20 % 3]}
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", label=v, **style)
        ax.set_xlabel(kind)
        ax.set_ylabel("test mIoU")
        ax.grid(alpha=0.3)
        if kind == "rgb_dark_factor":
            ax.invert_xaxis()  # darker to the right, like the other panels
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    _save(fig, path)
