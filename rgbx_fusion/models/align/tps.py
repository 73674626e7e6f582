"""Thin-plate-spline alignment: a smooth non-rigid warp driven by k×k control points."""

from __future__ import annotations

from typing import Literal

import torch
from kornia.geometry.transform import warp_points_tps
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.affine import LocalisationHead, normalised_grid
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.align.flow import warp_by_displacement


def tps_kernel(points_a: Tensor, points_b: Tensor) -> Tensor:
    """TPS radial basis ``U = r² log r = 0.5 r² log r²`` between two point sets.

    It is the kernel that kornia's ``warp_points_tps`` evaluates, so weights solved with it
    can be evaluated there.

    Shape:
        points_a: (N, 2); points_b: (M, 2) -> (N, M)
    """
    d2 = (points_a[:, None] - points_b[None]).pow(2).sum(-1)
    safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
    return torch.where(d2 > 0, 0.5 * d2 * safe.log(), torch.zeros_like(d2))


def tps_system_inverse(centres: Tensor) -> Tensor:
    """Inverse of the TPS interpolation matrix ``[[K, P], [Pᵀ, 0]]`` for fixed centres.

    ``inverse @ [values; 0]`` gives the kernel weights (first N rows) and affine weights (last
    3 rows, in kornia's order ``[a_0, a_x, a_y]``) of the spline interpolating ``values``.

    Shape:
        centres: (N, 2) -> (N + 3, N + 3)
    """
    n = centres.shape[0]
    k = tps_kernel(centres, centres)
    p = torch.cat((centres.new_ones(n, 1), centres), dim=1)
    top = torch.cat((k, p), dim=1)
    bottom = torch.cat((p.T, centres.new_zeros(3, 3)), dim=1)
    return torch.linalg.inv(torch.cat((top, bottom), dim=0))


