"""Rig calibration from unlabelled pairs: one ``aux_from_rgb`` for a whole folder dataset.

:func:`calibrate` reads up to ``max_pairs`` RGB / aux pairs of a split *as stored* (any
transform the dataset already declares is ignored), and finds the one transform of the
camera rig with :func:`~rgbx_fusion.geometry.registration.register` in its ``shared``
mode: the similarity is summed over all pairs, so edges too weak to register one frame
still add up. Depth is compared through its surface normals (each wall and floor gets its
own "shade", like the colour image); thermal as it is.

Outliers are found and dropped before the final fit: pairs whose aux is missing or flat,
pairs that barely overlap the RGB frame under the rig transform, pairs that do not
prefer the rig transform to the same transform moved by 6 px (their *support*, see
:func:`~rgbx_fusion.geometry.registration.support`, is below 0.03 and below 30 % of the
median pair's: a frame of another scene), and pairs whose own transform, registered
again around the rig's with a confidence that can be trusted, is more than
``max_residual`` px from it (an unsynchronised pair). A pair's residual is the end-point
error (px, over the RGB image) between its own transform and the rig's; for a weak pair
(confidence below 0.45) it is shown but not trusted.

:func:`write_calibration` stores the result in ``dataset.json`` (atomically, old file
kept as ``dataset.json.bak``), where every reader applies it at load time.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from rgbx_fusion.data.rig import apply_transform, write_declared_transform
from rgbx_fusion.data.sets.folder import FolderRGBX, read_json_object, read_rgb
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError, ShapeMismatchError
from rgbx_fusion.geometry.encodings import surface_normals
from rgbx_fusion.geometry.registration import endpoint_error, register, support

MODELS = ("translation", "similarity", "affine", "homography")
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PairReport:
    """One pair's part in the calibration."""

    name: str
    used: bool
    residual_px: float | None  # EPE between the pair's own transform and the rig's
    confidence: float  # the pair's confidence at the rig transform
    reason: str = ""  # why it was rejected


@dataclass(frozen=True)
class Calibration:
    """The rig transform and how every pair supported it."""

    aux_from_rgb: F64
    model: str
    split: str
    rgb_size: tuple[int, int]
    aux_size: tuple[int, int]
    pairs: list[PairReport] = field(default_factory=list)

    @property
    def used(self) -> list[PairReport]:
        return [p for p in self.pairs if p.used]

    @property
    def rejected(self) -> list[PairReport]:
        return [p for p in self.pairs if not p.used]

    @property
    def rms_px(self) -> float:
        """RMS residual (px) of the pairs used whose own registration is reliable."""
        res = [
            p.residual_px
            for p in self.used
            if p.residual_px is not None and p.confidence >= RELIABLE
        ]
        return float(np.sqrt(np.mean(np.square(res)))) if res else float("nan")


