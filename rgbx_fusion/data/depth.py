"""Depth encodings on disk → float32 metres (0 = missing), and back.

Every reader states its source encoding; nothing is guessed. A value range that
contradicts the declared encoding raises :class:`DepthFormatError` naming the
file and the likely fix.

=================  ==========================================  ==================
``depth_format``   on disk                                     decoding
=================  ==========================================  ==================
``png16_mm``       uint16 PNG, millimetres                     ``v / 1000``
``png16_0.1mm``    uint16 PNG, tenths of a millimetre          ``v / 10000``
``npy_m``          float ``.npy``, metres                      as is
``sun_rotated``    uint16 PNG, SUN RGB-D: ``(v>>3 | v<<13)``   ``/ 1000``
``png8_minmax``    uint8 PNG scaled per image (lossy!)         ``v / 255`` (no scale)
=================  ==========================================  ==================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from rgbx_fusion.errors import CorruptFileError, DepthFormatError

DEPTH_FORMATS = ("png16_mm", "png16_0.1mm", "npy_m", "sun_rotated", "png8_minmax")

#: Depth beyond this many metres is legal but suspicious for indoor sensors.
SUSPICIOUS_DEPTH_M = 20.0

FloatMap = npt.NDArray[np.float32]


class LossyDepthWarning(UserWarning):
    """Depth stored without metric scale (8-bit, per-image min-max)."""


class SuspiciousDepthWarning(UserWarning):
    """Depth that is legal but unusual (all missing, farther than 20 m)."""


def read_image_array(path: Path) -> npt.NDArray[np.generic]:
    """Read an image file into a numpy array without changing its bit depth."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except FileNotFoundError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise CorruptFileError(path, "a readable image", f"an undecodable file ({exc})") from exc


def _require_uint16(raw: npt.NDArray[np.generic], path: Path, fmt: str) -> npt.NDArray[np.uint16]:
    if raw.dtype == np.uint8:
        raise DepthFormatError(
            path,
            f"a 16-bit PNG for depth_format={fmt!r}",
            "an 8-bit image",
            "8-bit depth has no metric scale; if it is min-max scaled per image use "
            "depth_format='png8_minmax' (lossy), otherwise point to the 16-bit files",
        )
    if raw.dtype not in (np.uint16, np.int32, np.int16):
        raise DepthFormatError(path, "a 16-bit PNG", f"dtype {raw.dtype}")
    if raw.ndim != 2:
        raise DepthFormatError(path, "a single-channel depth PNG", f"shape {raw.shape}")
    return raw.astype(np.uint16)


def decode_png16_mm(path: Path) -> FloatMap:
    """uint16 millimetres → metres."""
    raw = _require_uint16(read_image_array(path), path, "png16_mm")
    return raw.astype(np.float32) / 1000.0


def decode_png16_01mm(path: Path) -> FloatMap:
    """uint16 tenths of a millimetre → metres."""
    raw = _require_uint16(read_image_array(path), path, "png16_0.1mm")
    return raw.astype(np.float32) / 10000.0


def decode_sun_rotated(path: Path) -> FloatMap:
    """SUN RGB-D depth: uint16 rotated right by 3 bits, millimetres → metres."""
    raw = _require_uint16(read_image_array(path), path, "sun_rotated").astype(np.uint32)
    mm = ((raw >> 3) | (raw << 13)) & 0xFFFF
    return mm.astype(np.float32) / 1000.0


def decode_npy_m(path: Path) -> FloatMap:
    """float ``.npy`` in metres (NaN is treated as corrupt, not as missing)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptFileError(
            path, "a readable .npy array", f"an undecodable file ({exc})"
        ) from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DepthFormatError(
            path, "a 2-D numeric depth array in metres", f"{arr.dtype} {arr.shape}"
        )
    depth = arr.astype(np.float32)
    finite = np.isfinite(depth)
    if not finite.all():
        raise DepthFormatError(
            path,
            "finite depth (0 marks missing pixels)",
            f"{int((~finite).sum())} NaN/inf values",
            "replace NaN/inf by 0 when preparing the data",
        )
    if depth.size and depth.max() > 1000.0:
        raise DepthFormatError(
            path,
            "depth in metres for depth_format='npy_m'",
            f"values up to {depth.max():.0f}",
            "this looks like millimetres; divide by 1000 when preparing the data",
        )
    return depth


def decode_png8_minmax(path: Path) -> FloatMap:
    """uint8 per-image min-max scaled depth → [0, 1] (no metric scale; lossy)."""
    raw = read_image_array(path)
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise DepthFormatError(path, "an 8-bit single-channel PNG", f"{raw.dtype} {raw.shape}")
    warnings.warn(
        f"{path}: 8-bit min-max scaled depth carries no metric scale; values are in [0, 1]",
        LossyDepthWarning,
        stacklevel=2,
    )
    return raw.astype(np.float32) / 255.0


DECODERS: dict[str, Callable[[Path], FloatMap]] = {
    "png16_mm": decode_png16_mm,
    "png16_0.1mm": decode_png16_01mm,
    "npy_m": decode_npy_m,
    "sun_rotated": decode_sun_rotated,
    "png8_minmax": decode_png8_minmax,
}


def decode_depth(path: str | Path, depth_format: str) -> FloatMap:
    """Read a depth file in the declared encoding and return float32 metres.

    Args:
        path: the depth file.
        depth_format: one of :data:`DEPTH_FORMATS`.

    Returns:
        H×W float32 depth in metres, 0 where the sensor gave no value.
    """
    if depth_format not in DECODERS:
        raise DepthFormatError(
            None, f"depth_format in {list(DECODERS)}", repr(depth_format), "set data.depth_format"
        )
    path = Path(path)
    depth = DECODERS[depth_format](path)
    _warn_suspicious(depth, path, depth_format)
    return depth


def _warn_suspicious(depth: FloatMap, path: Path, depth_format: str) -> None:
    if depth_format == "png8_minmax":
        return
    if not np.any(depth > 0):
        warnings.warn(f"{path}: depth is missing everywhere (all zeros)", SuspiciousDepthWarning, 3)
    elif float(depth.max()) > SUSPICIOUS_DEPTH_M:
        warnings.warn(
            f"{path}: depth reaches {float(depth.max()):.1f} m with depth_format={depth_format!r}; "
            "check the declared unit",
            SuspiciousDepthWarning,
            3,
        )


def encode_depth_png16(depth_m: FloatMap, path: str | Path, scale: float = 1000.0) -> None:
    """Write metres as a uint16 PNG (``scale`` 1000 → mm, 10000 → 0.1 mm); 0 stays missing."""
    q = np.rint(np.asarray(depth_m, dtype=np.float64) * scale)
    if q.max(initial=0) > 65535 or q.min(initial=0) < 0:
        raise ValueError(
            f"depth range [{depth_m.min():.3f}, {depth_m.max():.3f}] m does not fit uint16 "
            f"at scale {scale}"
        )
    Image.fromarray(q.astype(np.uint16)).save(path)