class TPSAlign(AlignBase):
    """Thin-plate-spline alignment on a ``grid_size × grid_size`` lattice of control points.

    Each control point ``c_i`` carries an offset ``o_i``; the displacement field is the thin
    plate spline interpolating those offsets (centres fixed at ``c_i``), so
    ``aux_aligned(c_i) = aux(c_i + o_i)`` and the field is smooth in between. The spline is
    linear in the offsets: zero offsets give exactly zero displacement (the identity). The
    offsets come from a zero-initialised localisation head (``mode="head"``) or are one free
    parameter shared by the batch (``mode="free"``). The spline contains every affine map, so
    it can represent shift, rotation and scale exactly.

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux``.
        grid_size: control points per side (``k``; ``k²`` points, ``2k²`` parameters).
        mode: ``"head"`` or ``"free"``.
        hidden: width of the localisation head.
        bending_weight: weight of the bending energy ``Σ_xy wᵀ K w`` returned by
            :meth:`regularization` (zero for affine fields; 0 disables it).

    Convention:
        Control points sit on ``linspace(-1, 1, k)`` in both axes of the normalised frame of
        :func:`~rgbx_fusion.models.align.affine.normalised_grid` (the ``align_corners=False``
        frame, so the outer ones lie on the image border), row-major (x fastest). Offsets are
        ``(dx, dy)`` in the same normalised units (``1`` = ``W/2`` px in x, ``H/2`` px in y).
        The spline is evaluated with kornia's ``warp_points_tps``; weights are solved here
        because kornia's ``get_tps_transform`` centres its kernels on the *target* points,
        which is not linear in the offsets and is the identity only up to solver round-off.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, (B, C2, H, W));
        last_transform(): (B, k², 2) control-point offsets ((1, k², 2) in free mode).
    """

    summary = "thin-plate spline on k×k control points (smooth non-rigid warp)"

    centres: Tensor
    system_inv: Tensor
    kernel: Tensor

    def __init__(
        self,
        rgb_channels: int = 3,
        aux_channels: int = 1,
        grid_size: int = 4,
        mode: Literal["head", "free"] = "head",
        hidden: int = 32,
        bending_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("head", "free"):
            raise ConfigError(f"TPSAlign: mode must be 'head' or 'free', got {mode!r}")
        if grid_size < 2:
            raise ConfigError(f"TPSAlign: grid_size must be >= 2, got {grid_size}")
        self.mode = mode
        self.grid_size = grid_size
        self.bending_weight = bending_weight
        n = grid_size * grid_size
        axis = torch.linspace(-1.0, 1.0, grid_size, dtype=torch.float64)
        gy, gx = torch.meshgrid(axis, axis, indexing="ij")
        centres = torch.stack((gx, gy), dim=-1).reshape(n, 2)
        self.register_buffer("centres", centres.float(), persistent=False)
        # Solved once in float64: the lattice never changes, only the offsets do.
        self.register_buffer("system_inv", tps_system_inverse(centres).float(), persistent=False)
        self.register_buffer("kernel", tps_kernel(centres, centres).float(), persistent=False)
        self.head: LocalisationHead | None = None
        self.offsets: nn.Parameter | None = None
        if mode == "head":
            self.head = LocalisationHead(rgb_channels + aux_channels, 2 * n, hidden)
        else:
            self.offsets = nn.Parameter(torch.zeros(1, n, 2))
        self._last_offsets: Tensor | None = None
        self._last_reg: Tensor | None = None

    def control_offsets(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """Offsets ``(B or 1, k², 2)`` of the control points, normalised units."""
        if self.head is not None:
            return self.head(torch.cat((x_rgb, x_aux), dim=1)).view(x_rgb.shape[0], -1, 2)
        assert self.offsets is not None
        return self.offsets

    def spline_weights(self, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Kernel ``(B, k², 2)`` and affine ``(B, 3, 2)`` weights interpolating ``offsets``."""
        inv = self.system_inv.to(offsets.dtype)
        rhs = torch.cat((offsets, offsets.new_zeros(offsets.shape[0], 3, 2)), dim=1)
        weights = inv @ rhs
        n = offsets.shape[1]
        return weights[:, :n], weights[:, n:]

    def displacement(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """The flow (pixels) that :meth:`forward` applies; ``(B, 2, H, W)`` or ``(1, 2, H, W)``."""
        h, w = x_aux.shape[-2:]
        offsets = self.control_offsets(x_rgb, x_aux)
        b = offsets.shape[0]
        kernel_w, affine_w = self.spline_weights(offsets)
        grid = normalised_grid(h, w, device=offsets.device, dtype=offsets.dtype).expand(b, -1, -1)
        centres = self.centres.to(offsets.dtype).expand(b, -1, -1)
        field = warp_points_tps(grid, centres, kernel_w, affine_w)  # (B, H*W, 2), normalised
        self._last_offsets = offsets.detach()
        self._last_reg = None
        if self.bending_weight > 0:
            kernel = self.kernel.to(offsets.dtype)
            energy = torch.einsum("bnc,nm,bmc->b", kernel_w, kernel, kernel_w).mean()
            self._last_reg = self.bending_weight * energy
        flow = field * field.new_tensor([w / 2, h / 2])
        return flow.transpose(1, 2).reshape(b, 2, h, w)

    @torch.no_grad()
    def set_offsets(self, offsets: Tensor) -> None:
        """Set the free offsets (``mode="free"`` only), ``(k², 2)`` or ``(1, k², 2)``."""
        if self.offsets is None:
            raise ConfigError("TPSAlign.set_offsets needs mode='free'")
        self.offsets.copy_(offsets.reshape(self.offsets.shape))

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        return warp_by_displacement(self, x_rgb, x_aux)

    def regularization(self) -> Tensor | None:
        """``bending_weight`` × bending energy of the last forward (``None`` when disabled)."""
        return self._last_reg

    def last_transform(self) -> Tensor | None:
        """The last control-point offsets, ``(B, k², 2)`` in normalised units."""
        return self._last_offsets
