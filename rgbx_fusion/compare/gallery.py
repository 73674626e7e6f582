"""The qualitative gallery of a compare: the same test images through every variant.

Layout::

    <out>/gallery/selection.json                 the chosen test images (split size, indices, names)
    <out>/gallery/<index>_{rgb,aux,gt}.png       shared by every variant
    <run>/gallery/<key>/<index>_{pred,error}.png one run's prediction and error map

Convention:
    The images are chosen once per output folder: the first ``count`` indices of a
    shuffle of the test split seeded with ``seed`` (shown in index order), so a larger
    ``count`` adds images and keeps the others. Every later call reuses them, so every
    variant and every rerun shows the same ones; a test split of another size, or with
    other sample names at the chosen indices, is a :class:`~rgbx_fusion.errors.DatasetError`.
    A variant is shown by its lowest seed whose best checkpoint is on disk; its images
    are predicted with that checkpoint and the run's own data settings (evaluation size,
    normalisation), in batches, at the evaluation resolution (downscaled to ``max_side``).
    They are cached under ``<key>``, a digest of the checkpoint (path, size, time) and
    the selection: a rerun reuses them.

    Colours: ground truth and predictions in the dataset's palette, ignore pixels black;
    aux by :func:`aux_colors`; error maps by :func:`error_map` (wrong pixels red, correct
    pixels the image's luminance dimmed to grey, ignore pixels black).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from rgbx_fusion.data.atomic import write_atomic, write_text_atomic
from rgbx_fusion.errors import DatasetError

UInt8Image = npt.NDArray[np.uint8]

DEFAULT_COUNT = 6
SELECTION_SEED = 0
MAX_SIDE = 512  # longest side of a gallery image, in pixels
ERROR_RGB = (255, 0, 0)
IGNORE_RGB = (0, 0, 0)
# correct pixels: luminance mapped into this grey range (never black, never red)
CORRECT_GREY = (64.0, 160.0)
FOLDER = "gallery"
SHARED = ("rgb", "aux", "gt")


@dataclass(frozen=True)
class Selection:
    """The chosen test images: ``indices`` into a test split of ``size`` samples."""

    size: int
    indices: tuple[int, ...]
    names: tuple[str, ...]
    seed: int = SELECTION_SEED
    split: str = "test"

    def to_json(self) -> str:
        doc = {
            "split": self.split,
            "size": self.size,
            "seed": self.seed,
            "indices": list(self.indices),
            "names": list(self.names),
        }
        return json.dumps(doc, indent=2)


@dataclass(frozen=True)
class GalleryImage:
    """One chosen test image and its shared pictures."""

    index: int
    name: str
    rgb: Path
    aux: Path
    gt: Path


@dataclass(frozen=True)
class GalleryColumn:
    """One variant's pictures, in the order of :attr:`Gallery.images`."""

    variant: str
    seed: int
    predictions: tuple[Path, ...]
    errors: tuple[Path, ...]


@dataclass(frozen=True)
class Gallery:
    images: tuple[GalleryImage, ...]
    columns: tuple[GalleryColumn, ...]
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]


# ---- selection ----------------------------------------------------------------------------
def choose(size: int, count: int, seed: int = SELECTION_SEED) -> list[int]:
    """``count`` indices of ``range(size)``, in increasing order, drawn with a fixed seed.

    The first ``count`` of one seeded shuffle: a larger ``count`` keeps the smaller one's.

    >>> choose(10, 3) == sorted(choose(10, 3)) and set(choose(10, 3)) <= set(choose(10, 5))
    True
    """
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return sorted(order[: max(0, min(count, size))])


def read_selection(path: Path) -> Selection | None:
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return Selection(
        size=int(doc["size"]),
        indices=tuple(int(i) for i in doc["indices"]),
        names=tuple(str(n) for n in doc["names"]),
        seed=int(doc.get("seed", SELECTION_SEED)),
        split=str(doc.get("split", "test")),
    )


def resolve_selection(
    path: Path,
    size: int,
    name_of: Callable[[int], str],
    count: int = DEFAULT_COUNT,
    seed: int = SELECTION_SEED,
) -> Selection:
    """The selection stored at ``path``, checked against the test split; chosen and written
    when there is none (or it holds another number of images than ``count`` asks for).

    ``size`` is the test split's length and ``name_of(i)`` the name of its sample ``i``.

    Raises:
        DatasetError: the stored selection was made on a test split of another size, or
            the samples at its indices now have other names.
    """
    stored = read_selection(path)
    fix = f"delete {path.parent} to choose the gallery images again"
    if stored is not None and stored.size != size:
        raise DatasetError(
            path,
            expected=f"a test split of {stored.size} samples (the gallery images were "
            "chosen from it)",
            found=f"{size} samples",
            fix=fix,
        )
    if stored is not None and len(stored.indices) == min(count, size):
        for index, name in zip(stored.indices, stored.names, strict=True):
            now = name_of(index)
            if now != name:
                raise DatasetError(
                    path,
                    expected=f"test sample {index} named {name!r} (as when the gallery "
                    "images were chosen)",
                    found=f"{now!r}",
                    fix=fix,
                )
        return stored
    indices = choose(size, count, seed)
    selection = Selection(size, tuple(indices), tuple(name_of(i) for i in indices), seed)
    write_text_atomic(path, selection.to_json())
    return selection


