"""A rig transform declared by a dataset: aux resampled onto the RGB grid when it is loaded.

A dataset whose aux camera is not registered to the colour camera declares the 3×3
matrix ``aux_from_rgb`` (key of ``dataset.json``, or the readers' ``aux_from_rgb``
argument). It maps RGB pixel coordinates ``(x, y, 1)`` (pixel centres at integers,
``x`` = column) to aux pixel coordinates, the convention of ``meta.json`` and
:func:`~rgbx_fusion.alignment_report.flow_from_matrix`. The registered aux image samples
the stored one at ``aux_from_rgb @ p`` for every RGB pixel ``p`` (what
``cv2.warpPerspective(aux, M, (W, H), flags=... | cv2.WARP_INVERSE_MAP)`` does), so the
stored aux may have another size than RGB. RGB is never moved.

Resampling (:func:`apply_transform`): ``kind="depth"`` or ``"hha"`` (0 = missing) takes
the nearest aux pixel, so no value is invented across holes or object edges and a hole
stays 0; ``kind="thermal"`` is bilinear. RGB pixels that map outside the aux frame get
0 (missing) in both cases.

Sizes are ``(height, width)``, as ``array.shape[:2]``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.atomic import write_atomic, write_text_atomic
from rgbx_fusion.errors import ConfigError

KEY = "aux_from_rgb"
#: How the option is spelled in a config, for error messages.
OPTION = "data.dataset.init_args.aux_from_rgb"
#: Kinds resampled by nearest neighbour (0 = missing) and bilinearly.
HOLE_KINDS = ("depth", "hha")
SMOOTH_KINDS = ("thermal",)
#: Smallest |det| of the upper-left 2×2 (after scaling the matrix to ``m[2, 2] = 1``).
MIN_DET = 1e-6
#: Largest condition number of the matrix.
MAX_CONDITION = 1e12
#: Smallest fraction of the RGB image (on a coarse grid) that must land inside the aux frame.
MIN_COVERAGE = 0.5
_GRID = 33

Size = tuple[int, int]
Matrix = npt.NDArray[np.float64]


def _fail(source: str, expected: str, found: str, fix: str = "") -> ConfigError:
    msg = f"{source}: expected {expected}, found {found}"
    return ConfigError(msg + (f". Fix: {fix}" if fix else ""))


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_matrix(value: Any, source: str) -> Matrix:
    """``value`` as a finite, invertible 3×3 float64 matrix, or a :class:`ConfigError`.

    ``source`` names where the value came from (``"<root>/dataset.json, key
    'aux_from_rgb'"`` or the config option) and starts every message. Also checked:
    ``m[2, 2] > 0`` (the last-row denominator at RGB pixel (0, 0)).
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    rows_ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(row, (list, tuple)) and len(row) == 3 for row in value)
    )
    numbers_ok = rows_ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for row in value for v in row
    )
    if not numbers_ok:
        raise _fail(
            source,
            "a 3×3 list of numbers [[a, b, c], [d, e, f], [g, h, i]] (RGB pixel → aux pixel)",
            _short(value),
        )
    m = np.asarray(value, dtype=np.float64)
    if not np.isfinite(m).all():
        raise _fail(source, "finite numbers", f"{m.tolist()} (NaN or infinity)")
    if m[2, 2] <= 0:
        raise _fail(
            source,
            "a last row whose denominator is > 0 on the image (m[2][2] > 0 at pixel (0, 0))",
            f"m[2][2] = {m[2, 2]:g}",
            "write the matrix scaled so that m[2][2] = 1 (an affine map has last row 0 0 1)",
        )
    n = m / m[2, 2]
    det = float(np.linalg.det(n[:2, :2]))
    cond = float(np.linalg.cond(n))
    if abs(det) < MIN_DET or not math.isfinite(cond) or cond > MAX_CONDITION:
        raise _fail(
            source,
            f"an invertible transform (|det| of the upper-left 2×2 ≥ {MIN_DET:g}, condition "
            f"number ≤ {MAX_CONDITION:g})",
            f"{m.tolist()} (det {det:.3g}, condition {cond:.3g}): singular or nearly so",
            "check the matrix: the identity is [[1, 0, 0], [0, 1, 0], [0, 0, 1]]",
        )
    return m


def _grid(size: Size, n: int) -> tuple[Matrix, Matrix]:
    h, w = size
    ys = np.linspace(0.0, h - 1.0, min(n, h))
    xs = np.linspace(0.0, w - 1.0, min(n, w))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return gx.ravel(), gy.ravel()


def _project(m: Matrix, x: Matrix, y: Matrix) -> tuple[Matrix, Matrix, Matrix]:
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / den
        v = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / den
    return u, v, den


def _inside(u: Matrix, v: Matrix, den: Matrix, aux_size: Size) -> npt.NDArray[np.bool_]:
    h, w = aux_size
    return (den > 0) & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)


