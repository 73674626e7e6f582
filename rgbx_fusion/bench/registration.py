"""Accuracy and speed of :func:`rgbx_fusion.geometry.registration.register` on known warps.

Every pair starts registered; its aux image is then warped by a random known transform
(shift ≤ 12 px, rotation ≤ 4°, scale ± 6 % about the image centre, the range of the
weakly aligned RGB-X literature) and registered back. The end-point error (EPE) is the mean
distance, over every RGB pixel, between where the estimated and the true ``aux_from_rgb``
send it. Doing nothing leaves the EPE of the warp itself.

Pairs: any registered RGB / aux files given by the caller (e.g. an NYUDv2 frame with its
depth) and synthetic RGB-T frames lit by day and by night (the night colour image is
nearly black: the hard case).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from rgbx_fusion.data.depth import read_image_array
from rgbx_fusion.data.sets.synthetic_scene import render_frame
from rgbx_fusion.errors import DatasetError
from rgbx_fusion.geometry.registration import MODELS, endpoint_error, register

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Pair:
    """A registered pair: RGB (H, W, 3) in [0, 1], aux (H, W, C) with 0 = missing."""

    name: str
    group: str
    rgb: F32
    aux: F32


def random_transform(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_shift: float = 12.0,
    max_rotation: float = 4.0,
    max_scale: float = 0.06,
) -> npt.NDArray[np.float64]:
    """A random similarity ``aux_from_rgb`` (pixels) about the image centre."""
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    shift = rng.uniform(-max_shift, max_shift, size=2)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + shift
    return matrix


def misregister(aux: F32, aux_from_rgb: npt.NDArray[np.float64], nearest: bool) -> F32:
    """The aux image a sensor would record if ``aux_from_rgb`` were its true offset.

    ``out(q) = aux(M⁻¹ q)``, so that sampling ``out`` at ``M p`` gives back ``aux(p)``;
    pixels from outside the frame are 0 (missing).
    """
    h, w = aux.shape[:2]
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.warpPerspective(aux, aux_from_rgb, (w, h), flags=flags, borderValue=0.0)
    inside = cv2.warpPerspective(
        np.ones((h, w), np.float32), aux_from_rgb, (w, h), flags=flags, borderValue=0.0
    )
    out = np.asarray(out, np.float32).reshape(aux.shape)
    out[inside < 0.999] = 0.0  # the frame's edge holds no blend of values and "missing"
    return out


def read_pair(rgb_path: Path, aux_path: Path) -> Pair:
    """A registered pair from files: 8-bit RGB and depth (.npy metres / 16-bit PNG mm) or HHA."""
    rgb = read_image_array(rgb_path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise DatasetError(rgb_path, "an 8-bit colour image", f"{rgb.dtype} {rgb.shape}")
    if aux_path.suffix.lower() == ".npy":
        aux = np.load(aux_path).astype(np.float32)
    else:
        raw = read_image_array(aux_path)
        aux = raw.astype(np.float32) / (1000.0 if raw.dtype == np.uint16 else 255.0)
    if aux.ndim == 2:
        aux = aux[..., None]
    if aux.shape[:2] != rgb.shape[:2]:
        raise DatasetError(
            aux_path, f"the size of {rgb_path.name} {rgb.shape[:2]}", f"{aux.shape[:2]}"
        )
    return Pair(aux_path.stem, aux_path.parent.name, rgb[..., :3].astype(np.float32) / 255.0, aux)


def synthetic_pairs(count: int, height: int = 480, width: int = 640) -> Iterator[Pair]:
    """``count`` synthetic RGB-T frames lit by day, then the same scenes at night."""
    for daylight, group in ((True, "synthetic RGB-T day"), (False, "synthetic RGB-T night")):
        for seed in range(count):
            frame = render_frame(1000 + seed, height, width, "thermal", daylight=daylight)
            rgb = frame.rgb.astype(np.float32) / 255.0
            yield Pair(f"{group}/{seed}", group, rgb, frame.aux[..., None])


@dataclass(frozen=True)
class Trial:
    group: str
    model: str
    before: float
    after: float
    confidence: float
    seconds: float


def run_trials(
    pairs: Sequence[Pair],
    models: Sequence[str] = MODELS,
    warps: int = 8,
    seed: int = 0,
    **options: Any,
) -> list[Trial]:
    """Warp every pair ``warps`` times and register each warp back with every model.

    ``options`` go to :func:`~rgbx_fusion.geometry.registration.register`.
    """
    from rich.progress import Progress

    from rgbx_fusion.console import console

    trials = []
    rng = np.random.default_rng(seed)
    if pairs:  # the first call pays for allocator and kernel warm-up; keep it out of the timing
        first = pairs[0]
        register(
            torch.from_numpy(first.rgb).permute(2, 0, 1)[None],
            torch.from_numpy(first.aux).permute(2, 0, 1)[None],
            **options,
        )
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("registering", total=len(pairs) * warps * len(models))
        for pair in pairs:
            trials += _pair_trials(pair, models, warps, rng, options, lambda: bar.advance(task))
    return trials


def _pair_trials(
    pair: Pair,
    models: Sequence[str],
    warps: int,
    rng: np.random.Generator,
    options: dict[str, Any],
    advance: Callable[[], object],
) -> list[Trial]:
    """``warps`` random warps of one pair, each registered back with every model."""
    trials = []
    h, w = pair.rgb.shape[:2]
    nearest = bool((pair.aux == 0).any())  # depth with holes: never blend across them
    rgb_t = torch.from_numpy(pair.rgb).permute(2, 0, 1)[None]
    for _ in range(warps):
        truth = random_transform(rng, h, w)
        aux_t = torch.from_numpy(misregister(pair.aux, truth, nearest)).permute(2, 0, 1)[None]
        before = endpoint_error(np.eye(3), truth, h, w)
        for model in models:
            start = time.perf_counter()
            result = register(rgb_t, aux_t, model, **options)
            seconds = time.perf_counter() - start
            after = endpoint_error(result.aux_from_rgb[0].cpu().numpy(), truth, h, w)
            trials.append(
                Trial(pair.group, model, before, after, float(result.confidence[0]), seconds)
            )
            advance()
    return trials


def load_learned_aligner(path: str | Path, aux_channels: int) -> torch.nn.Module:
    """The ``CorrelationAlign`` of an alignment run (its folder or checkpoint), in eval mode."""
    from rgbx_fusion.errors import CheckpointError
    from rgbx_fusion.models.align.correlation import CorrelationAlign
    from rgbx_fusion.models.state_dict import best_checkpoint

    ckpt = best_checkpoint(path)
    if not ckpt.is_file():
        raise CheckpointError(f"alignment checkpoint {ckpt} does not exist")
    hp = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    aligner = hp.get("aligner") if isinstance(hp, dict) else None
    if not isinstance(aligner, dict) or not str(aligner.get("class_path", "")).endswith(
        "CorrelationAlign"
    ):
        raise CheckpointError(f"{ckpt}: not an AlignmentTask checkpoint of a CorrelationAlign")
    init = {k: v for k, v in aligner.get("init_args", {}).items() if k not in ("checkpoint",)}
    init["freeze"] = False
    module = CorrelationAlign(3, aux_channels, **init, checkpoint=str(ckpt))
    return module.eval()


def _resize_matrix(matrix: npt.NDArray[np.float64], factor: float) -> npt.NDArray[np.float64]:
    """A pixel map on an image resized by ``factor`` → the same map on the original pixels."""
    s = np.array([[factor, 0, 0.5 * factor - 0.5], [0, factor, 0.5 * factor - 0.5], [0, 0, 1]])
    return np.asarray(s @ matrix @ np.linalg.inv(s), np.float64)


def learned_trials(
    pairs: Sequence[Pair],
    aligner: Callable[[int], torch.nn.Module],
    width: int,
    refine: str | None = "affine",
    warps: int = 8,
    seed: int = 0,
) -> list[Trial]:
    """The learned aligner on the warps of :func:`run_trials` (same seed: the same warps).

    ``aligner(aux_channels)`` gives the aligner for a pair's aux channels. It runs on the
    pair resized to ``width`` pixels wide (its training scale); its matrix
    is brought back to full resolution. ``refine``: then :func:`register` the pair it
    aligned with that model and compose both (rows ``learned`` and ``learned+<refine>``).
    """
    import torch.nn.functional as F

    trials = []
    rng = np.random.default_rng(seed)
    for pair in pairs:
        net = aligner(pair.aux.shape[-1])
        h, w = pair.rgb.shape[:2]
        factor = w / width
        size = (round(h / factor), width)
        nearest = bool((pair.aux == 0).any())
        rgb_t = torch.from_numpy(pair.rgb).permute(2, 0, 1)[None]
        for _ in range(warps):
            truth = random_transform(rng, h, w)
            aux = misregister(pair.aux, truth, nearest)
            aux_t = torch.from_numpy(aux).permute(2, 0, 1)[None]
            before = endpoint_error(np.eye(3), truth, h, w)
            start = time.perf_counter()
            with torch.no_grad():
                small_rgb = F.interpolate(rgb_t, size=size, mode="area")
                small_aux = F.interpolate(aux_t, size=size, mode="nearest")
                net(small_rgb, small_aux)
            small = net.last_transform()  # type: ignore[operator]
            learned = _resize_matrix(small[0].double().numpy(), factor)
            seconds = time.perf_counter() - start
            err = endpoint_error(learned, truth, h, w)
            trials.append(Trial(pair.group, "learned", before, err, float("nan"), seconds))
            if refine is None:
                continue
            aligned = cv2.warpPerspective(
                aux,
                learned,
                (w, h),
                flags=(cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP,
                borderValue=0.0,
            )
            aligned_t = torch.from_numpy(np.asarray(aligned, np.float32).reshape(aux.shape))
            result = register(rgb_t, aligned_t.permute(2, 0, 1)[None], refine)
            total = learned @ result.aux_from_rgb[0].cpu().numpy()
            seconds = time.perf_counter() - start
            err = endpoint_error(total, truth, h, w)
            conf = float(result.confidence[0])
            trials.append(Trial(pair.group, f"learned+{refine}", before, err, conf, seconds))
    return trials


def _order(model: str) -> int:
    return MODELS.index(model) if model in MODELS else len(MODELS) + len(model)


def summarise(trials: Sequence[Trial]) -> list[dict[str, float | str | int]]:
    """One row per (pair group, model): EPE before / after (median, p95), time per pair."""
    rows: list[dict[str, float | str | int]] = []
    keys = sorted({(t.group, t.model) for t in trials}, key=lambda k: (k[0], _order(k[1])))
    for group, model in keys:
        sel = [t for t in trials if t.group == group and t.model == model]
        after = np.array([t.after for t in sel])
        rows.append(
            {
                "pairs": group,
                "model": model,
                "warps": len(sel),
                "epe_before_median": float(np.median([t.before for t in sel])),
                "epe_median": float(np.median(after)),
                "epe_p95": float(np.percentile(after, 95)),
                "epe_max": float(after.max()),
                "low_confidence": int(sum(t.confidence < 0.45 for t in sel)),
                "seconds_per_pair": float(np.mean([t.seconds for t in sel])),
            }
        )
    return rows
