"""Input perturbations of the robustness sweep: aux misregistration and sensor degradations.

The perturbations act on normalised batches inside the evaluation loop (nothing is
written to disk). Pixels are those of the evaluation image, i.e. of the test batches
as the recipe's ``data.eval_size`` resizes them (96×128 in the shipped compare configs),
not of the raw files. Image coordinates: x to the right, y down.

Misregistration of aux against RGB (the standard sweep of weakly-aligned RGB-T work):

* ``aux_shift_x_px``: aux moved by the signed level along x (positive: right,
  negative: left), levels 0, ±2, ..., ±10;
* ``aux_shift_y_px``: aux moved by the signed level along y (positive: down,
  negative: up), same levels;
* ``aux_rotation_deg``: aux rotated by the signed level about the image centre,
  positive = counter-clockwise as displayed (``torch.rot90(aux, 1, (-2, -1))`` at 90),
  levels 0, ±1, ±2, ±3, ±5;
* ``aux_scale``: aux zoomed by the factor about the image centre (> 1 enlarges: the
  content at distance d from the centre lands at distance level × d), levels 0.94,
  0.97, 1.0 (clean), 1.03, 1.06;
* ``aux_shift_px``: aux moved right by the level, 0/4/8/16 (the earlier protocol,
  kept: level s is ``aux_shift_x_px`` at +s, evaluated once for both).

Shifts are whole pixels and exact; vacated pixels are 0. Rotation and scale sample aux
bilinearly at the inverse-mapped pixel centres (the centre is pixel ((W-1)/2, (H-1)/2)),
pixels from outside the frame are 0.

Sensor degradations:

* ``aux_noise_std``: Gaussian noise of this std added to aux (in normalised units);
* ``aux_holes_fraction``: that share of the cells of an 8×8 grid of aux set to 0
  (1.0 = aux missing altogether);
* ``rgb_dark_factor``: RGB intensities (in [0, 1]) multiplied by the factor;
* ``rgb_noise_std``: Gaussian noise of this std added to RGB intensities (in [0, 1]),
  the result kept in [0, 1] like a sensor's output.

Convention:
    0 is the "missing" value of normalised aux (see ``Normalizer``), so shifts, warps
    and holes write 0. Level 0 (1.0 for darkness and scale) is the clean input. Noise
    and holes are drawn from a generator seeded per batch, so every variant sees the
    same perturbations. The clean input is evaluated once and shared by every curve,
    and so is any other setting two kinds share (``aux_shift_px`` s = ``aux_shift_x_px``
    +s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

SHIFT_LEVELS_PX: tuple[int, ...] = (-10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10)
PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "aux_shift_x_px": SHIFT_LEVELS_PX,
    "aux_shift_y_px": SHIFT_LEVELS_PX,
    "aux_rotation_deg": (-5.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0),
    "aux_scale": (0.94, 0.97, 1.0, 1.03, 1.06),
    "aux_shift_px": (0, 4, 8, 16),
    "aux_noise_std": (0.0, 0.5, 1.0),
    "aux_holes_fraction": (0.0, 0.5, 1.0),
    "rgb_dark_factor": (1.0, 0.3, 0.1),
    "rgb_noise_std": (0.0, 0.1, 0.2),
}
# the level that leaves the input as is (else 0)
CLEAN: dict[str, float] = {"rgb_dark_factor": 1.0, "aux_scale": 1.0}
ALIASES: dict[str, str] = {"aux_shift_px": "aux_shift_x_px"}  # the same input at the same level


def is_clean(kind: str, level: float) -> bool:
    """Whether ``level`` of perturbation ``kind`` leaves the input unchanged."""
    return float(level) == CLEAN.get(kind, 0.0)


def setting(kind: str, level: float) -> tuple[str, float]:
    """What ``perturb(kind, level)`` does, as a key: equal keys give equal inputs."""
    if is_clean(kind, level):
        return ("clean", 0.0)
    return (ALIASES.get(kind, kind), float(level))


def _whole(level: float) -> int:
    if float(level) != int(level):
        raise ValueError(f"shifts are whole pixels, got {level}")
    return int(level)


def _shift(x: Tensor, s: int, dim: int) -> Tensor:
    if s == 0:
        return x
    out = torch.zeros_like(x)
    n = x.shape[dim]
    if abs(s) >= n:
        return out
    if s > 0:
        out.narrow(dim, s, n - s).copy_(x.narrow(dim, 0, n - s))
    else:
        out.narrow(dim, 0, n + s).copy_(x.narrow(dim, -s, n + s))
    return out


def shift_aux(aux: Tensor, right: int = 0, down: int = 0) -> Tensor:
    """Move aux ``right`` pixels along x and ``down`` pixels along y (negative: left / up).

    Whole pixels, exact; vacated pixels are 0.

    Shape:
        aux: (B, C, H, W) -> (B, C, H, W)
    """
    return _shift(_shift(aux, int(right), -1), int(down), -2)


def warp_aux(aux: Tensor, degrees: float = 0.0, scale: float = 1.0) -> Tensor:
    """Rotate aux by ``degrees`` and zoom it by ``scale`` about the image centre.

    Positive degrees turn counter-clockwise as displayed (x right, y down); a scale
    above 1 enlarges. The content at pixel ``c + d`` (``c = ((W-1)/2, (H-1)/2)``, ``d``
    in pixels) lands at ``c + scale · R(degrees) d``: each output pixel centre is mapped
    back and aux is sampled there bilinearly, 0 outside the frame. Angles are in pixel
    units, so a non-square image turns without shearing.

    Shape:
        aux: (B, C, H, W) -> (B, C, H, W)
    """
    if float(degrees) == 0.0 and float(scale) == 1.0:
        return aux
    if not float(scale) > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = aux.shape[-2:]
    t = math.radians(float(degrees))
    c, s = math.cos(t) / float(scale), math.sin(t) / float(scale)
    # output -> input in normalised coordinates (align_corners=False: centre at 0,
    # x_n = x_px / (W/2)): input = R(-degrees) · output / scale
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float64)
    grid = F.affine_grid(theta.expand(aux.shape[0], 2, 3), list(aux.shape), align_corners=False).to(
        device=aux.device, dtype=aux.dtype
    )
    return F.grid_sample(aux, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate_aux(aux: Tensor, degrees: float) -> Tensor:
    """Rotate aux counter-clockwise (as displayed) by ``degrees`` about the image centre."""
    return warp_aux(aux, degrees=degrees)


def scale_aux(aux: Tensor, factor: float) -> Tensor:
    """Zoom aux by ``factor`` about the image centre (> 1 enlarges), 0 outside the frame."""
    return warp_aux(aux, scale=factor)


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
    if kind in ("aux_shift_x_px", "aux_shift_px"):
        return rgb, shift_aux(aux, right=_whole(level))
    if kind == "aux_shift_y_px":
        return rgb, shift_aux(aux, down=_whole(level))
    if kind == "aux_rotation_deg":
        return rgb, rotate_aux(aux, float(level))
    if kind == "aux_scale":
        return rgb, scale_aux(aux, float(level))
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