def check_sizes(matrix: Matrix, rgb_size: Size, aux_size: Size, source: str) -> None:
    """The checks that need the image sizes: denominator > 0 and the RGB image on the aux frame.

    The last-row denominator is affine in ``(x, y)``, so it is positive on the whole
    image when it is at the four corners. Then at least :data:`MIN_COVERAGE` of a coarse
    grid of RGB pixels must map inside the aux frame.
    """
    h, w = rgb_size
    cx = np.array([0.0, w - 1.0, w - 1.0, 0.0])
    cy = np.array([0.0, 0.0, h - 1.0, h - 1.0])
    u, v, den = _project(matrix, cx, cy)
    if (den <= 0).any():
        raise _fail(
            source,
            f"a last-row denominator > 0 over the {h}×{w} RGB image",
            f"{[round(float(d), 6) for d in den]} at its corners (0,0), ({w - 1},0), "
            f"({w - 1},{h - 1}), (0,{h - 1}): the homography folds the image over the horizon",
            "check the matrix's last row (an affine map has 0 0 1)",
        )
    gx, gy = _grid(rgb_size, _GRID)
    coverage = float(_inside(*_project(matrix, gx, gy), aux_size).mean())
    if coverage < MIN_COVERAGE:
        corners = ", ".join(f"({a:.1f}, {b:.1f})" for a, b in zip(u, v, strict=True))
        raise _fail(
            source,
            f"at least {MIN_COVERAGE:.0%} of the {h}×{w} RGB image mapped inside the "
            f"{aux_size[0]}×{aux_size[1]} aux image",
            f"{coverage:.0%} (the RGB corners map to {corners})",
            "aux_from_rgb maps RGB pixels to aux pixels: check its direction (not rgb_from_aux) "
            "and that it is in pixels, not normalised coordinates",
        )


def read_declared_transform(
    dataset_json: Path,
    info: Mapping[str, Any],
    rgb_size: Size | None = None,
    aux_size: Size | None = None,
) -> Matrix | None:
    """The validated ``aux_from_rgb`` of a ``dataset.json`` whose content is ``info``.

    ``None`` when the key is absent or ``null``. Shape, finiteness, invertibility and the
    sign of the denominator at pixel (0, 0) are always checked; with both sizes also the
    denominator on the whole image and the RGB image's overlap with the aux frame
    (:func:`check_sizes`). Every failure is a :class:`ConfigError` naming ``dataset_json``.
    """
    value = info.get(KEY)
    if value is None:
        return None
    source = f"{dataset_json}, key '{KEY}'"
    matrix = validate_matrix(value, source)
    if rgb_size is not None and aux_size is not None:
        check_sizes(matrix, rgb_size, aux_size, source)
    return matrix


@dataclass(frozen=True)
class _Sampler:
    """Precomputed gather indices and weights for one (matrix, sizes, kind)."""

    inside: npt.NDArray[np.bool_]  # (H, W)
    index: tuple[npt.NDArray[np.intp], ...]  # flat aux indices, 1 (nearest) or 4 (bilinear)
    weight: tuple[npt.NDArray[np.float32], ...]


def _sampler(matrix: Matrix, rgb_size: Size, aux_size: Size, kind: str) -> _Sampler:
    if kind not in HOLE_KINDS + SMOOTH_KINDS:
        raise ConfigError(
            f"aux kind must be one of {HOLE_KINDS + SMOOTH_KINDS} to resample it, got {kind!r}"
        )
    h, w = rgb_size
    ah, aw = aux_size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v, den = _project(np.asarray(matrix, np.float64), xs, ys)
    inside = _inside(u, v, den, aux_size)
    u = np.where(inside, u, 0.0)
    v = np.where(inside, v, 0.0)
    if kind in HOLE_KINDS:
        col = np.clip(np.floor(u + 0.5), 0, aw - 1).astype(np.intp)
        row = np.clip(np.floor(v + 0.5), 0, ah - 1).astype(np.intp)
        return _Sampler(inside, (row * aw + col,), (np.ones((h, w), np.float32),))
    uc, vc = np.clip(u, 0, aw - 1), np.clip(v, 0, ah - 1)
    c0, r0 = np.floor(uc).astype(np.intp), np.floor(vc).astype(np.intp)
    c1, r1 = np.minimum(c0 + 1, aw - 1), np.minimum(r0 + 1, ah - 1)
    fx, fy = (uc - c0).astype(np.float32), (vc - r0).astype(np.float32)
    return _Sampler(
        inside,
        (r0 * aw + c0, r0 * aw + c1, r1 * aw + c0, r1 * aw + c1),
        ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy),
    )


def _resample(aux: npt.NDArray[Any], sampler: _Sampler) -> npt.NDArray[np.float32]:
    flat = np.asarray(aux, np.float32).reshape(aux.shape[0] * aux.shape[1], -1)
    out = np.zeros((*sampler.inside.shape, flat.shape[1]), np.float32)
    for index, weight in zip(sampler.index, sampler.weight, strict=True):
        out += flat[index] * weight[..., None]
    out[~sampler.inside] = 0.0
    return out.reshape(out.shape[:2] + aux.shape[2:])


