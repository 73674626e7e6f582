"""Calibrated alignment: reproject a depth map from the depth camera onto the RGB camera."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.geometry.camera import as_rigid, reproject_depth
from rgbx_fusion.models.align.base import AlignBase

MatrixLike = Tensor | Sequence[Sequence[float]]


def default_intrinsics(height: int, width: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """A canonical pinhole ``K`` for an uncalibrated image: ``fx = W``, ``fy = H``, centred.

    Two images of the same view at different resolutions get consistent ``K``s, so
    reprojecting between them with the identity pose is a (nearest-pixel) resize.

    Shape:
        -> (3, 3)
    """
    return torch.tensor(
        [[width, 0.0, (width - 1) / 2], [0.0, height, (height - 1) / 2], [0.0, 0.0, 1.0]],
        dtype=dtype,
    )


def _as_tensor(
    value: MatrixLike | None, name: str, shapes: tuple[tuple[int, int], ...]
) -> Tensor | None:
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.shape[-2:] not in shapes or tensor.ndim not in (2, 3):
        raise ConfigError(
            f"DepthReprojection: {name} must have shape {' or '.join(map(str, shapes))} "
            f"(optionally batched), got {tuple(tensor.shape)}"
        )
    return tensor


class DepthReprojection(AlignBase):
    """Move a depth map from the depth camera to the RGB camera with known calibration.

    Input-level, parameter-free: back-projects every aux depth pixel with ``K_aux``,
    transforms it with ``T_rgb_from_aux``, projects it with ``K_rgb`` onto the RGB grid and
    keeps the nearest point per pixel (z-buffer, see
    :func:`~rgbx_fusion.geometry.camera.reproject_depth`). Pixels nothing lands on are 0
    (missing), as everywhere in this toolkit.

    Args:
        rgb_channels: channels of ``x_rgb`` (unused; kept for the common constructor).
        aux_channels: must be 1: aux is a depth map in metres.
        K_aux: depth-camera intrinsics for the aux resolution, ``(3, 3)``. ``None``:
            :func:`default_intrinsics` of the aux size.
        K_rgb: RGB-camera intrinsics for the rgb resolution, ``(3, 3)``. ``None``:
            :func:`default_intrinsics` of the rgb size.
        T_rgb_from_aux: rigid transform from the depth to the RGB camera, ``(4, 4)`` or
            ``(3, 4)`` in metres. ``None``: identity.

    Convention:
        OpenCV pinhole (see :mod:`rgbx_fusion.geometry.camera`): pixel centres at integers,
        Z forward, depth = Z in metres. The output depth is Z in the RGB camera. With identical
        intrinsics, identity pose and the same size the input comes back exactly; without any
        calibration aux is only resized to the rgb grid. Per-batch calibration (e.g. from
        ``meta``) is set with :meth:`set_calibration` before the forward.

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, 1, H_a, W_a) -> (x_rgb, (B, 1, H, W));
        last_transform(): (B, 4, 4) ``T_rgb_from_aux`` used last.
    """

    summary = "calibrated depth reprojection (intrinsics + extrinsics, z-buffered), no parameters"
    input_level = True  # works on depth images, not on feature maps

    K_aux: Tensor | None
    K_rgb: Tensor | None
    T_rgb_from_aux: Tensor | None

    def __init__(
        self,
        rgb_channels: int = 3,
        aux_channels: int = 1,
        K_aux: MatrixLike | None = None,
        K_rgb: MatrixLike | None = None,
        T_rgb_from_aux: MatrixLike | None = None,
    ) -> None:
        super().__init__()
        if aux_channels != 1:
            raise ConfigError(
                f"DepthReprojection reprojects a 1-channel depth map in metres, but aux has "
                f"{aux_channels} channels; reproject the raw depth before encoding it (e.g. HHA)"
            )
        self.register_buffer("K_aux", None, persistent=False)
        self.register_buffer("K_rgb", None, persistent=False)
        self.register_buffer("T_rgb_from_aux", None, persistent=False)
        self.set_calibration(K_aux, K_rgb, T_rgb_from_aux)
        self._last_transform: Tensor | None = None

    def set_calibration(
        self,
        K_aux: MatrixLike | None = None,
        K_rgb: MatrixLike | None = None,
        T: MatrixLike | None = None,
    ) -> None:
        """Replace the calibration; each argument may be shared ``(3, 3)``/``(4, 4)`` or per
        sample ``(B, 3, 3)``/``(B, 4, 4)``; ``None`` restores the default for that argument."""
        k_aux = _as_tensor(K_aux, "K_aux", ((3, 3),))
        k_rgb = _as_tensor(K_rgb, "K_rgb", ((3, 3),))
        t = _as_tensor(T, "T_rgb_from_aux", ((4, 4), (3, 4)))
        self.K_aux = k_aux
        self.K_rgb = k_rgb
        self.T_rgb_from_aux = None if t is None else as_rigid(t)

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        if x_aux.ndim != 4 or x_aux.shape[1] != 1 or x_aux.shape[0] != x_rgb.shape[0]:
            raise ValueError(
                f"DepthReprojection: expected aux depth (B, 1, H, W) with the batch of rgb "
                f"{tuple(x_rgb.shape)}, got {tuple(x_aux.shape)}"
            )
        h, w = x_rgb.shape[-2:]
        ha, wa = x_aux.shape[-2:]
        dtype, device = x_aux.dtype, x_aux.device
        k_aux = self.K_aux if self.K_aux is not None else default_intrinsics(ha, wa)
        k_rgb = self.K_rgb if self.K_rgb is not None else default_intrinsics(h, w)
        t = self.T_rgb_from_aux
        if t is None:
            t = torch.eye(4)
        t = t.to(device=device, dtype=dtype)
        self._last_transform = t.expand(x_aux.shape[0], 4, 4) if t.ndim == 2 else t
        aligned = reproject_depth(
            x_aux,
            k_aux.to(device=device, dtype=dtype),
            k_rgb.to(device=device, dtype=dtype),
            t,
            (h, w),
        )
        return x_rgb, aligned

    def last_transform(self) -> Tensor | None:
        """The ``T_rgb_from_aux`` used by the last forward, ``(B, 4, 4)``."""
        return self._last_transform
