"""Normalised gradient fields: the cross-modal score that registration maximises.

Pieces :mod:`rgbx_fusion.geometry.registration` builds on: per-pixel structure tensors
(all channels of an image), validity-aware pyramid levels (holes filled only to place
edges), the coordinate frames of the transform parameters, the RGB points a level is
scored on, and the NGF score of a pair under a transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d, spatial_gradient
from kornia.geometry.transform import pyrdown
from torch import Tensor


def prepare(rgb: Tensor, aux: Tensor, aux_valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """float32 images and the aux validity (float 0/1), missing aux pixels set to 0.

    Missing: ``aux_valid`` False, else every channel 0; and non-finite values. One pixel
    is taken off every hole and frame edge, where resampled images blend values with
    "missing".
    """
    if aux_valid is None:
        aux_valid = (aux != 0).any(dim=1, keepdim=True)
    aux_valid = aux_valid & torch.isfinite(aux).all(dim=1, keepdim=True)
    valid = -F.max_pool2d(-aux_valid.float(), 3, stride=1, padding=1)
    aux = torch.where(valid > 0.5, aux, torch.zeros_like(aux)).float()
    return rgb.float(), aux, (valid > 0.5).float()


@dataclass(frozen=True)
class Level:
    """One pyramid level: hole-filled image, where it is measured, its structure tensor."""

    image: Tensor  # (B, C, h, w)
    valid: Tensor  # (B, 1, h, w) float 0/1: measured here
    defined: Tensor  # (B, 1, h, w) float 0/1: enough measurements nearby for a gradient
    tensor: Tensor  # (B, 3, h, w): Sxx, Sxy, Syy, normalised (see normalise)
    scale: float  # level pixels per native pixel


def pyramid(image: Tensor, valid: Tensor, halvings: int, used: int) -> list[Level]:
    """The ``used`` coarsest of ``halvings + 1`` pyramid levels, coarse first."""
    weighted, weight = image * valid, valid
    out: list[Level] = []
    scale = 1.0
    for level in range(halvings + 1):
        if level >= halvings + 1 - used:
            out.append(make_level(weighted, weight, scale))
        if level < halvings:
            width = weighted.shape[-1]
            weighted, weight = pyrdown(weighted), pyrdown(weight)
            scale *= weighted.shape[-1] / width
    return out[::-1]


def make_level(weighted: Tensor, weight: Tensor, scale: float) -> Level:
    """Fill holes by normalised convolution (to place edges), then the structure tensor."""
    if bool((weight > 0.99).all()):  # nothing to fill (colour images, complete aux)
        image = weighted / weight
        ones = torch.ones_like(weight)
        return Level(image, ones, ones, normalise(structure_tensor(image), ones), scale)
    spread = gaussian_blur2d(weight, (9, 9), (2.0, 2.0))
    image = torch.where(
        weight > 0.99,
        weighted / weight.clamp_min(1e-6),
        gaussian_blur2d(weighted, (9, 9), (2.0, 2.0)) / spread.clamp_min(1e-6),
    )
    near = (spread > 0.3).float() * (weight > 0.5)
    defined = -F.max_pool2d(-near, 3, stride=1, padding=1)  # Sobel reads the 3×3 neighbours
    tensor = structure_tensor(image)
    return Level(image, (weight > 0.99).float(), defined, normalise(tensor, defined), scale)


def structure_tensor(image: Tensor) -> Tensor:
    """Per-pixel structure tensor (Sobel gradients) summed over channels: (B, 3, h, w)."""
    grad = spatial_gradient(image, mode="sobel")  # (B, C, 2, h, w)
    gx, gy = grad[:, :, 0], grad[:, :, 1]
    return torch.stack(((gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1)), dim=1)


def normalise(tensor: Tensor, weight: Tensor) -> Tensor:
    """Structure tensor / (its trace + half the mean trace over ``weight``)."""
    count = weight.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    trace = tensor[:, 0:1] + tensor[:, 2:3]
    eps2 = 0.5 * (trace * weight).sum(dim=(2, 3), keepdim=True) / count
    return tensor / (trace + eps2.clamp_min(1e-12))


class Frames:
    """Coordinate frames: 8 centred parameters ↔ pixel matrices at any pyramid level.

    Parameters ``(tx, ty, a11, a12, a21, a22, p1, p2)`` give the centred transform
    ``I + [[a11, a12, tx], [a21, a22, ty], [p1, p2, 0]]``; centred coordinates put the image
    centre at 0 and half the longer side at 1, in both images.
    """

    def __init__(self, rgb_size: torch.Size, aux_size: torch.Size) -> None:
        self.rgb_size = (int(rgb_size[0]), int(rgb_size[1]))
        self.aux_size = (int(aux_size[0]), int(aux_size[1]))
        self.half = max(self.rgb_size) / 2.0
        self._ends: dict[tuple[float, float, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._order = [2, 3, 0, 4, 5, 1, 6, 7, 8]  # (tx, ty, a11, a12, a21, a22, p1, p2, 0)

    @staticmethod
    def _centred_from_level(size: tuple[int, int], scale: float, like: Tensor) -> Tensor:
        h, w = size
        half = max(h, w) / 2.0
        t = torch.eye(3, dtype=like.dtype, device=like.device)
        # level pixel q = scale * (p + 0.5) - 0.5 for native pixel p
        t[0, 0] = t[1, 1] = 1.0 / (scale * half)
        t[0, 2] = ((0.5 / scale - 0.5) - (w - 1) / 2.0) / half
        t[1, 2] = ((0.5 / scale - 0.5) - (h - 1) / 2.0) / half
        return t

    def level_matrix(self, full: Tensor, rgb_scale: float, aux_scale: float) -> Tensor:
        """(B, 8) parameters → aux_from_rgb between the pixel grids of one level."""
        key = (rgb_scale, aux_scale, full.dtype, full.device)
        if key not in self._ends:
            to_c = self._centred_from_level(self.rgb_size, rgb_scale, full)
            from_c = torch.linalg.inv(self._centred_from_level(self.aux_size, aux_scale, full))
            self._ends[key] = (to_c, from_c)
        to_c, from_c = self._ends[key]
        b = full.shape[0]
        delta = torch.cat((full, torch.zeros_like(full[:, :1])), dim=1)[:, self._order]
        centred = delta.view(b, 3, 3) + torch.eye(3, dtype=full.dtype, device=full.device)
        return from_c @ centred @ to_c

    def params(self, matrix: Tensor) -> Tensor:
        """The inverse of :meth:`pixel_matrix`: (B, 3, 3) native pixel matrix → (B, 8)."""
        to_c = self._centred_from_level(self.rgb_size, 1.0, matrix)
        from_c = torch.linalg.inv(self._centred_from_level(self.aux_size, 1.0, matrix))
        centred = torch.linalg.inv(from_c) @ matrix @ torch.linalg.inv(to_c)
        centred = centred / centred[:, 2:3, 2:3]
        delta = (centred - torch.eye(3, dtype=matrix.dtype, device=matrix.device)).flatten(1)
        return delta[:, [2, 5, 0, 1, 3, 4, 6, 7]]

    def pixel_matrix(self, full: Tensor) -> Tensor:
        m = self.level_matrix(full, 1.0, 1.0)
        return m / m[:, 2:3, 2:3]


def pixels(h: int, w: int, like: Tensor) -> Tensor:
    """Homogeneous pixel coordinates (h·w, 3), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=like.device, dtype=like.dtype),
        torch.arange(w, device=like.device, dtype=like.dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys, torch.ones_like(xs)), dim=-1).view(-1, 3)