# ---- colours --------------------------------------------------------------------------------
def label_colors(
    labels: npt.NDArray[np.integer], palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> UInt8Image:
    """Class indices → palette colours; ``ignore_index`` and unknown labels black.

    Shape:
        labels: (H, W) -> (H, W, 3) uint8
    """
    from rgbx_fusion.tasks.prediction_writer import colorize

    out = colorize(labels, palette)
    out[labels == ignore_index] = IGNORE_RGB
    return out


def error_map(
    pred: npt.NDArray[np.integer],
    gt: npt.NDArray[np.integer],
    ignore_index: int = 255,
    rgb: UInt8Image | None = None,
) -> UInt8Image:
    """Wrong pixels red, correct pixels grey, ignore pixels black.

    The grey of a correct pixel is the image's luminance mapped into ``CORRECT_GREY``
    (a dimmed copy of the scene, for context); without ``rgb`` the middle of that range.

    Shape:
        pred, gt: (H, W); rgb: (H, W, 3) uint8 -> (H, W, 3) uint8
    """
    lo, hi = CORRECT_GREY
    if rgb is None:
        grey = np.full(gt.shape, (lo + hi) / 2, np.float32)
    else:
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        grey = lo + (hi - lo) * luma / 255.0
    out = np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)
    out[pred != gt] = ERROR_RGB
    out[gt == ignore_index] = IGNORE_RGB
    return out