def _nominal_k(height: int, width: int) -> F64:
    """A pinhole with a 60° horizontal field of view, for normals when K is unknown."""
    f = width / (2.0 * np.tan(np.deg2rad(30.0)))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def calibrate(
    root: str | Path,
    split: str = "train",
    model: str = "affine",
    modality: str | None = None,
    max_pairs: int = 64,
    min_pairs: int = 4,
    max_residual: float = 2.0,
    max_rotation: float = 9.0,
    max_scale: float = 0.16,
    max_shift: float = 0.08,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Estimate the rig's ``aux_from_rgb`` from the pairs of ``root``'s ``split``.

    Args:
        root: a dataset in the generic folder layout (``dataset.json``, ``rgb/``, aux folder).
        split: the split file whose pairs are used.
        model: ``translation``, ``similarity``, ``affine`` or ``homography``.
        modality: ``depth`` or ``thermal``; default: ``dataset.json``'s ``modality``.
        max_pairs: at most this many pairs, evenly spread over the split.
        min_pairs: fewer usable pairs than this is a :class:`DatasetError`.
        max_residual: a pair whose own transform is farther than this (px) from the rig's
            is rejected.
        max_rotation, max_scale, max_shift: the range of the coarse search (degrees,
            fraction, fraction of the longer RGB side); see
            :func:`~rgbx_fusion.geometry.registration.register`. The defaults cover a
            badly assembled rig (±9°, ±16 %, ±51 px at 640×480).
        progress: called with a line of text at each stage.

    Raises:
        DatasetError: too few usable pairs, or pairs of different sizes.
        ConfigError: an unknown model or modality.
    """
    if model not in MODELS:
        raise ConfigError(f"calibrate: model must be one of {MODELS}, got {model!r}")
    if max_pairs < min_pairs or min_pairs < 1:
        raise ConfigError(
            f"calibrate: need 1 ≤ min_pairs ≤ max_pairs, got {min_pairs}, {max_pairs}"
        )
    root = Path(root)
    say = progress or (lambda _: None)
    if not (root / "dataset.json").is_file():
        raise MissingFileError(
            root / "dataset.json",
            "the dataset.json of a dataset in the generic folder layout",
            "no such file",
            "point --root at such a dataset (datasets/README.md)",
        )
    info = read_json_object(root / "dataset.json")
    modality = modality or info.get("modality") or "depth"
    dataset = FolderRGBX(split, root, modality, aux_from_rgb=np.eye(3).tolist())
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_pairs)).round())
    names = [dataset.names[int(i)] for i in picks]
    say(f"reading {len(names)} of {len(dataset)} pairs of {root / 'splits' / (split + '.txt')}")
    rgb, aux, sizes = _read_pairs(dataset, [int(i) for i in picks])
    rgb_size, aux_size = sizes
    features = _aux_features(aux, modality, dataset.camera_k)
    search: dict[str, Any] = {
        "max_rotation": max_rotation,
        "max_scale": max_scale,
        "max_shift": max_shift,
    }

    say(f"registering the rig on {len(names)} pairs ({model})")
    rig = register(rgb, features, model, shared=True, max_points=5000, **search)
    matrix = rig.aux_from_rgb[0].numpy()
    reports = _judge_pairs(rgb, aux, features, modality, dataset.camera_k, matrix, model, names)
    reports = [_judge(r, max_residual) for r in reports]
    used = [i for i, r in enumerate(reports) if r.used]
    if len(used) < min_pairs:
        raise DatasetError(
            root / "splits" / f"{split}.txt",
            f"at least {min_pairs} pairs that register (of {len(names)} read)",
            f"{len(used)}",
            "check that the aux folder holds images of the same scenes as rgb/, or lower "
            "--min-pairs",
        )
    if len(used) < len(names):
        say(f"registering the rig again on the {len(used)} pairs kept")
        keep = torch.tensor(used)
        rig = register(rgb[keep], features[keep], model, shared=True, max_points=5000, **search)
        matrix = rig.aux_from_rgb[0].numpy()
    return Calibration(matrix / matrix[2, 2], model, split, rgb_size, aux_size, reports)


def _read_pairs(
    dataset: FolderRGBX, indices: list[int]
) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], tuple[int, int]]]:
    rgbs, auxs = [], []
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None
    for i in indices:
        files = dataset.files[i]
        rgb = read_rgb(files["rgb"])
        aux = dataset.read_aux(files["aux"])
        aux = aux[..., None] if aux.ndim == 2 else aux
        here = ((rgb.shape[0], rgb.shape[1]), (aux.shape[0], aux.shape[1]))
        if sizes is None:
            sizes = here
        elif here != sizes:
            raise ShapeMismatchError(
                files["rgb"] if here[0] != sizes[0] else files["aux"],
                f"the size of the split's first pair (rgb {sizes[0]}, aux {sizes[1]})",
                f"rgb {here[0]}, aux {here[1]}",
            )
        rgbs.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0)
        auxs.append(torch.from_numpy(np.ascontiguousarray(aux)).permute(2, 0, 1).float())
    assert sizes is not None
    return torch.stack(rgbs), torch.stack(auxs), sizes


def _aux_features(aux: torch.Tensor, modality: str, camera_k: Any) -> torch.Tensor:
    """What the colour image is compared with: depth → surface normals, else aux itself."""
    if modality != "depth":
        return aux
    h, w = aux.shape[-2:]
    k = np.asarray(camera_k, np.float64) if camera_k is not None else _nominal_k(h, w)
    return surface_normals(aux, torch.from_numpy(k).float())


def _judge_pairs(
    rgb: torch.Tensor,
    aux: torch.Tensor,
    features: torch.Tensor,
    modality: str,
    camera_k: Any,
    matrix: F64,
    model: str,
    names: list[str],
) -> list[PairReport]:
    """Each pair's support for the rig transform and its own transform around it."""
    h, w = rgb.shape[-2:]
    agree = support(rgb, features, torch.from_numpy(matrix)).numpy()
    floor = max(MIN_SUPPORT, RELATIVE_SUPPORT * float(np.median(agree)))
    kind = "depth" if modality == "depth" else "thermal"
    moved = torch.stack(
        [
            torch.from_numpy(
                apply_transform(a.permute(1, 2, 0).numpy(), matrix, (h, w), kind)
            ).permute(2, 0, 1)
            for a in aux
        ]
    )
    own = register(
        rgb,
        _aux_features(moved, modality, camera_k),
        model,
        max_shift=0.02,
        max_rotation=0.0,
        max_scale=0.0,
    )
    reports = []
    for i, name in enumerate(names):
        valid = (aux[i] != 0).any(dim=0)
        values = aux[i][:, valid]
        if not bool(valid.any()):
            reason = "every aux pixel is missing"
        elif float(values.std(dim=1).max()) < 1e-6:
            reason = "the aux image is flat"
        elif float(own.overlap[i]) < 0.3:
            reason = f"it overlaps the RGB frame by {float(own.overlap[i]):.0%} only"
        elif agree[i] < floor:
            reason = f"no match at the rig transform (support {agree[i]:.3f} < {floor:.3f})"
        else:
            reason = ""
        residual = endpoint_error(own.aux_from_rgb[i].numpy(), np.eye(3), h, w, step=4)
        reports.append(PairReport(name, True, residual, float(own.confidence[i]), reason))
    return reports


RELIABLE = 0.45  # a pair's own registration is trusted from this confidence up
MIN_SUPPORT = 0.03  # a pair supports the rig transform from this support up ...
RELATIVE_SUPPORT = 0.3  # ... and from this fraction of the median support of the pairs


def _judge(report: PairReport, max_residual: float) -> PairReport:
    """Reject a pair found unusable, or whose reliable own transform is far from the rig's.

    A weak pair's own transform is not trusted, so only a reliable pair can be rejected
    for disagreeing with the rig.
    """
    reason = report.reason
    far = report.residual_px is not None and report.residual_px > max_residual
    if not reason and report.confidence >= RELIABLE and far:
        reason = f"its own transform is {report.residual_px:.1f} px from the rig's"
    return PairReport(report.name, not reason, report.residual_px, report.confidence, reason)


def write_calibration(root: str | Path, result: Calibration) -> Path | None:
    """Store ``result`` in ``root/dataset.json`` (atomically; old file → ``.bak``)."""
    extra = {
        "calibration": {
            "model": result.model,
            "split": result.split,
            "pairs_used": len(result.used),
            "pairs_rejected": len(result.rejected),
            "rms_residual_px": round(result.rms_px, 4),
            "rgb_size": list(result.rgb_size),
            "aux_size": list(result.aux_size),
            "date": datetime.date.today().isoformat(),
        }
    }
    return write_declared_transform(root, result.aux_from_rgb, extra)