def sample(image: Tensor, points: Tensor, matrix: Tensor) -> Tensor:
    """Bilinear samples of ``image`` (B, C, h', w') at ``matrix`` · ``points`` (B, N, 3).

    Returns (B, C, N); positions outside the image read 0.
    """
    moved = points @ matrix.transpose(1, 2)
    xy = moved[..., :2] / moved[..., 2:].clamp_min(1e-6)
    h, w = image.shape[-2:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=xy.device)
    grid = (xy * scale - 1.0)[:, :, None].to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", align_corners=True)[..., 0]


@dataclass(frozen=True)
class Points:
    """The RGB pixels a level is scored on: where the colour image has structure."""

    coords: Tensor  # (B, N, 3) homogeneous level pixels
    tensor: Tensor  # (B, 3, N) normalised RGB structure tensor there
    weight: Tensor  # (B, N) 1 where the RGB gradient is defined


def select(rgb: Level, max_points: int) -> Points:
    """Each pair's ``max_points`` pixels of strongest normalised RGB structure."""
    h, w = rgb.tensor.shape[-2:]
    strength = (rgb.tensor[:, 0] + rgb.tensor[:, 2]).flatten(1) * rgb.defined.flatten(1)
    n = min(max_points, h * w)
    index = strength.topk(n, dim=1).indices  # (B, N)
    coords = pixels(h, w, rgb.tensor)[index]
    tensor = rgb.tensor.flatten(2).gather(2, index[:, None].expand(-1, 3, -1))
    weight = rgb.defined.flatten(1).gather(1, index)
    return Points(coords, tensor, weight)


def score(
    points: Points,
    aux: Level,
    frames: Frames,
    full: Tensor,
    rgb_scale: float,
    weight: Tensor | None = None,
) -> Tensor:
    """Mean NGF score per pair over the selected points under 8 ``full`` parameters.

    The aux structure tensor is sampled at the mapped points and turned into the RGB frame
    with the transform's linear part ``J`` (``Jᵀ S J``, ``J`` scaled to unit determinant
    so that scale does not change the score). ``weight`` (see :func:`point_weights`) may be
    reused across small parameter changes.
    """
    matrix = frames.level_matrix(full, rgb_scale, aux.scale)
    if weight is None:
        weight = point_weights(points, aux, matrix)
    s = sample(aux.tensor, points.coords, matrix)
    jac = matrix[:, :2, :2] / matrix[:, :2, :2].det().abs().sqrt().clamp_min(1e-6)[:, None, None]
    a, b, c, d = (v[:, None] for v in jac.flatten(1).unbind(1))
    sxx, sxy, syy = s.unbind(1)
    # Jᵀ S J for J = [[a, b], [c, d]] and S = [[sxx, sxy], [sxy, syy]]
    txx = a * a * sxx + 2 * a * c * sxy + c * c * syy
    txy = a * b * sxx + (a * d + b * c) * sxy + c * d * syy
    tyy = b * b * sxx + 2 * b * d * sxy + d * d * syy
    r = points.tensor
    inner = r[:, 0] * txx + 2.0 * r[:, 1] * txy + r[:, 2] * tyy
    return (inner * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def point_weights(points: Points, aux: Level, matrix: Tensor) -> Tensor:
    """(B, N) 1 where both gradients are defined at a point under ``matrix``."""
    with torch.no_grad():
        defined = sample(aux.defined, points.coords, matrix)[:, 0]
        return points.weight * (defined > 0.999).float()