def aux_colors(aux: npt.NDArray[np.floating], modality: str | None = None) -> UInt8Image:
    """Display colours for raw aux (H×W×C, 0 = missing, shown black).

    Thermal (one channel): grey, the 2nd–98th percentile of the valid pixels stretched to
    black–white. Depth and other one-channel maps: the same stretch through the turbo
    colour map; three channels (HHA): stretched per channel, shown as RGB (as
    ``predict --dump_alignment`` colours aux).
    """
    from rgbx_fusion.alignment_report import colorize_aux

    chw = np.moveaxis(np.asarray(aux, np.float32), -1, 0)
    if modality != "thermal" or chw.shape[0] != 1:
        return colorize_aux(chw)
    valid = chw[0] != 0
    grey = np.zeros(chw.shape[1:], np.float32)
    if valid.any():
        lo, hi = np.percentile(chw[0][valid], (2, 98))
        grey = np.clip((chw[0] - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out = np.round(grey * 255).astype(np.uint8)
    out[~valid] = 0
    return np.repeat(out[..., None], 3, axis=-1)


# ---- images on disk -------------------------------------------------------------------------
def _fit(image: UInt8Image, max_side: int, nearest: bool) -> UInt8Image:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(size, resample), np.uint8)


def _save(image: UInt8Image, path: Path) -> None:
    write_atomic(path, lambda p: Image.fromarray(image).save(p, format="PNG"))


def _stem(index: int) -> str:
    return f"{index:05d}"


def _shared(folder: Path, index: int, kind: str) -> Path:
    return folder / f"{_stem(index)}_{kind}.png"


def _run_key(checkpoint: Path, selection: Selection, max_side: int) -> str:
    st = checkpoint.stat()
    doc = {
        "checkpoint": str(checkpoint.resolve()),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "indices": list(selection.indices),
        "names": list(selection.names),
        "max_side": max_side,
    }
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _column_files(folder: Path, selection: Selection) -> tuple[list[Path], list[Path]]:
    preds = [folder / f"{_stem(i)}_pred.png" for i in selection.indices]
    errors = [folder / f"{_stem(i)}_error.png" for i in selection.indices]
    return preds, errors


def gallery_runs(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finished run per variant (its lowest seed whose checkpoint and config are on
    disk), in the variants' first-seen order."""
    chosen: dict[str, dict[str, Any]] = {}
    for m in metrics:
        ckpt, config = m.get("checkpoint"), m.get("resolved_config")
        if not ckpt or not config or not Path(ckpt).is_file() or not Path(config).is_file():
            continue
        best = chosen.get(m["variant"])
        if best is None or int(m["seed"]) < int(best["seed"]):
            chosen[m["variant"]] = m
    return list(chosen.values())


class _TestSplit:
    """The chosen test samples of one run's datamodule, at its evaluation size."""

    def __init__(self, dm: Any) -> None:
        from rgbx_fusion.data.transforms import build_eval_transform

        self.dm = dm
        self.base = dm.base_dataset(dm.splits["test"])
        self.transform = build_eval_transform(dm.eval_size)
        self.modality = getattr(self.base, "modality", None)

    def __len__(self) -> int:
        return len(self.base)

    def name_of(self, index: int) -> str:
        return str(self.base[index]["meta"].get("name", index))

    def samples(self, indices: Sequence[int]) -> list[Any]:
        from rgbx_fusion.data.transforms import apply_transform

        return [apply_transform(self.transform, self.base[i]) for i in indices]


def _write_shared(split: _TestSplit, selection: Selection, folder: Path, max_side: int) -> None:
    dm = split.dm
    for index, s in zip(selection.indices, split.samples(selection.indices), strict=True):
        mask = np.asarray(s["mask"])
        pictures = {
            "rgb": _fit(np.asarray(s["rgb"], np.uint8), max_side, nearest=False),
            "aux": _fit(aux_colors(s["aux"], split.modality), max_side, nearest=False),
            "gt": _fit(label_colors(mask, dm.palette, dm.ignore_index), max_side, nearest=True),
        }
        for kind, image in pictures.items():
            _save(image, _shared(folder, index, kind))


@torch.no_grad()
def _predict(
    task: Any, split: _TestSplit, selection: Selection, folder: Path, max_side: int
) -> None:
    """Write one run's prediction and error map of every chosen image into ``folder``."""
    dm = split.dm
    samples = split.samples(selection.indices)
    for index, name, s in zip(selection.indices, selection.names, samples, strict=True):
        found = str(s["meta"].get("name", index))
        if found != name:
            raise DatasetError(
                folder.parents[1],
                expected=f"test sample {index} named {name!r} (as in the gallery selection)",
                found=f"{found!r}",
                fix="train the variants on the same test split",
            )
    normalize = dm.normalizer()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.to(device).eval()
    preds: list[npt.NDArray[np.int64]] = []
    step = max(1, int(getattr(dm, "eval_batch_size", 8) or 8))
    for start in range(0, len(samples), step):
        items = [normalize(s) for s in samples[start : start + step]]
        rgb = torch.stack([it["rgb"] for it in items]).to(device)
        aux = torch.stack([it["aux"] for it in items]).to(device)
        preds.extend(task(rgb, aux).argmax(1).cpu().numpy())
    preds_out, errors_out = _column_files(folder, selection)
    for s, pred, p_path, e_path in zip(samples, preds, preds_out, errors_out, strict=True):
        gt = np.asarray(s["mask"])
        rgb_img = np.asarray(s["rgb"], np.uint8)
        colored = label_colors(pred, dm.palette, dm.ignore_index)
        _save(_fit(colored, max_side, nearest=True), p_path)
        errors = error_map(pred, gt, dm.ignore_index, rgb_img)
        _save(_fit(errors, max_side, nearest=True), e_path)


def build_gallery(
    metrics: Sequence[dict[str, Any]],
    out: str | Path,
    count: int = DEFAULT_COUNT,
    seed: int = SELECTION_SEED,
    max_side: int = MAX_SIDE,
) -> Gallery | None:
    """Choose (or reuse) the gallery images and draw every variant's predictions on them.

    ``None`` when ``count`` is 0 or no finished run has its checkpoint on disk. Only what
    is not cached yet is computed: a rerun with the same checkpoints loads no model.
    """
    from rgbx_fusion.compare.robustness import build_run, restore_checkpoint

    runs = gallery_runs(metrics)
    if count <= 0 or not runs:
        return None
    out = Path(out)
    folder = out / FOLDER
    # The first run's data decides (and checks) the selection and draws the shared images.
    first_task, first_dm = build_run(runs[0]["resolved_config"])
    first_split = _TestSplit(first_dm)
    selection = resolve_selection(
        folder / "selection.json", len(first_split), first_split.name_of, count, seed
    )
    shared = [_shared(folder, i, kind) for i in selection.indices for kind in SHARED]
    if not all(p.is_file() for p in shared):
        _write_shared(first_split, selection, folder, max_side)

    columns = []
    for n, m in enumerate(runs):
        checkpoint = Path(m["checkpoint"])
        run_gallery = out / "runs" / m["variant"] / f"seed{m['seed']}" / FOLDER
        key_dir = run_gallery / _run_key(checkpoint, selection, max_side)
        preds, errors = _column_files(key_dir, selection)
        if not all(p.is_file() for p in (*preds, *errors)):
            task, dm = (first_task, first_dm) if n == 0 else build_run(m["resolved_config"])
            restore_checkpoint(task, dm, checkpoint)
            split = first_split if n == 0 else _TestSplit(dm)
            if len(split) != selection.size:
                raise DatasetError(
                    m["resolved_config"],
                    expected=f"a test split of {selection.size} samples (the gallery's)",
                    found=f"{len(split)} samples for variant {m['variant']!r}",
                    fix="train the variants on the same test split",
                )
            _predict(task, split, selection, key_dir, max_side)
            for old in run_gallery.iterdir():  # images of an earlier checkpoint or selection
                if old.is_dir() and old != key_dir:
                    shutil.rmtree(old)
        columns.append(GalleryColumn(m["variant"], int(m["seed"]), tuple(preds), tuple(errors)))

    images = tuple(
        GalleryImage(i, name, *(_shared(folder, i, kind) for kind in SHARED))
        for i, name in zip(selection.indices, selection.names, strict=True)
    )
    classes = tuple(str(c) for c in runs[0].get("classes") or first_dm.class_names)
    return Gallery(images, tuple(columns), classes, tuple(first_dm.palette))
