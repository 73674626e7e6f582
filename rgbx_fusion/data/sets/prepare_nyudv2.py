"""Build the SA-Gate NYUDv2 layout from the official files.

``rgbx-fusion prepare nyudv2 --mat nyu_depth_v2_labeled.mat --splits splits.mat
--mapping classMapping40.mat --out datasets/nyudv2`` writes ``RGB/``, ``Depth/`` (float32
metres), ``Label/``, the split files and, last, ``prepare.json``; the layout and what
happens without ``--mapping`` are described in ``datasets/README.md``, "NYU Depth v2".
HHA images are not computed here. Every file is written atomically and frames already
on disk are skipped, so an interrupted run resumes where it stopped.

Convention:
    ``nyu_depth_v2_labeled.mat`` is MATLAB v7.3 (HDF5), read with h5py, where
    arrays appear transposed: images (N, 3, W, H), depths and labels (N, W, H).
    ``splits.mat`` (``trainNdxs``, ``testNdxs``) and ``classMapping40.mat``
    (``mapClass``: 894 → 40) are v5 files with 1-based MATLAB indices.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from rgbx_fusion.data.atomic import write_atomic, write_text_atomic
from rgbx_fusion.errors import CorruptFileError, DatasetError, MissingFileError

MAT_KEYS = ("images", "depths", "labels")


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise MissingFileError(
            path, what, "no such file", "check the path given on the command line"
        )


def read_v5_mat(path: Path, key: str) -> npt.NDArray[np.int64]:
    """A 1-based index vector from a MATLAB v5 file, flattened to int64."""
    from scipy.io import loadmat

    _require(path, f"a MATLAB file holding {key!r}")
    try:
        data = loadmat(path)
    except Exception as exc:
        raise CorruptFileError(path, "a MATLAB v5 .mat file", f"unreadable ({exc})") from exc
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(path, f"a variable {key!r}", f"variables {found}")
    return np.asarray(data[key]).astype(np.int64).ravel()


def read_splits(path: Path, num_frames: int) -> dict[str, list[int]]:
    """0-based frame indices of the official train and test splits."""
    out = {}
    for split in ("train", "test"):
        idx = read_v5_mat(path, f"{split}Ndxs")
        if idx.size == 0 or idx.min() < 1 or idx.max() > num_frames:
            raise DatasetError(
                path,
                f"{split}Ndxs: 1-based indices in [1, {num_frames}]",
                f"range [{idx.min(initial=0)}, {idx.max(initial=0)}] ({idx.size} entries)",
            )
        out[split] = sorted(int(i) - 1 for i in idx)
    if set(out["train"]) & set(out["test"]):
        raise DatasetError(path, "disjoint trainNdxs and testNdxs", "shared frames")
    return out


def read_mapping(path: Path) -> npt.NDArray[np.uint8]:
    """Lookup table raw NYU class (0 = void, 1..894) → NYU-40 class (0 = void, 1..40)."""
    mapping = read_v5_mat(path, "mapClass")
    if mapping.min(initial=0) < 0 or mapping.max(initial=0) > 40:
        raise DatasetError(path, "mapClass values in [1, 40]", f"max {mapping.max()}")
    return np.concatenate([[0], mapping]).astype(np.uint8)


def _open_mat(path: Path) -> Any:
    try:
        import h5py
    except ModuleNotFoundError as exc:  # h5py is in the 'dev' extra only
        raise ModuleNotFoundError("prepare nyudv2 needs h5py: pip install h5py") from exc
    _require(path, "nyu_depth_v2_labeled.mat")
    try:
        mat = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptFileError(
            path, "a MATLAB v7.3 (HDF5) file like nyu_depth_v2_labeled.mat", f"not HDF5 ({exc})"
        ) from exc
    missing = [k for k in MAT_KEYS if k not in mat]
    shapes = {k: mat[k].shape for k in MAT_KEYS if k not in missing}
    if missing or len(shapes["images"]) != 4 or shapes["images"][1] != 3:
        mat.close()
        raise DatasetError(
            path,
            "datasets images (N, 3, W, H), depths (N, W, H), labels (N, W, H)",
            f"missing {missing}" if missing else f"shapes {shapes}",
        )
    n, _, w, h = shapes["images"]
    if shapes["depths"] != (n, w, h) or shapes["labels"] != (n, w, h):
        mat.close()
        raise DatasetError(path, f"depths and labels of shape {(n, w, h)}", f"shapes {shapes}")
    return mat


def _frame_paths(out: Path, i: int) -> dict[str, Path]:
    return {
        "rgb": out / "RGB" / f"{i}.jpg",
        "depth": out / "Depth" / f"{i}.npy",
        "label": out / "Label" / f"{i}.png",
    }


def _image_writer(arr: npt.NDArray[Any], **options: Any) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(arr).save(path, **options)


def _npy_writer(arr: npt.NDArray[Any]) -> Callable[[Path], None]:
    return lambda path: np.save(path, arr)


def _write_frame(mat: Any, i: int, paths: dict[str, Path], lut: npt.NDArray[Any] | None) -> None:
    rgb = np.ascontiguousarray(np.asarray(mat["images"][i]).transpose(2, 1, 0), dtype=np.uint8)
    depth = np.ascontiguousarray(np.asarray(mat["depths"][i]).T, dtype=np.float32)
    raw = np.asarray(mat["labels"][i]).T.astype(np.int64)
    if not np.isfinite(depth).all():
        raise DatasetError(paths["depth"], "finite depth in the .mat", f"NaN/inf in frame {i}")
    if lut is not None and raw.max() >= len(lut):
        raise DatasetError(paths["label"], f"raw labels < {len(lut)}", f"max {raw.max()}")
    label = lut[raw] if lut is not None else raw.astype(np.uint16)
    write_atomic(paths["rgb"], _image_writer(rgb, format="JPEG", quality=95))
    write_atomic(paths["depth"], _npy_writer(depth))
    write_atomic(paths["label"], _image_writer(np.ascontiguousarray(label), format="PNG"))


def prepare_nyudv2(
    mat: str | Path,
    splits: str | Path,
    out: str | Path,
    mapping: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the SA-Gate layout of NYUDv2 to ``out`` (atomic, resumable).

    Args:
        mat: ``nyu_depth_v2_labeled.mat`` (v7.3 / HDF5).
        splits: ``splits.mat`` with ``trainNdxs`` / ``testNdxs``.
        out: output root.
        mapping: ``classMapping40.mat`` (``mapClass``); without it the raw
            894-class labels are written as uint16 PNGs, which the NYUDv2
            reader rejects as out of range until they are mapped.
        progress: show a rich progress bar.

    Returns:
        ``out``.
    """
    from rich.progress import Progress

    out = Path(out)
    lut = read_mapping(Path(mapping)) if mapping is not None else None
    with _open_mat(Path(mat)) as f:
        frames = read_splits(Path(splits), int(f["images"].shape[0]))
        todo = []
        for i in sorted(frames["train"] + frames["test"]):
            paths = _frame_paths(out, i)
            if not all(p.is_file() for p in paths.values()):
                todo.append((i, paths))
        with Progress(disable=not progress) as bar:
            task = bar.add_task("writing NYUDv2 frames", total=len(todo))
            for i, paths in todo:
                _write_frame(f, i, paths, lut)
                bar.advance(task)
    for split, idx in frames.items():
        lines = "".join(f"RGB/{i}.jpg\tLabel/{i}.png\n" for i in idx)
        write_text_atomic(out / f"{split}.txt", lines)
    info = {
        "source": Path(mat).name,
        "labels": "nyu40 (0 = void, 1..40)" if lut is not None else "raw nyu894 (no mapping)",
        "train": len(frames["train"]),
        "test": len(frames["test"]),
        "hha": False,
    }
    write_text_atomic(out / "prepare.json", json.dumps(info, indent=2))
    return out
