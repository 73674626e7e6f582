"""Reading weights files and checking state dicts against a network, shared by every loader."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rgbx_fusion.errors import CheckpointError, WeightsMismatchError

StateDict = dict[str, Tensor]


def unwrap_state_dict(obj: Any, path: str | Path | None = None) -> StateDict:
    """The tensors inside a loaded file: plain, or under ``"state_dict"`` / ``"model"``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        where = f"{path}: " if path is not None else ""
        raise CheckpointError(
            f"{where}expected a state dict (a mapping of names to tensors, possibly under "
            "'state_dict' or 'model'), found a {type(obj).__name__}"
        )
    return {str(k): v for k, v in obj.items()}


def best_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a file; for a run folder, its newest ``best-*.ckpt``.

    A training run keeps its best-on-validation checkpoint as
    ``<run>/lightning_logs/version_<n>/checkpoints/best-<epoch>-<step>.ckpt``; naming the run
    folder instead spares a config the epoch and step, which change from run to run.

    Raises:
        CheckpointError: a folder without any ``best-*.ckpt`` below it.
    """
    p = Path(path)
    if not p.is_dir():
        return p
    found = [f for f in p.rglob("best-*.ckpt") if f.is_file() and not f.name.startswith(".")]
    if not found:
        raise CheckpointError(
            f"{p} is a folder without a best-*.ckpt below it; train that run first or name "
            "the checkpoint file"
        )
    return max(found, key=lambda f: f.stat().st_mtime_ns)


def read_state_dict(path: str | Path) -> StateDict:
    """Load a weights file with ``weights_only=True`` (tensors and plain data only)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors have no common base class
        raise CheckpointError(f"{p}: cannot be read as a PyTorch weights file ({exc})") from exc
    return unwrap_state_dict(obj, p)


def check_keys(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    given: Mapping[str, Tensor],
    what: str,
    skip_shape: Iterable[str] = (),
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``given`` has ``expected``'s keys and shapes."""
    skip = set(skip_shape)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(given[k].shape)}"
        for k in expected
        if k in given and k not in skip and tuple(given[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or shapes:
        raise WeightsMismatchError(what, missing, unexpected, shapes)
