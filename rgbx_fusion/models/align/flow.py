"""Dense-flow alignment, plus the pixel-coordinate sampler that every warping aligner uses.

Every parametric aligner in this package (affine, homography, TPS, flow) reduces its transform
to a dense *displacement field* and resamples aux with :func:`warp_by_flow`. The sampler is a
gather-based bilinear interpolation written in pixel coordinates, so a zero displacement lands
exactly on pixel centres and returns the input bit for bit. ``F.grid_sample`` and kornia's
``warp_affine`` go through normalised coordinates and are off by ~1e-5 at the identity, which
would break the "identity at initialisation" contract of :class:`AlignBase`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase


def pixel_grid(
    height: int, width: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Coordinates of every pixel centre.

    Convention:
        x grows to the right (column index), y grows downwards (row index); the centre of
        pixel ``(row i, column j)`` is ``(x, y) = (j, i)``.

    Shape:
        -> (1, 2, H, W), channel 0 = x, channel 1 = y.
    """
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y))[None]


def check_same_grid(module: nn.Module, x_rgb: Tensor, x_aux: Tensor) -> None:
    """Raise a clear error when an aligner gets inputs that do not share batch and grid."""
    if x_rgb.ndim != 4 or x_aux.ndim != 4:
        raise ValueError(
            f"{type(module).__name__}: expected rgb and aux as (B, C, H, W), got "
            f"{tuple(x_rgb.shape)} and {tuple(x_aux.shape)}"
        )
    if x_rgb.shape[0] != x_aux.shape[0] or x_rgb.shape[-2:] != x_aux.shape[-2:]:
        raise ValueError(
            f"{type(module).__name__}: rgb and aux must share batch size and H×W, got "
            f"{tuple(x_rgb.shape)} and {tuple(x_aux.shape)}; resize aux first (or use "
            "DepthReprojection, which resamples between cameras)"
        )


