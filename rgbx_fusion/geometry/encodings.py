"""Aux encodings of depth offered besides metres: inverse depth, surface normals, HHA.

Every encoding is a function ``(depth_m (B, 1, H, W), K (3, 3) | (B, 3, 3) | None) ->
(B, C, H, W) float32`` listed in :data:`AUX_ENCODINGS`, and :class:`EncodeAux` applies one to
a :class:`~rgbx_fusion.types.Sample` (``aux`` H×W×1 metres → H×W×C float32), so a dataset or
DataModule can compute it on the fly.

Convention:
    Pixels with missing depth (0) are 0 in every output channel, the toolkit's "missing"
    value that :class:`~rgbx_fusion.data.transforms.Normalizer` leaves untouched. HHA is
    scaled to [0, 1] (uint8 / 255).

    Normals and HHA depend on the pixel grid through ``K``: compute them on the image as
    recorded, **before** any geometric augmentation (crop, resize, flip), or pass
    intrinsics adjusted for that augmentation (a crop shifts ``cx, cy``, a resize scales
    ``fx, fy, cx, cy``, a horizontal flip turns ``cx`` into ``W − 1 − cx`` and mirrors the
    X axis). Inverse depth is per pixel and commutes with nearest resampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kornia.geometry.depth import depth_to_normals
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.geometry.hha import depth_to_hha
from rgbx_fusion.types import Sample


def _check_depth(depth_m: Tensor) -> None:
    if depth_m.ndim != 4 or depth_m.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth_m.shape)}")


def _batched_k(K: Tensor | None, depth_m: Tensor, name: str) -> Tensor:
    if K is None:
        raise ConfigError(
            f"the {name!r} aux encoding needs camera intrinsics K: put 'K' (3×3) in "
            "dataset.json or in the sample meta, or pass K to EncodeAux"
        )
    K = torch.as_tensor(K).to(device=depth_m.device, dtype=depth_m.dtype)
    return K[None].expand(depth_m.shape[0], 3, 3) if K.ndim == 2 else K


def metres(depth_m: Tensor, K: Tensor | None = None) -> Tensor:
    """Depth in metres, unchanged (the default encoding).

    Shape:
        depth_m: (B, 1, H, W) -> (B, 1, H, W)
    """
    _check_depth(depth_m)
    return depth_m


def inverse_depth(depth_m: Tensor, K: Tensor | None = None) -> Tensor:
    """Inverse depth ``1 / Z`` in 1/m (0 where depth is missing); ``K`` is unused.

    >>> inverse_depth(torch.tensor([[[[2.0, 0.0]]]])).flatten().tolist()
    [0.5, 0.0]

    Shape:
        depth_m: (B, 1, H, W) -> (B, 1, H, W)
    """
    _check_depth(depth_m)
    valid = depth_m > 0
    return torch.where(valid, 1.0 / torch.where(valid, depth_m, 1.0), 0.0)


def surface_normals(depth_m: Tensor, K: Tensor | None) -> Tensor:
    """Unit surface normals from finite differences of the point cloud (kornia).

    Uses :func:`kornia.geometry.depth.depth_to_normals`: camera frame (X right, Y down,
    Z forward), a fronto-parallel plane gives ``(0, 0, 1)``. Missing pixels get ``(0, 0, 0)``.
    For the reference HHA plane-fit normals see
    :func:`rgbx_fusion.geometry.hha.square_support_normals`.

    Shape:
        depth_m: (B, 1, H, W); K: (3, 3) or (B, 3, 3) -> (B, 3, H, W)
    """
    _check_depth(depth_m)
    normals = depth_to_normals(depth_m, _batched_k(K, depth_m, "surface_normals"))
    return torch.where(depth_m > 0, torch.nan_to_num(normals), 0.0)


def hha(depth_m: Tensor, K: Tensor | None) -> Tensor:
    """HHA (disparity, height, angle) of :func:`~rgbx_fusion.geometry.hha.depth_to_hha` / 255.

    Shape:
        depth_m: (B, 1, H, W); K: (3, 3) or (B, 3, 3) -> (B, 3, H, W) in [0, 1]
    """
    _check_depth(depth_m)
    codes = depth_to_hha(depth_m[:, 0], _batched_k(K, depth_m, "hha"))
    return torch.where(depth_m > 0, codes.to(depth_m.dtype) / 255.0, 0.0)


@dataclass(frozen=True)
class AuxEncoding:
    """One aux encoding: its function, output channels and whether it needs ``K``."""

    name: str
    fn: Callable[[Tensor, Tensor | None], Tensor]
    channels: int
    needs_intrinsics: bool
    summary: str


AUX_ENCODINGS: dict[str, AuxEncoding] = {
    e.name: e
    for e in (
        AuxEncoding("metres", metres, 1, False, "depth in metres (identity)"),
        AuxEncoding("inverse_depth", inverse_depth, 1, False, "1 / depth in 1/m"),
        AuxEncoding("surface_normals", surface_normals, 3, True, "unit normals (kornia)"),
        AuxEncoding("hha", hha, 3, True, "HHA of Gupta et al. 2014, scaled to [0, 1]"),
    )
}


class EncodeAux:
    """Replace a sample's depth (H×W×1 metres) by an aux encoding (H×W×C float32).

    Apply it to the sample as read from disk, before geometric augmentation (see the module
    docstring), e.g. in a dataset wrapper or as the first step of a transform.

    Args:
        encoding: a key of :data:`AUX_ENCODINGS`.
        K: intrinsics (3×3, 0-based pixel centres) used when the sample's ``meta`` holds no
            ``"K"``; the sample's own ``K`` wins.

    Shape:
        sample["aux"]: (H, W, 1) metres -> (H, W, C) with ``C = self.channels``
    """

    def __init__(self, encoding: str = "hha", K: Sequence[Sequence[float]] | None = None) -> None:
        if encoding not in AUX_ENCODINGS:
            raise ConfigError(
                f"unknown aux encoding {encoding!r}; choose one of {sorted(AUX_ENCODINGS)}"
            )
        self.encoding = AUX_ENCODINGS[encoding]
        self.K = None if K is None else np.asarray(K, dtype=np.float64)
        self.channels = self.encoding.channels

    def _intrinsics(self, meta: dict[str, Any]) -> Tensor | None:
        K = meta.get("K", self.K)
        if K is None:
            return None
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ConfigError(f"{meta.get('name', 'sample')}: K must be 3×3, got {K.shape}")
        return torch.from_numpy(K).float()

    def __call__(self, sample: Sample) -> Sample:
        aux = np.asarray(sample["aux"], dtype=np.float32)
        if aux.ndim == 3 and aux.shape[2] == 1:
            aux = aux[..., 0]
        if aux.ndim != 2:
            raise ValueError(f"EncodeAux expects H×W×1 depth in metres, got {aux.shape}")
        depth = torch.from_numpy(np.ascontiguousarray(aux))[None, None]
        with torch.no_grad():
            out = self.encoding.fn(depth, self._intrinsics(sample["meta"]))
        encoded = out[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32, copy=False)
        return Sample(rgb=sample["rgb"], aux=encoded, mask=sample["mask"], meta=sample["meta"])
