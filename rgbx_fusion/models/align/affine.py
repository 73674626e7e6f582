"""Global parametric alignment: affine (6 DOF) and homography (8 DOF), spatial-transformer style.

A localisation head looks at ``concat(rgb, aux)`` and predicts the transform as a *delta from
the identity*; its last layer is zero-initialised, so the aligner starts as the identity. In
``mode="free"`` the delta is one learnable parameter shared by the batch (no head), which is
what you want to fit the misregistration of one calibrated rig.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from kornia.geometry.linalg import transform_points
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.align.flow import check_same_grid, pixel_grid, warp_by_flow


def normalised_grid(
    height: int, width: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Pixel centres in normalised coordinates, ``u = (2x + 1) / W - 1``, ``v = (2y + 1) / H - 1``.

    Convention:
        The ``F.grid_sample(..., align_corners=False)`` frame: the image spans ``[-1, 1]`` from
        its left/top edge to its right/bottom edge; pixel centres sit half a pixel inside.

    Shape:
        -> (1, H * W, 2) in ``(u, v)`` order, row-major over pixels.
    """
    grid = pixel_grid(height, width, device=device, dtype=dtype)
    size = torch.tensor([width, height], device=device, dtype=dtype).view(1, 2, 1, 1)
    return ((2 * grid + 1) / size - 1).flatten(2).transpose(1, 2)


def matrix_to_pixels(matrix: Tensor, height: int, width: int) -> Tensor:
    """Convert a normalised 3×3 sampling matrix to pixel coordinates.

    Convention:
        ``matrix`` maps normalised rgb coordinates to normalised aux coordinates (see
        :func:`normalised_grid`); the result maps rgb pixel coordinates (centres at integers)
        to aux pixel coordinates. Kornia's ``warp_affine``/``warp_perspective`` take the
        opposite direction (source → destination), i.e. the inverse of this result.

    Shape:
        matrix: (B, 3, 3) -> (B, 3, 3)
    """
    n = matrix.new_tensor(
        [[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]]
    )
    return torch.linalg.inv(n) @ matrix @ n