def apply_transform(
    aux: npt.NDArray[Any], matrix: npt.ArrayLike, rgb_size: Size, kind: str
) -> npt.NDArray[np.float32]:
    """Resample ``aux`` onto the RGB grid: pixel ``p`` gets ``aux`` at ``matrix @ p``.

    ``kind`` ``"depth"`` or ``"hha"`` (0 = missing): nearest aux pixel, holes stay 0 and no
    value is interpolated across a hole or an edge. ``"thermal"``: bilinear. RGB pixels
    mapped outside the aux frame (or where the denominator is ≤ 0) become 0. No size check
    runs here; see :func:`check_sizes`.

    Shape:
        aux: (H', W', C) or (H', W') -> float32 (H, W, C) or (H, W), ``rgb_size = (H, W)``
    """
    matrix = np.asarray(matrix, np.float64)
    sampler = _sampler(matrix, rgb_size, (int(aux.shape[0]), int(aux.shape[1])), kind)
    return _resample(aux, sampler)


@dataclass
class DeclaredTransform:
    """The rig transform of one dataset, applied by its reader to every sample's aux.

    Build it with :meth:`load`; call :meth:`resample` on each aux image and
    :meth:`adjust_meta` on each ``meta``. The size checks run on the first sample of
    each (rgb size, aux size) and the sampling grids are cached per size and kind
    (per DataLoader worker).
    """

    matrix: Matrix
    source: str
    _checked: set[tuple[Size, Size]] = field(default_factory=set, repr=False)
    _samplers: dict[tuple[Size, Size, str], _Sampler] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        dataset_json: Path | None,
        info: Mapping[str, Any],
        override: Any = None,
        option: str = OPTION,
    ) -> DeclaredTransform | None:
        """The transform of ``override`` (config option ``option``) if given, else of ``info``.

        ``None`` when neither declares one. ``info`` is the content of ``dataset_json``.
        """
        if override is not None:
            source = f"option {option}"
            return cls(validate_matrix(override, source), source)
        if dataset_json is None:
            return None
        matrix = read_declared_transform(dataset_json, info)
        return None if matrix is None else cls(matrix, f"{dataset_json}, key '{KEY}'")

    def resample(self, aux: npt.NDArray[Any], rgb_size: Size, kind: str) -> npt.NDArray[np.float32]:
        """:func:`apply_transform` after the size checks (once per pair of sizes)."""
        aux_size = (int(aux.shape[0]), int(aux.shape[1]))
        rgb_size = (int(rgb_size[0]), int(rgb_size[1]))
        if (rgb_size, aux_size) not in self._checked:
            check_sizes(self.matrix, rgb_size, aux_size, self.source)
            self._checked.add((rgb_size, aux_size))
        key = (rgb_size, aux_size, kind)
        if key not in self._samplers:
            self._samplers[key] = _sampler(self.matrix, rgb_size, aux_size, kind)
        return _resample(aux, self._samplers[key])

    def adjust_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """``meta`` with a ground-truth ``aux_from_rgb`` T replaced by ``inv(D) @ T``.

        T maps RGB pixels to the *stored* aux; after resampling by the declared D, the
        loaded aux is misregistered by what is left, ``inv(D) @ T`` (scaled so that its
        ``[2][2]`` is 1), which keeps end-point errors measured downstream correct.
        """
        truth = meta.get(KEY)
        if truth is None:
            return meta
        rest = np.linalg.solve(self.matrix, np.asarray(truth, np.float64))
        rest = rest / rest[2, 2]
        return {**meta, KEY: rest.tolist()}


def _read_info(path: Path) -> dict[str, Any]:
    from rgbx_fusion.data.sets.folder import read_json_object  # folder.py imports this module

    return read_json_object(path)


def write_declared_transform(
    root: str | Path,
    matrix: npt.NDArray[Any] | Sequence[Sequence[float]],
    extra: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``aux_from_rgb`` (and the entries of ``extra``) into ``root/dataset.json``.

    The other keys of an existing ``dataset.json`` are kept. Its old content is first
    copied to ``root/dataset.json.bak``, which is overwritten if it exists (only the
    latest previous version is kept); then the new file replaces the old one atomically
    (:mod:`rgbx_fusion.data.atomic`). The matrix is validated like the reader does
    (shape, finite, invertible; the size checks run when the dataset is loaded).

    Returns:
        The backup path, or ``None`` when there was no ``dataset.json`` to back up (a new
        one holding only these keys is written).
    """
    path = Path(root) / "dataset.json"
    checked = validate_matrix(matrix, f"{KEY} to write to {path}")
    extra = dict(extra or {})
    if KEY in extra:
        raise ConfigError(f"extra must not hold {KEY!r}: pass the matrix as matrix")
    info = _read_info(path) if path.is_file() else {}
    info[KEY] = checked.tolist()
    info.update(extra)
    try:
        text = json.dumps(info, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: extra entries must be JSON-serialisable ({exc})") from exc
    backup = None
    if path.is_file():
        backup = path.with_name(path.name + ".bak")

        def copy(tmp: Path) -> None:
            shutil.copyfile(path, tmp)

        write_atomic(backup, copy)
    write_text_atomic(path, text)
    return backup
