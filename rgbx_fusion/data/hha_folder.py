"""HHA images precomputed for every depth file of a folder dataset (``rgbx-fusion hha``).

Reads the generic folder layout (:mod:`rgbx_fusion.data.sets.folder`): ``root/depth/<name>``
in the ``depth_format`` of ``root/dataset.json`` (or ``--depth-format``), intrinsics ``K``
(3×3, 0-based pixel centres) from ``dataset.json`` (or ``--fx --fy --cx --cy``), and writes
``root/<out-dir>/<name>.png``: 8-bit RGB = (disparity, height, angle), the channel order of
the reference MATLAB code. Every file is written atomically and existing outputs are skipped,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from rgbx_fusion.data.atomic import write_atomic
from rgbx_fusion.data.depth import DEPTH_FORMATS, decode_depth
from rgbx_fusion.data.sets.folder import read_json_object
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError

#: (depth file, output file, depth format, K as nested lists, raw-depth file or None)
Job = tuple[Path, Path, str, list[list[float]], Path | None]


@dataclass(frozen=True)
class HHAReport:
    """What a run did: files written, files skipped because they already existed."""

    written: int
    skipped: int
    out_dir: Path


def _intrinsics(info: dict[str, Any], override: list[list[float]] | None) -> list[list[float]]:
    K = override if override is not None else info.get("K")
    if K is None:
        raise ConfigError(
            'HHA needs camera intrinsics: add "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] '
            "(0-based pixel centres) to dataset.json, or pass --fx --fy --cx --cy"
        )
    arr = np.asarray(K, dtype=np.float64)
    if arr.shape != (3, 3) or not np.isfinite(arr).all() or arr[0, 0] <= 0 or arr[1, 1] <= 0:
        raise ConfigError(f"K must be a finite 3×3 matrix with fx, fy > 0, got {K!r}")
    return arr.tolist()


def _hha_job(job: Job) -> str:
    """Compute and write one HHA image; runs in a worker process (one torch thread)."""
    import torch
    from PIL import Image

    from rgbx_fusion.geometry.hha import depth_to_hha

    depth_path, out_path, depth_format, K, raw_path = job
    depth = torch.from_numpy(decode_depth(depth_path, depth_format))
    missing = None
    if raw_path is not None:
        raw = decode_depth(raw_path, depth_format)
        if raw.shape != depth.shape:
            raise DatasetError(raw_path, f"raw depth of size {tuple(depth.shape)}", str(raw.shape))
        missing = torch.from_numpy(raw <= 0)
    with torch.no_grad():
        hha = depth_to_hha(depth, torch.tensor(K), missing)[0].permute(1, 2, 0).numpy()
    write_atomic(out_path, lambda tmp: Image.fromarray(np.ascontiguousarray(hha)).save(tmp))
    return out_path.name


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def precompute_hha(
    root: str | Path,
    out_dir: str | Path = "hha",
    workers: int = 1,
    depth_format: str | None = None,
    K: list[list[float]] | None = None,
    raw_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> HHAReport:
    """Write ``<out_dir>/<name>.png`` HHA for every depth file under ``root/depth``.

    Args:
        root: dataset root in the generic folder layout.
        out_dir: output folder, relative to ``root`` unless absolute.
        workers: processes (each uses one torch thread); 1 runs in this process.
        depth_format: overrides ``dataset.json``'s ``depth_format``.
        K: overrides ``dataset.json``'s ``K``.
        raw_dir: optional folder (relative to ``root`` unless absolute) of raw depth with the
            same names and format; its zeros mark the pixels left out of the normal fits,
            as the reference does when ``depth`` is hole-filled.
        overwrite: recompute outputs that already exist.
        progress: show a rich progress bar.
    """
    from rich.progress import Progress

    root = Path(root)
    info = read_json_object(root / "dataset.json")
    fmt = depth_format or info.get("depth_format")
    if fmt not in DEPTH_FORMATS:
        raise ConfigError(
            f"{root}: depth_format must be one of {DEPTH_FORMATS} (found {fmt!r}); set it in "
            "dataset.json or pass --depth-format"
        )
    intrinsics = _intrinsics(info, K)
    depth_dir = root / "depth"
    if not depth_dir.is_dir():
        raise MissingFileError(depth_dir, "a depth folder", "nothing", "check --root")
    ext = ".npy" if fmt == "npy_m" else ".png"
    out = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    raw = (
        None
        if raw_dir is None
        else (Path(raw_dir) if Path(raw_dir).is_absolute() else root / raw_dir)
    )
    jobs: list[Job] = []
    skipped = 0
    for path in sorted(p for p in depth_dir.iterdir() if p.suffix.lower() == ext):
        target = out / f"{path.stem}.png"
        if target.exists() and not overwrite:
            skipped += 1
            continue
        raw_path = None if raw is None else raw / path.name
        if raw_path is not None and not raw_path.is_file():
            raise MissingFileError(raw_path, f"raw depth for {path.name}", "no such file")
        jobs.append((path, target, fmt, intrinsics, raw_path))
    out.mkdir(parents=True, exist_ok=True)
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(f"HHA → {out}", total=len(jobs))
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                _hha_job(job)
                bar.advance(task)
        else:
            with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for _ in pool.imap_unordered(_hha_job, jobs, chunksize=4):
                    bar.advance(task)
    return HHAReport(written=len(jobs), skipped=skipped, out_dir=out)