class LocalisationHead(nn.Module):
    """``blocks`` × (stride-2 conv, GroupNorm, ReLU) → global average pool → zero-init linear.

    Each block doubles the receptive field; the default two blocks see 7 px, so misregistrations
    of more than a few pixels need more (four blocks see 31 px).

    Shape:
        x: (B, C, H, W) -> (B, out_features), all zeros at initialisation.
    """

    def __init__(
        self, in_channels: int, out_features: int, hidden: int = 32, blocks: int = 2
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ConfigError(f"LocalisationHead: blocks must be ≥ 1, got {blocks}")
        groups = math.gcd(8, hidden)
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=2, padding=1),
                nn.GroupNorm(groups, hidden),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.fc.weight)  # delta = 0 at initialisation: the identity transform
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class _MatrixAlign(AlignBase):
    """Shared machinery of the affine and homography aligners (see their docstrings)."""

    num_params: ClassVar[int] = 0

    def __init__(
        self,
        rgb_channels: int = 3,
        aux_channels: int = 1,
        mode: Literal["head", "free"] = "head",
        hidden: int = 32,
        head_blocks: int = 2,
    ) -> None:
        super().__init__()
        if mode not in ("head", "free"):
            raise ConfigError(f"{type(self).__name__}: mode must be 'head' or 'free', got {mode!r}")
        self.mode = mode
        self.head: LocalisationHead | None = None
        self.delta: nn.Parameter | None = None
        if mode == "head":
            self.head = LocalisationHead(
                rgb_channels + aux_channels, self.num_params, hidden, head_blocks
            )
        else:
            self.delta = nn.Parameter(torch.zeros(1, self.num_params))
        self._last_matrix: Tensor | None = None

    def _matrix_from_delta(self, delta: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _delta_from_matrix(self, matrix: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matrix(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """Normalised 3×3 matrix mapping rgb coordinates to aux coordinates, ``(B or 1, 3, 3)``."""
        if self.head is not None:
            delta = self.head(torch.cat((x_rgb, x_aux), dim=1))
        else:
            assert self.delta is not None
            delta = self.delta
        return self._matrix_from_delta(delta)

    @torch.no_grad()
    def set_matrix(self, matrix: Tensor) -> None:
        """Set the free transform (``mode="free"`` only) from a normalised matrix.

        Shape:
            matrix: (3, 3) or (1, 3, 3)
        """
        if self.delta is None:
            raise ConfigError(f"{type(self).__name__}.set_matrix needs mode='free'")
        self.delta.copy_(self._delta_from_matrix(matrix.reshape(1, 3, 3).to(self.delta)))

    def displacement(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        """The flow (pixels) that :meth:`forward` applies; ``(B, 2, H, W)`` or ``(1, 2, H, W)``."""
        h, w = x_aux.shape[-2:]
        matrix = self.matrix(x_rgb, x_aux)
        self._last_matrix = matrix.detach()
        grid = normalised_grid(h, w, device=x_aux.device, dtype=matrix.dtype)
        moved = transform_points(matrix, grid.expand(matrix.shape[0], -1, -1))
        # (u' - u) is exactly 0 for the identity matrix, so the warp is exact there.
        flow = (moved - grid) * grid.new_tensor([w / 2, h / 2])
        return flow.transpose(1, 2).reshape(matrix.shape[0], 2, h, w)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        check_same_grid(self, x_rgb, x_aux)
        flow = self.displacement(x_rgb, x_aux)
        self._remember_displacement(flow, x_aux.shape[0])
        return x_rgb, warp_by_flow(x_aux, flow)


class AffineAlign(_MatrixAlign):
    """Affine alignment (6 DOF): ``aux_aligned(p) = aux(A p)``.

    ``A = I + Δ`` with ``Δ`` (2×3) predicted by a zero-initialised localisation head
    (``mode="head"``) or held as a free parameter (``mode="free"``).

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux``.
        mode: ``"head"`` (per-sample transform from the inputs) or ``"free"`` (one learnable
            transform for every input; the head is not built and rgb is ignored).
        hidden: width of the localisation head.
        head_blocks: stride-2 conv blocks of the localisation head (see
            :class:`LocalisationHead`).

    Convention:
        ``A`` acts on normalised coordinates (:func:`normalised_grid`, the
        ``align_corners=False`` frame, origin at the image centre), exactly like ``theta`` of
        ``F.affine_grid(theta, size, align_corners=False)``: it maps rgb coordinates to the aux
        coordinates to sample. Use :func:`matrix_to_pixels` for the pixel-space matrix. The
        warp itself runs in pixels through :func:`~rgbx_fusion.models.align.flow.warp_by_flow`.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, (B, C2, H, W));
        last_transform(): (B, 2, 3) normalised ``A`` ((1, 2, 3) in free mode).
    """

    summary = "global affine warp (6 DOF), spatial-transformer head or one free matrix"
    num_params = 6

    def _matrix_from_delta(self, delta: Tensor) -> Tensor:
        eye = torch.eye(3, device=delta.device, dtype=delta.dtype)
        bottom = delta.new_zeros(delta.shape[0], 1, 3)
        return eye + torch.cat((delta.view(-1, 2, 3), bottom), dim=1)

    def _delta_from_matrix(self, matrix: Tensor) -> Tensor:
        return (matrix - torch.eye(3, dtype=matrix.dtype, device=matrix.device))[:, :2].reshape(
            1, 6
        )

    def last_transform(self) -> Tensor | None:
        """The last normalised affine matrix, ``(B, 2, 3)``."""
        return None if self._last_matrix is None else self._last_matrix[:, :2]


class HomographyAlign(_MatrixAlign):
    """Homography alignment (8 DOF): ``aux_aligned(p) = aux(dehom(H [p; 1]))``.

    ``H = I + Δ`` with ``Δ[2, 2] = 0`` (8 free entries), predicted like :class:`AffineAlign`.

    Args:
        rgb_channels: channels of ``x_rgb``.
        aux_channels: channels of ``x_aux``.
        mode: ``"head"`` or ``"free"`` (see :class:`AffineAlign`).
        hidden: width of the localisation head.
        head_blocks: stride-2 conv blocks of the localisation head.

    Convention:
        ``H`` acts on normalised coordinates (see :class:`AffineAlign`) and maps rgb
        coordinates to aux coordinates; points are transformed with kornia's
        ``transform_points``.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, (B, C2, H, W));
        last_transform(): (B, 3, 3) normalised ``H`` ((1, 3, 3) in free mode).
    """

    summary = "global homography warp (8 DOF), spatial-transformer head or one free matrix"
    num_params = 8

    def _matrix_from_delta(self, delta: Tensor) -> Tensor:
        eye = torch.eye(3, device=delta.device, dtype=delta.dtype)
        full = torch.cat((delta, delta.new_zeros(delta.shape[0], 1)), dim=1)
        return eye + full.view(-1, 3, 3)

    def _delta_from_matrix(self, matrix: Tensor) -> Tensor:
        matrix = matrix / matrix[:, 2:, 2:]
        return (matrix - torch.eye(3, dtype=matrix.dtype, device=matrix.device)).reshape(1, 9)[
            :, :8
        ]

    def last_transform(self) -> Tensor | None:
        """The last normalised homography, ``(B, 3, 3)``."""
        return self._last_matrix
