"""Seeing what was aligned: checkerboards, edge overlays and flow images of the aligners.

``rgbx-fusion predict ... --dump_alignment true`` adds :class:`AlignmentWriter`, which writes
for every predicted image, under ``<output_dir>/alignment/``:

- ``<name>_checker.png``: checkerboard of RGB and the colourised aux, *before | after* the
  input-level aligner (left | right). Aligned structures continue across tile seams.
- ``<name>_overlay.png``: aux edges (magenta) over the dimmed RGB, before | after.
- ``<name>_flow.png``: the input-level aligner's displacement field (hue = direction,
  saturation = magnitude; white = no motion) with a legend (colour wheel, max magnitude in px).
- ``<name>_<stage>_flow.png``: the same for every per-stage aligner (``aligners.2`` →
  ``stage2``), its field upsampled to the image and rescaled to image pixels.
- ``summary.json``: per image and aligner, mean / max displacement (image pixels) and, for the
  input-level aligner, the misfit (:func:`alignment_misfit`) before and after.

Everything is vectorised numpy/torch; files are written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from rgbx_fusion.data.atomic import write_atomic, write_text_atomic
from rgbx_fusion.data.transforms import Normalizer
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.align.flow import pixel_grid, resize_flow

UInt8Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


def flow_to_color(
    flow: npt.NDArray[np.floating], max_magnitude: float | None = None
) -> tuple[UInt8Image, float]:
    """Colour-code a displacement field: hue = direction, saturation = magnitude, value = 1.

    Convention:
        ``flow`` channel 0 = x (right), 1 = y (down), in pixels. Hue 0° (red) points right,
        hues run counter-clockwise on screen (90°, yellow-green, points up). Zero motion is
        white; ``max_magnitude`` (default: the field's own maximum) is fully saturated.

    Shape:
        flow: (2, H, W) -> ((H, W, 3) uint8, max_magnitude)
    """
    fx, fy = flow[0].astype(np.float32), flow[1].astype(np.float32)
    mag = np.hypot(fx, fy)
    top = float(mag.max()) if max_magnitude is None else float(max_magnitude)
    hue = (np.degrees(np.arctan2(-fy, fx)) % 360.0) / 2.0  # OpenCV hue range is [0, 180)
    sat = np.clip(mag / top, 0.0, 1.0) * 255.0 if top > 0 else np.zeros_like(mag)
    hsv = np.stack((np.round(hue) % 180, np.round(sat), np.full_like(mag, 255.0)), axis=-1)
    rgb = np.asarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB), np.uint8)
    return rgb, top


def _colour_wheel(size: int) -> UInt8Image:
    """A disc coloured like :func:`flow_to_color` (radius = max magnitude), white outside."""
    r = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack((xs - r, ys - r))
    wheel, _ = flow_to_color(flow, r)
    wheel[np.hypot(xs - r, ys - r) > r] = 255
    return wheel


def with_flow_legend(image: UInt8Image, max_magnitude: float) -> UInt8Image:
    """Append a strip below ``image``: a colour wheel and ``max <m> px``."""
    h, w = image.shape[:2]
    strip_h = max(12, min(24, h // 6))
    strip = Image.new("RGB", (w, strip_h), (255, 255, 255))
    strip.paste(Image.fromarray(_colour_wheel(strip_h - 2)), (1, 1))
    ImageDraw.Draw(strip).text((strip_h + 3, 1), f"max {max_magnitude:.1f} px", fill=(0, 0, 0))
    return np.concatenate((image, np.asarray(strip, np.uint8)), axis=0)


def colorize_aux(
    aux: npt.NDArray[np.floating], reference: npt.NDArray[np.floating] | None = None
) -> UInt8Image:
    """Display colours for a (normalised) aux map; missing pixels (all channels 0) are black.

    One channel: the 2nd–98th percentile of the valid pixels of ``reference`` (default: ``aux``
    itself; pass the unaligned aux to colour before and after alike) → the turbo colour map.
    Three channels (e.g. HHA): the same stretch per channel, shown as RGB. Other counts:
    channel 0.

    Shape:
        aux, reference: (C, H, W) -> (H, W, 3) uint8
    """
    reference = aux if reference is None else reference
    valid, ref_valid = _valid(aux), _valid(reference)
    chans = aux if aux.shape[0] == 3 else aux[:1]
    refs = reference if aux.shape[0] == 3 else reference[:1]
    out = np.zeros((*aux.shape[1:], chans.shape[0]), np.float32)
    if ref_valid.any():
        vals = refs[:, ref_valid]
        lo, hi = np.percentile(vals, 2, axis=1), np.percentile(vals, 98, axis=1)
        scale = np.where(hi > lo, hi - lo, 1.0)
        out = np.clip((chans - lo[:, None, None]) / scale[:, None, None], 0, 1).transpose(1, 2, 0)
    out8 = np.round(out * 255).astype(np.uint8)
    if out8.shape[-1] == 1:
        turbo = cv2.applyColorMap(out8[..., 0], cv2.COLORMAP_TURBO)
        out8 = np.asarray(cv2.cvtColor(turbo, cv2.COLOR_BGR2RGB), np.uint8)
    out8[~valid] = 0
    return np.ascontiguousarray(out8)


def edge_strength(
    image: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_] | None = None
) -> FloatArray:
    """Edge strength of a single-channel map: ``|Laplacian|`` after a 1-px Gaussian blur.

    A second derivative rather than the gradient, so that smooth ramps (a floor receding from
    a depth camera) do not light up, while steps and creases (object outlines) do. 0 next
    to invalid pixels: missing-data borders are not scene edges.

    Shape:
        image: (H, W); valid: (H, W) -> (H, W)
    """
    img = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    mag = np.abs(cv2.Laplacian(img, cv2.CV_32F, ksize=3, borderType=cv2.BORDER_REPLICATE))
    if valid is not None:
        kernel = np.ones((5, 5), np.uint8)
        mag[cv2.erode(valid.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) == 0] = 0
    return np.asarray(mag, np.float32)


def _luma(rgb: UInt8Image) -> FloatArray:
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def _aux_edges(aux: npt.NDArray[np.floating]) -> FloatArray:
    valid = _valid(aux)
    return np.max([edge_strength(c, valid) for c in aux], axis=0)


def _valid(aux: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
    """Pixels with data: missing aux is exactly 0, and a warp blends it into ~0 at borders."""
    valid: npt.NDArray[np.bool_] = (np.abs(aux) > 1e-3).any(axis=0)
    return valid


def alignment_misfit(
    rgb: UInt8Image,
    aux: npt.NDArray[np.floating],
    bins: int = 32,
    mask: npt.NDArray[np.bool_] | None = None,
) -> float:
    """Normalised variation of information between RGB luminance and aux: ``1 - I / H``.

    ``I`` is the mutual information and ``H`` the joint entropy of the (luma, aux channel 0)
    histogram over the pixels where aux is valid (``bins`` bins each, aux clipped to its
    1st–99th percentile). The classic multimodal registration criterion: it needs no
    relation between the intensities of the two modalities, only that one predicts the
    other, which it does best when they are registered. 0 = one determines the other,
    1 = independent; lower is better registered. Compare two alignments on the same pixels:
    pass ``mask`` (e.g. where both are valid), which is intersected with aux's valid pixels.

    Shape:
        rgb: (H, W, 3) uint8; aux: (C, H, W); mask: (H, W) -> scalar in [0, 1]
    """
    valid = _valid(aux) if mask is None else _valid(aux) & mask
    if valid.sum() < 2:
        return 1.0
    a = _luma(rgb)[valid]
    b = aux[0][valid].astype(np.float32)
    lo, hi = np.percentile(b, [1, 99])
    joint, _, _ = np.histogram2d(a, np.clip(b, lo, hi), bins=bins)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    mutual = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
    entropy = float(-(p[nz] * np.log(p[nz])).sum())
    return 1.0 if entropy == 0 else 1.0 - mutual / entropy


def checkerboard(first: UInt8Image, second: UInt8Image, tile: int | None = None) -> UInt8Image:
    """Alternate square tiles of two images (``first`` in the top-left tile).

    Shape:
        first, second: (H, W, 3) -> (H, W, 3)
    """
    h, w = first.shape[:2]
    tile = tile or max(4, min(h, w) // 6)
    ys, xs = np.mgrid[0:h, 0:w]
    pick = ((ys // tile + xs // tile) % 2 == 1)[..., None]
    return np.where(pick, second, first)


def edge_overlay(
    rgb: UInt8Image, aux: npt.NDArray[np.floating], full_scale: float | None = None
) -> UInt8Image:
    """Aux edges in magenta over the dimmed RGB image (edge strength = opacity).

    Edges at ``full_scale`` (default: the 99th percentile of this aux's edge magnitudes) and
    above are opaque; pass the same value for before and after.

    Shape:
        rgb: (H, W, 3) uint8; aux: (C, H, W) -> (H, W, 3) uint8
    """
    edges = _aux_edges(aux)
    top = full_scale if full_scale is not None else edge_scale(aux)
    alpha = np.clip(edges / max(top, 1e-6), 0, 1)[..., None]
    magenta = np.array([255, 0, 255], np.float32)
    out = rgb.astype(np.float32) * 0.6 * (1 - alpha) + magenta * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def edge_scale(aux: npt.NDArray[np.floating]) -> float:
    """99th percentile of the non-zero aux edge magnitudes (1 when there are none)."""
    edges = _aux_edges(aux)
    return float(np.percentile(edges[edges > 0], 99)) if (edges > 0).any() else 1.0


def side_by_side(left: UInt8Image, right: UInt8Image, gap: int = 2) -> UInt8Image:
    """``left | right`` with a white ``gap``-pixel separator."""
    sep = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate((left, sep, right), axis=1)


def _save(image: UInt8Image, path: Path) -> None:
    write_atomic(path, lambda p: Image.fromarray(image).save(p, format="PNG"))


def write_flow_image(flow: npt.NDArray[np.floating], path: Path) -> dict[str, float]:
    """Write :func:`flow_to_color` with its legend; return mean / max magnitude (px)."""
    color, top = flow_to_color(flow)
    _save(with_flow_legend(color, top), path)
    return {"mean_px": float(np.hypot(flow[0], flow[1]).mean()), "max_px": top}


def write_alignment_images(
    out_dir: str | Path,
    name: str,
    rgb: UInt8Image,
    aux_before: npt.NDArray[np.floating],
    aux_after: npt.NDArray[np.floating],
    flow: npt.NDArray[np.floating] | None = None,
) -> dict[str, float]:
    """Write ``<name>_checker.png``, ``<name>_overlay.png`` and (with a flow) ``<name>_flow.png``.

    Returns the misfit before and after (see :func:`alignment_misfit`) and, with a flow, its
    mean / max magnitude in pixels.

    Shape:
        rgb: (H, W, 3) uint8; aux_before, aux_after: (C, H, W); flow: (2, H, W) pixels
    """
    out = Path(out_dir)
    before, after = colorize_aux(aux_before), colorize_aux(aux_after, reference=aux_before)
    _save(
        side_by_side(checkerboard(rgb, before), checkerboard(rgb, after)),
        out / f"{name}_checker.png",
    )
    scale = edge_scale(aux_before)
    _save(
        side_by_side(edge_overlay(rgb, aux_before, scale), edge_overlay(rgb, aux_after, scale)),
        out / f"{name}_overlay.png",
    )
    common = _valid(aux_before) & _valid(aux_after)
    stats = {
        "misfit_before": alignment_misfit(rgb, aux_before, mask=common),
        "misfit_after": alignment_misfit(rgb, aux_after, mask=common),
    }
    if flow is not None:
        stats.update(write_flow_image(flow, out / f"{name}_flow.png"))
    return stats


def flow_from_matrix(
    aux_from_rgb: Tensor, native_size: tuple[int, int], size: tuple[int, int] | None = None
) -> Tensor:
    """The displacement an aligner should apply for a known ``aux_from_rgb`` transform.

    ``aux_from_rgb`` maps RGB pixels to aux pixels at the native resolution (as stored in
    ``meta.json`` by ``prepare synthetic --misalign``): the aux image was made by
    ``aux(q) = aux_registered(M⁻¹ q)``, so the aligner must sample ``aux`` at ``M p``, i.e.
    ``flow(p) = M p - p`` — rescaled here to an image resized to ``size`` (pixel centres kept
    in register, as :func:`~rgbx_fusion.models.align.flow.resize_flow` does).

    Shape:
        aux_from_rgb: (B, 3, 3) or (3, 3) -> (B, 2, *size) in pixels of ``size``
    """
    h, w = native_size
    size = size or native_size
    matrix = aux_from_rgb.reshape(-1, 3, 3).double()
    grid = pixel_grid(h, w, dtype=torch.float64).flatten(2)  # (1, 2, h*w)
    points = torch.cat((grid, torch.ones_like(grid[:, :1])), dim=1)
    moved = matrix @ points
    moved = moved[:, :2] / moved[:, 2:]
    flow = (moved - grid).reshape(-1, 2, h, w)
    return resize_flow(flow, size).float()


def endpoint_error(flow: Tensor, reference: Tensor) -> Tensor:
    """Mean Euclidean distance between two displacement fields, per image.

    Shape:
        flow, reference: (B, 2, H, W) -> (B,)
    """
    return (flow - reference).norm(dim=1).flatten(1).mean(1)


def _stage_label(module_name: str) -> str:
    """``aligners.2`` → ``stage2``; other module paths with dots replaced."""
    head, _, index = module_name.rpartition(".")
    return f"stage{index}" if head.endswith("aligners") and index.isdigit() else module_name


class AlignmentWriter(pl.Callback):
    """Prediction callback writing the alignment images of every predicted image.

    Reads the aligners of ``pl_module.net`` after each predict batch: the input-level aligner
    (``input_align``) is run again on the batch to get aux before and after, per-stage aligners
    contribute their :meth:`~rgbx_fusion.models.align.base.AlignBase.last_displacement` from
    the prediction's forward pass, upsampled to the image. See the module docstring for files.
    """

    def __init__(self, output_dir: str | Path, normalizer: Normalizer) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.normalizer = normalizer
        self.summary: dict[str, dict[str, dict[str, float]]] = {}

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        net = getattr(pl_module, "net", pl_module)
        rgb_t, aux_t = batch["rgb"].to(pl_module.device), batch["aux"].to(pl_module.device)
        names = _names(batch.get("meta"), batch_idx, rgb_t.shape[0], len(self.summary))
        rgbs = self.normalizer.denormalize_rgb(rgb_t.float().cpu()).round().byte()
        rgbs_np = rgbs.permute(0, 2, 3, 1).numpy()
        size = (rgb_t.shape[-2], rgb_t.shape[-1])
        aux_np = aux_t.float().cpu().numpy()
        for module_name, module in net.named_modules():
            if not isinstance(module, AlignBase):
                continue
            if module_name == "input_align":
                with torch.no_grad():
                    after = module(rgb_t, aux_t)[1].float().cpu().numpy()
                flows = _image_flows(module.last_displacement(), size)
                for i, name in enumerate(names):
                    flow = None if flows is None else flows[i]
                    stats = write_alignment_images(
                        self.output_dir, name, rgbs_np[i], aux_np[i], after[i], flow
                    )
                    self.summary.setdefault(name, {})["input"] = stats
                continue
            flows = _image_flows(module.last_displacement(), size)
            if flows is None:
                continue
            label = _stage_label(module_name)
            for i, name in enumerate(names):
                stats = write_flow_image(flows[i], self.output_dir / f"{name}_{label}_flow.png")
                self.summary.setdefault(name, {})[label] = stats

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.summary:
            text = json.dumps(dict(sorted(self.summary.items())), indent=1)
            write_text_atomic(self.output_dir / "summary.json", text)


def _image_flows(flow: Tensor | None, size: tuple[int, int]) -> npt.NDArray[np.float32] | None:
    """A stored displacement resized to the image and expressed in image pixels."""
    if flow is None:
        return None
    flow = flow.float()
    if tuple(flow.shape[-2:]) != size:
        flow = resize_flow(flow, size)
    return flow.cpu().numpy()


def _names(meta: Any, batch_idx: int, batch: int, seen: int) -> list[str]:
    """Sample names from the batch meta (a list of dicts), else ``<batch>_<index>``."""
    names = [f"{batch_idx:05d}_{seen + i:05d}" for i in range(batch)]
    if isinstance(meta, Sequence) and len(meta) == batch:
        names = [
            str(m["name"]) if isinstance(m, dict) and "name" in m else fallback
            for m, fallback in zip(meta, names, strict=True)
        ]
    return names