def warp_by_displacement(aligner: AlignBase, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
    """The ``forward`` of a dense aligner with a ``displacement(x_rgb, x_aux)`` method: check
    the grids, compute and remember its flow, warp aux along it."""
    check_same_grid(aligner, x_rgb, x_aux)
    flow = aligner.displacement(x_rgb, x_aux)  # type: ignore[operator]
    aligner._remember_displacement(flow, x_aux.shape[0])
    return x_rgb, warp_by_flow(x_aux, flow)


def warp_by_flow(image: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``image`` by a dense displacement field.

    ``out(x, y) = image(x + flow_x(x, y), y + flow_y(x, y))``, bilinear, zero outside.

    Convention:
        Pixel coordinates as in :func:`pixel_grid` (pixel centres at integers). This equals
        ``F.grid_sample(image, grid, align_corners=False, padding_mode="zeros")`` with
        ``grid = (2 * (p + flow) + 1) / (W, H) - 1`` up to float round-off, but is exact at
        integer positions: a zero flow returns ``image`` unchanged. The gradient with respect
        to ``flow`` at integer positions is the forward difference (as in ``grid_sample``).

    Shape:
        image: (B, C, H, W); flow: (B, 2, H, W) or (1, 2, H, W), in pixels -> (B, C, H, W)
    """
    b, c, h, w = image.shape
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[-2:] != (h, w):
        raise ValueError(f"flow must be (B, 2, {h}, {w}), got {tuple(flow.shape)}")
    pos = pixel_grid(h, w, device=flow.device, dtype=flow.dtype) + flow.expand(b, -1, -1, -1)
    x, y = pos[:, 0], pos[:, 1]
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = x - x0, y - y0  # the gradient reaches flow through these fractions
    x0i, y0i = x0.long(), y0.long()
    flat = image.reshape(b, c, h * w)
    out = torch.zeros_like(image)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xi, yi = x0i + dx, y0i + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        weight = (wx if dx else 1 - wx) * (wy if dy else 1 - wy) * inside
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(b, 1, h * w)
        values = flat.gather(2, index.expand(b, c, h * w)).reshape(b, c, h, w)
        out = out + values * weight[:, None].to(image.dtype)
    return out


def flow_smoothness(flow: Tensor, order: int = 1) -> Tensor:
    """Mean absolute finite difference of a flow field (anisotropic total variation).

    ``order=1`` penalises every spatial change (zero only for constant flow); ``order=2``
    penalises curvature (zero for any affine flow, so it does not bias rotations or scales).

    Shape:
        flow: (B, 2, H, W) -> scalar
    """
    if order not in (1, 2):
        raise ConfigError(f"smoothness order must be 1 or 2, got {order}")
    dx = flow[..., :, 1:] - flow[..., :, :-1]
    dy = flow[..., 1:, :] - flow[..., :-1, :]
    if order == 2:
        dx = dx[..., :, 1:] - dx[..., :, :-1]
        dy = dy[..., 1:, :] - dy[..., :-1, :]
    zero = flow.new_zeros(())
    tv_x = dx.abs().mean() if dx.numel() else zero
    tv_y = dy.abs().mean() if dy.numel() else zero
    return tv_x + tv_y


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a pixel-unit flow and rescale its values to the new pixel size.

    Shape:
        flow: (B, 2, h, w) -> (B, 2, *size)
    """
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = flow.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
    return out * scale


def _flow_net(in_channels: int, hidden: int) -> nn.Sequential:
    head = nn.Conv2d(hidden, 2, 3, padding=1)
    nn.init.zeros_(head.weight)  # zero flow at initialisation: the aligner starts as identity
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.GroupNorm(math.gcd(8, hidden), hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(inplace=True),
        head,
    )


class FlowAlign(AlignBase):
    """Dense per-pixel offsets predicted from ``concat(rgb, aux)``.

    ``mode="head"``: a small conv net per pyramid level predicts a residual flow; levels run
    coarse to fine (level ``l`` works at ``1/(finest_stride * 2**l)`` of the input size on
    inputs resampled with area averaging); each level sees aux already warped by the upsampled
    coarser flow.
    ``mode="free"``: the flow is a learnable field independent of the inputs (for fitting one
    pair): ``levels`` parameter grids of size ``free_grid * 2**l``, upsampled bilinearly
    (corner nodes on the corner pixel centres, ``align_corners=True``) and summed. Free
    parameters are in half-image units (``1`` = ``W/2`` px in x, ``H/2`` px in y), so they do
    not depend on the input resolution.

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux``.
        mode: ``"head"`` or ``"free"``.
        hidden: width of the flow nets.
        levels: number of pyramid levels (1 = single scale).
        smoothness_weight: weight of :func:`flow_smoothness` in :meth:`regularization`
            (0 disables it).
        smoothness_order: 1 (total variation) or 2 (curvature).
        free_grid: coarsest ``(rows, cols)`` of the free parameter grid.
        finest_stride: stride of the finest level in head mode (a power of two; 2 runs the
            finest flow net at half resolution and upsamples its flow bilinearly, a quarter of
            the cost for a field that is smooth anyway).

    Convention:
        Flow in pixels at the input resolution, channel 0 = x (right), 1 = y (down); the
        aligned aux at pixel ``p`` is aux sampled at ``p + flow(p)`` (see :func:`warp_by_flow`).

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, (B, C2, H, W));
        last_transform(): (B, 2, H, W) flow.
    """

    summary = "dense per-pixel flow from a small conv net, coarse-to-fine, TV-regularised"

    def __init__(
        self,
        rgb_channels: int = 3,
        aux_channels: int = 1,
        mode: Literal["head", "free"] = "head",
        hidden: int = 32,
        levels: int = 1,
        smoothness_weight: float = 0.1,
        smoothness_order: int = 1,
        free_grid: tuple[int, int] = (8, 8),
        finest_stride: int = 1,
    ) -> None:
        super().__init__()
        if finest_stride < 1 or finest_stride & (finest_stride - 1):
            raise ConfigError(
                f"FlowAlign: finest_stride must be a power of two, got {finest_stride}"
            )
        if mode not in ("head", "free"):
            raise ConfigError(f"FlowAlign: mode must be 'head' or 'free', got {mode!r}")
        if levels < 1:
            raise ConfigError(f"FlowAlign: levels must be >= 1, got {levels}")
        if smoothness_order not in (1, 2):
            raise ConfigError(f"FlowAlign: smoothness_order must be 1 or 2, got {smoothness_order}")
        self.mode = mode
        self.levels = levels
        self.smoothness_weight = smoothness_weight
        self.smoothness_order = smoothness_order
        self.finest_stride = finest_stride
        self.nets = nn.ModuleList()
        self.free = nn.ParameterList()
        if mode == "head":
            for _ in range(levels):
                self.nets.append(_flow_net(rgb_channels + aux_channels, hidden))
        else:
            gh, gw = free_grid
            for lvl in range(levels):
                self.free.append(nn.Parameter(torch.zeros(1, 2, gh * 2**lvl, gw * 2**lvl)))
        self._last_flow: Tensor | None = None
        self._last_reg: Tensor | None = None

    def displacement(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """The flow (pixels) that :meth:`forward` applies; ``(B, 2, H, W)`` or ``(1, 2, H, W)``."""
        h, w = x_aux.shape[-2:]
        if self.mode == "free":
            free = [
                F.interpolate(p, size=(h, w), mode="bilinear", align_corners=True)
                for p in self.free
            ]
            total = torch.stack(free).sum(0)
            return total * total.new_tensor([w / 2, h / 2]).view(1, 2, 1, 1)
        flow: Tensor | None = None
        for lvl in reversed(range(self.levels)):
            stride = self.finest_stride * 2**lvl
            size = (max(1, math.ceil(h / stride)), max(1, math.ceil(w / stride)))
            rgb_l = x_rgb if stride == 1 else F.interpolate(x_rgb, size=size, mode="area")
            aux_l = x_aux if stride == 1 else F.interpolate(x_aux, size=size, mode="area")
            if flow is None:
                warped, flow = aux_l, aux_l.new_zeros(aux_l.shape[0], 2, *size)
            else:
                flow = resize_flow(flow, size)
                warped = warp_by_flow(aux_l, flow)
            flow = flow + self.nets[lvl](torch.cat((rgb_l, warped), dim=1))
        assert flow is not None
        return flow if flow.shape[-2:] == (h, w) else resize_flow(flow, (h, w))

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        check_same_grid(self, x_rgb, x_aux)
        flow = self.displacement(x_rgb, x_aux)
        self._last_flow = flow.detach()
        self._remember_displacement(flow, x_aux.shape[0])
        self._last_reg = (
            self.smoothness_weight * flow_smoothness(flow, self.smoothness_order)
            if self.smoothness_weight > 0
            else None
        )
        return x_rgb, warp_by_flow(x_aux, flow)

    def regularization(self) -> Tensor | None:
        """``smoothness_weight * flow_smoothness(flow)`` of the last forward (``None`` if 0)."""
        return self._last_reg

    def last_transform(self) -> Tensor | None:
        """The last flow, detached, ``(B, 2, H, W)`` in pixels (``(1, 2, H, W)`` in free mode)."""
        return self._last_flow
