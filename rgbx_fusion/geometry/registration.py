"""Classical multimodal registration: one global transform per RGB / aux image pair.

:func:`register` finds, for every pair of a batch, the 3×3 ``aux_from_rgb`` matrix that maps
RGB pixel coordinates ``(x, y, 1)`` to aux pixel coordinates (pixel centres at integers, the
convention of ``meta.json`` and :mod:`rgbx_fusion.geometry.camera`). No training is involved.

How:
    - **Similarity.** Depth, thermal or HHA share edges with the colour image, not
      intensities, so the score compares local edge *orientation*: the normalised gradient
      field (NGF) of each image, written with structure tensors so that a multi-channel
      image (RGB, HHA) contributes all its channels. Per pixel the score is
      ``<Sr, Sa> / ((tr Sr + er²)(tr Sa + ea²))``: near 1 where both images have a strong
      edge of the same orientation, 0 where either is flat. ``er²`` and ``ea²`` are half of
      each image's mean gradient energy, so a dark (night) colour image scores like a
      bright one and weak texture counts less than real edges. Missing aux pixels (all
      channels 0 by default) are filled from valid neighbours only to place edges; pixels
      without a measurement nearby are left out of the score, never read as values.
    - **Coarse to fine.** A validity-aware Gaussian pyramid (kornia ``pyrdown`` of
      ``aux · valid`` and ``valid``). On the coarsest level an exhaustive search over
      shifts picks each pair's start; every level then refines the full model with Adam on
      batched parameters, one independent transform per pair. The parameters live in
      centred coordinates scaled by half the longer image side, so they carry across
      levels unchanged. kornia's ``ImageRegistrator`` optimises one transform for one pair
      with a per-pixel intensity loss; this needs a batch, a validity mask and a
      cross-modal score, so its pyramid and filters are used, not its loop.
    - **Confidence** combines two checks. *Sharpness*: the score at the solution against
      the same transform moved by 2 px in eight directions; a correct registration sits on
      a sharp peak. *Margin*: in the coarse search, the winning shift against the best
      rival local maximum; unrelated content often has rivals nearly as good. Real scenes
      with repeated structure have small margins too, so the margin can halve the
      confidence but not more. A flat aux image, all-missing depth or no overlap give 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.geometry import ngf

MODELS = ("translation", "similarity", "affine", "homography")
_NUM_PARAMS = {"translation": 2, "similarity": 4, "affine": 6, "homography": 8}


@dataclass(frozen=True)
class Registration:
    """The result of :func:`register` for a batch of B pairs.

    Attributes:
        aux_from_rgb: (B, 3, 3) float64, RGB pixel → aux pixel (last row ends in 1).
        residual: (B,) float64 in [0, 1], ``1 − score`` at the solution (lower is better).
        confidence: (B,) float64 in [0, 1], how sharp and how unrivalled the solution is.
            Registered pairs score about 0.5–1, pairs of different scenes mostly below
            0.3 (rarely up to 0.5 between look-alike synthetic rooms).
        overlap: (B,) float64, the fraction of RGB pixels mapped onto measured aux pixels.
    """

    aux_from_rgb: Tensor
    residual: Tensor
    confidence: Tensor
    overlap: Tensor

    def reliable(self, min_confidence: float = 0.45, min_overlap: float = 0.3) -> Tensor:
        """(B,) bool: pairs whose transform can be used."""
        return (self.confidence >= min_confidence) & (self.overlap >= min_overlap)


def register(
    rgb: Tensor,
    aux: Tensor,
    model: str = "affine",
    *,
    aux_valid: Tensor | None = None,
    max_shift: float = 0.04,
    max_rotation: float = 3.0,
    max_scale: float = 0.04,
    iterations: tuple[int, ...] = (40, 20, 15),
    min_coarse: int = 100,
    max_points: int = 20000,
    shared: bool = False,
) -> Registration:
    """Register ``aux`` to ``rgb``: one ``aux_from_rgb`` transform per pair.

    Args:
        rgb: (B, 3, H, W) float in [0, 1].
        aux: (B, C, H', W') float: depth in metres, thermal or HHA in [0, 1]. It may have
            another size than ``rgb``; the transform maps between the two native grids.
        model: ``translation`` (2 DOF), ``similarity`` (4), ``affine`` (6) or ``homography`` (8).
        aux_valid: (B, 1, H', W') bool, the aux pixels that hold a measurement. Default:
            every pixel where not all channels are 0 (missing depth is stored as 0).
        max_shift: the largest shift the coarse search tries, as a fraction of the RGB
            image's longer side (0.04 = 26 px at 640×480).
        max_rotation: the coarse search also tries rotations up to this many degrees (in
            steps of at most 3°) and ...
        max_scale: ... scales up to 1 ± this (in steps of at most 0.04); the refinement
            goes on from the best of them, so smaller offsets are found without trying them.
        iterations: Adam steps per pyramid level, coarse to fine, ending at full resolution.
            Images too small for that many levels use the last counts.
        min_coarse: no level's shorter side is below this (the images' own size aside).
        max_points: each level is scored on at most this many RGB pixels per pair, those
            with the strongest colour structure (the others add almost nothing).
        shared: find one transform for the whole batch (a camera rig): the score summed
            over all pairs is maximised, so edges too weak to register one pair still
            add up. Every row of ``aux_from_rgb`` is then the same; ``residual``,
            ``confidence`` and ``overlap`` stay per pair, measured at that transform.

    Returns:
        :class:`Registration`, float64 on ``rgb``'s device.

    Shape:
        rgb: (B, 3, H, W), aux: (B, C, H', W') -> aux_from_rgb (B, 3, 3)
    """
    if model not in MODELS:
        raise ConfigError(f"register: model must be one of {MODELS}, got {model!r}")
    _check_inputs(rgb, aux, aux_valid, iterations)
    rgb, aux, valid = ngf.prepare(rgb, aux, aux_valid)
    halvings = 0
    while min(rgb.shape[-2:]) // 2 ** (halvings + 1) >= min_coarse:
        halvings += 1
    used = min(len(iterations), halvings + 1)
    iterations = iterations[-used:]
    rgb_levels = ngf.pyramid(rgb, torch.ones_like(rgb[:, :1]), halvings, used)
    aux_levels = ngf.pyramid(aux, valid, halvings, used)
    frames = ngf.Frames(rgb.shape[-2:], aux.shape[-2:])

    with torch.no_grad():
        linear = _candidates(model, max_rotation, max_scale)
        full, margin = _start(rgb_levels[0], aux_levels[0], frames, max_shift, linear, shared)
    for level, (steps, lr, la) in enumerate(zip(iterations, rgb_levels, aux_levels, strict=True)):
        points = ngf.select(lr, max_points)
        free = _level_model(model, level, len(iterations))
        full = _refine(points, la, frames, full, free, steps, lr.scale, shared)

    with torch.no_grad():
        score = ngf.score(points, aux_levels[-1], frames, full, rgb_levels[-1].scale)
        sharpness = _sharpness(points, aux_levels[-1], frames, full, score, rgb_levels[-1].scale)
        confidence = sharpness * (0.5 + 0.5 * (margin / _CLEAR_MARGIN).clamp(max=1.0))
        overlap = _overlap(rgb_levels[-1], aux_levels[-1], frames, full)
    return Registration(
        aux_from_rgb=frames.pixel_matrix(full.double()),
        residual=(1.0 - score).double().clamp(0.0, 1.0),
        confidence=confidence.double(),
        overlap=overlap.double(),
    )


def endpoint_error(
    a: Tensor | np.ndarray, b: Tensor | np.ndarray, height: int, width: int, step: int = 1
) -> float:
    """Mean distance (px) between where two ``aux_from_rgb`` matrices send the RGB pixels.

    Every ``step``-th pixel of an RGB image of ``height`` × ``width`` is counted.
    """
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    points = np.stack((xs.ravel(), ys.ravel(), np.ones(xs.size)))
    pa = np.asarray(a, np.float64) @ points
    pb = np.asarray(b, np.float64) @ points
    return float(np.linalg.norm(pa[:2] / pa[2] - pb[:2] / pb[2], axis=0).mean())


def support(
    rgb: Tensor,
    aux: Tensor,
    aux_from_rgb: Tensor,
    *,
    aux_valid: Tensor | None = None,
    distance: float = 6.0,
    max_points: int = 20000,
) -> Tensor:
    """How much each pair prefers a given transform to the same transform moved aside.

    The score at ``aux_from_rgb`` against the mean score with the transform shifted by
    ``distance`` RGB pixels in eight directions, relative: about 0 for a pair whose images
    show unrelated content (or nothing), clearly positive for a pair that agrees with the
    transform, even when its edges are too weak to register it alone.

    Shape:
        rgb: (B, 3, H, W), aux: (B, C, H', W'), aux_from_rgb: (B, 3, 3) or (3, 3) -> (B,)
    """
    _check_inputs(rgb, aux, aux_valid, (1,))
    rgb_level, aux_level = _native_levels(rgb, aux, aux_valid)
    frames = ngf.Frames(rgb.shape[-2:], aux.shape[-2:])
    matrix = torch.as_tensor(aux_from_rgb, dtype=torch.float64, device=rgb.device)
    matrix = matrix.reshape(-1, 3, 3).expand(rgb.shape[0], 3, 3)
    full = frames.params(matrix).float()
    points = ngf.select(rgb_level, max_points)
    with torch.no_grad():
        score = ngf.score(points, aux_level, frames, full, 1.0)
        step = distance / frames.half
        others = []
        for k in range(8):
            moved = full.clone()
            moved[:, 0] += step * math.cos(k * math.pi / 4.0)
            moved[:, 1] += step * math.sin(k * math.pi / 4.0)
            others.append(ngf.score(points, aux_level, frames, moved, 1.0))
    mean_other = torch.stack(others, dim=1).mean(dim=1)
    return ((score - mean_other) / score.clamp_min(1e-6)).double()


def _native_levels(
    rgb: Tensor, aux: Tensor, aux_valid: Tensor | None
) -> tuple[ngf.Level, ngf.Level]:
    """The full-resolution levels of both images (aux validity as in :func:`register`)."""
    rgb, aux, valid = ngf.prepare(rgb, aux, aux_valid)
    return (
        ngf.pyramid(rgb, torch.ones_like(rgb[:, :1]), 0, 1)[0],
        ngf.pyramid(aux, valid, 0, 1)[0],
    )


def _check_inputs(
    rgb: Tensor, aux: Tensor, aux_valid: Tensor | None, iterations: tuple[int, ...]
) -> None:
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ConfigError(f"register: rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
    if aux.ndim != 4 or aux.shape[0] != rgb.shape[0]:
        raise ConfigError(
            f"register: aux must be (B, C, H, W) with the batch of rgb ({rgb.shape[0]}), "
            f"got {tuple(aux.shape)}"
        )
    if not (rgb.is_floating_point() and aux.is_floating_point()):
        raise ConfigError(
            f"register: rgb and aux must be floating point, got {rgb.dtype} and {aux.dtype}"
        )
    if aux_valid is not None and (
        aux_valid.dtype != torch.bool or aux_valid.shape != (aux.shape[0], 1, *aux.shape[-2:])
    ):
        raise ConfigError(
            f"register: aux_valid must be a bool (B, 1, H', W') mask matching aux, got "
            f"{aux_valid.dtype} {tuple(aux_valid.shape)}"
        )
    if not iterations or min(iterations) < 1:
        raise ConfigError(f"register: iterations must be positive per level, got {iterations}")


def _level_model(model: str, level: int, levels: int) -> str:
    """Degrees of freedom freed coarse to fine: similarity first, the full model last.

    Shear and perspective are poorly determined by a coarse image and, freed too early,
    drift into a wrong basin; rotation, scale and shift are not.
    """
    order = MODELS.index(model)
    if order < MODELS.index("affine") or level == levels - 1:
        return model
    return MODELS[min(order, MODELS.index("similarity") + level)]


def _to_full(free: Tensor, model: str) -> Tensor:
    """A model's free parameters → all 8 (see :class:`ngf.Frames`)."""
    zero = torch.zeros_like(free[:, :1])
    if model == "similarity":  # tx, ty, s, r: linear part [[s, -r], [r, s]]
        tx, ty, s, r = free.split(1, dim=1)
        return torch.cat((tx, ty, s, -r, r, s, zero, zero), dim=1)
    return torch.cat((free, zero.expand(-1, 8 - free.shape[1])), dim=1)


def _from_full(full: Tensor, model: str) -> Tensor:
    """The nearest free parameters of ``model``."""
    if model == "similarity":
        s = (full[:, 2] + full[:, 5]) / 2.0
        r = (full[:, 4] - full[:, 3]) / 2.0
        return torch.stack((full[:, 0], full[:, 1], s, r), dim=1)
    return full[:, : _NUM_PARAMS[model]].clone()


def _candidates(model: str, max_rotation: float, max_scale: float) -> list[tuple[float, float]]:
    """(degrees, scale) pairs the coarse search tries: a grid with steps ≤ 3° and ≤ 0.04."""
    if model == "translation":
        return [(0.0, 1.0)]
    n_rot = math.ceil(max_rotation / 3.0 - 1e-9)
    n_scale = math.ceil(max_scale / 0.04 - 1e-9)
    angles = [max_rotation * k / max(n_rot, 1) for k in range(-n_rot, n_rot + 1)]
    scales = [1.0 + max_scale * k / max(n_scale, 1) for k in range(-n_scale, n_scale + 1)]
    return [(a, s) for a in angles for s in scales]


def _start(
    rgb: ngf.Level,
    aux: ngf.Level,
    frames: ngf.Frames,
    max_shift: float,
    linear: list[tuple[float, float]],
    shared: bool = False,
) -> tuple[Tensor, Tensor]:
    """Each pair's best start: every shift (FFT correlation) × a few rotations and scales.

    Also returns, per pair, the margin of the winning shift over the best rival shift
    (see :func:`_margin`).

    For each candidate linear part (rotation and scale; identity only for ``translation``)
    the aux structure tensor is resampled once; the NGF score of every shift up to
    ``max_shift`` then comes from one cross-correlation, computed with FFTs.
    """
    b, _, h, w = rgb.tensor.shape
    device = rgb.tensor.device
    reach = max(1, math.ceil(max_shift * 2.0 * frames.half * rgb.scale))
    ph, pw = h + reach, w + reach
    weights = torch.tensor([1.0, 2.0, 1.0], device=device).view(1, 3, 1, 1)
    spec_rgb = torch.fft.rfft2(rgb.tensor * rgb.defined * weights, s=(ph, pw)).conj()
    spec_count = torch.fft.rfft2(rgb.defined, s=(ph, pw)).conj()
    shifts = torch.arange(-reach, reach + 1, device=device)
    rows, cols = shifts % ph, shifts % pw
    points = ngf.pixels(h, w, rgb.tensor)[None].expand(b, -1, -1)
    best_score = torch.full((b,), -1.0, device=device)
    best = torch.zeros(b, 8, device=device)
    best_margin = torch.zeros(b, device=device)
    for angle, scale in linear:
        rad = math.radians(angle)
        full = torch.zeros(b, 8, device=device)
        full[:, 2:6] = torch.tensor(
            [
                scale * math.cos(rad) - 1.0,
                -scale * math.sin(rad),
                scale * math.sin(rad),
                scale * math.cos(rad) - 1.0,
            ],
            device=device,
        )
        matrix = frames.level_matrix(full, rgb.scale, aux.scale)
        sampled = ngf.sample(torch.cat((aux.tensor, aux.defined), dim=1), points, matrix)
        tensor = sampled[:, :3].view(b, 3, h, w)
        defined = (sampled[:, 3:] > 0.999).float().view(b, 1, h, w)
        # corr[t] = sum_p A(p) B(p + t), from conj(FFT(A)) · FFT(B)
        spec_aux = torch.fft.rfft2(tensor * defined, s=(ph, pw))
        corr = torch.fft.irfft2(spec_rgb * spec_aux, s=(ph, pw)).sum(1)[:, rows][:, :, cols]
        count = torch.fft.irfft2(spec_count * torch.fft.rfft2(defined, s=(ph, pw)), s=(ph, pw))
        count = count[:, 0][:, rows][:, :, cols]
        score = torch.where(count > 0.3 * h * w, corr / count.clamp_min(1.0), -1.0)
        if shared:  # one shift for the whole batch: the mean score over its pairs
            score = score.mean(dim=0, keepdim=True).expand(b, -1, -1)
        top, where = score.flatten(1).max(dim=1)
        margin = _margin(score, where, top)
        shift = torch.stack((shifts[where % len(shifts)], shifts[where // len(shifts)]), dim=1)
        # p -> C (p + t): the translation becomes the linear part times t (centred units)
        linear_part = full[:, 2:6].view(b, 2, 2) + torch.eye(2, device=device)
        t = shift.to(full.dtype) / (rgb.scale * frames.half)
        full[:, :2] = (linear_part @ t[..., None])[..., 0]
        better = top > best_score
        best_score = torch.where(better, top, best_score)
        best = torch.where(better[:, None], full, best)
        best_margin = torch.where(better, margin, best_margin)
    return best, best_margin


def _margin(score: Tensor, where: Tensor, top: Tensor) -> Tensor:
    """How far the best shift's score stands above the best other local maximum, relative.

    1 when no other local maximum exists; near 0 when another shift aligns about as much
    structure (repetitive or unrelated content).
    """
    n = score.shape[-1]
    iy, ix = where // n, where % n
    yy = torch.arange(n, device=score.device).view(1, -1, 1)
    xx = torch.arange(n, device=score.device).view(1, 1, -1)
    far = ((yy - iy[:, None, None]).abs() > 2) | ((xx - ix[:, None, None]).abs() > 2)
    local = score >= F.max_pool2d(score[:, None], 3, stride=1, padding=1)[:, 0]
    rivals = torch.where(far & local & (score > 0), score, torch.zeros_like(score))
    second = rivals.flatten(1).max(dim=1).values
    return ((top - second) / top.clamp_min(1e-9)).clamp(0.0, 1.0)


def _refine(
    points: ngf.Points,
    aux: ngf.Level,
    frames: ngf.Frames,
    full: Tensor,
    model: str,
    steps: int,
    rgb_scale: float,
    shared: bool = False,
) -> Tensor:
    """Adam on each pair's free parameters; the step shrinks from 1 to 0.05 level pixels.

    Small steps keep each pair in the basin the coarser level found; the score has many
    weak local maxima that a line search would jump into. The pairs' scores are
    independent, and Adam scales every parameter on its own, so a batch behaves like its
    pairs registered one by one.
    """
    pixel = 1.0 / (rgb_scale * frames.half)  # one level pixel in centred units
    rows = full.shape[0]
    start = full[:1] if shared else full  # shared: one row of parameters for every pair
    free = (_from_full(start.detach(), model) / pixel).requires_grad_(True)
    optimiser = torch.optim.Adam([free], lr=1.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=0.05)
    weight = None
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        current = _to_full(free * pixel, model).expand(rows, -1)
        if step % 5 == 0:  # the overlap changes slowly; refresh it every few steps
            weight = ngf.point_weights(
                points, aux, frames.level_matrix(current, rgb_scale, aux.scale)
            )
        score = ngf.score(points, aux, frames, current, rgb_scale, weight)
        (-score.sum()).backward()
        optimiser.step()
        schedule.step()
    return _to_full(free.detach() * pixel, model).expand(rows, -1).contiguous()


def _sharpness(
    points: ngf.Points,
    aux: ngf.Level,
    frames: ngf.Frames,
    full: Tensor,
    score: Tensor,
    rgb_scale: float,
) -> Tensor:
    """Relative drop of the score when the solution moves 2 level pixels in 8 directions."""
    distance = 2.0 / (rgb_scale * frames.half)
    drops = []
    for k in range(8):
        angle = k * math.pi / 4.0
        moved = full.clone()
        moved[:, 0] += distance * math.cos(angle)
        moved[:, 1] += distance * math.sin(angle)
        drops.append(score - ngf.score(points, aux, frames, moved, rgb_scale))
    drop = torch.stack(drops, dim=1).min(dim=1).values
    return (drop / score.clamp_min(1e-6) / _SHARP_PEAK).clamp(0.0, 1.0)


def _overlap(rgb: ngf.Level, aux: ngf.Level, frames: ngf.Frames, full: Tensor) -> Tensor:
    """Fraction of RGB pixels of a level that land on measured aux pixels."""
    b, _, h, w = rgb.tensor.shape
    matrix = frames.level_matrix(full, rgb.scale, aux.scale)
    points = ngf.pixels(h, w, full)[None].expand(b, -1, -1)
    measured = ngf.sample(aux.valid, points, matrix)[:, 0]
    return (measured > 0.5).float().mean(dim=1)


_SHARP_PEAK = 0.1  # relative drop of the score 2 px off the solution that counts as sharp
_CLEAR_MARGIN = 0.75  # relative margin over the best rival shift that counts as clear
