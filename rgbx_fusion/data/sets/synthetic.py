"""The embedded synthetic RGB-D / RGB-T / RGB-D-T dataset: generator (``prepare``) and reader.

``rgbx-fusion prepare synthetic --root datasets/synthetic`` renders a
deterministic dataset (:mod:`rgbx_fusion.data.sets.synthetic_scene` renders one frame,
:mod:`rgbx_fusion.data.sets.synthetic_rgbdt` one frame of all three cameras for
``--modality depth,thermal``) and writes it in the generic folder layout, so training
on it exercises the same reader as real data. Classes and generator options:
``datasets/README.md``, "Synthetic data".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rgbx_fusion.data.atomic import write_atomic, write_text_atomic
from rgbx_fusion.data.depth import encode_depth_png16
from rgbx_fusion.data.sets.folder import FolderRGBX, read_json_object
from rgbx_fusion.data.sets.synthetic_rgbdt import (
    RGBDT_CLASSES,
    RGBDT_PALETTE,
    MultiFrame,
    render_rgbdt_frame,
)
from rgbx_fusion.data.sets.synthetic_scene import (
    DEPTH_CLASSES,
    DEPTH_PALETTE,
    THERMAL_CLASSES,
    THERMAL_PALETTE,
    Frame,
    misalignment,
    render_frame,
    scaled_intrinsics,
)
from rgbx_fusion.errors import ConfigError, DatasetError

#: Aux modalities the generator renders, in their canonical order, and their on-disk encodings
#: (``png16_unit``: 16-bit PNG, value / 65535 = relative temperature in [0, 1]).
AUX_ENCODINGS = {"depth": "png16_mm", "thermal": "png16_unit"}


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated files.

    ``modality`` is ``"depth"``, ``"thermal"`` or ``"depth,thermal"`` (both of the same
    scenes; any order is accepted and stored as ``"depth,thermal"``).
    """

    modality: str = "depth"
    seed: int = 0
    num_train: int = 600
    num_val: int = 100
    num_test: int = 100
    height: int = 240
    width: int = 320
    misalign: str = "none"
    misalign_strength: float = 1.0
    misalign_per: str = "frame"

    def __post_init__(self) -> None:
        if self.misalign_per not in ("frame", "rig"):
            raise ConfigError(f"misalign_per must be 'frame' or 'rig', got {self.misalign_per!r}")
        names = [m.strip() for m in str(self.modality).split(",")]
        if not names or any(m not in AUX_ENCODINGS for m in names) or len(set(names)) < len(names):
            raise ConfigError(
                f"modality must be 'depth', 'thermal' or 'depth,thermal', got {self.modality!r}"
            )
        object.__setattr__(self, "modality", ",".join(m for m in AUX_ENCODINGS if m in names))
        if self.misalign not in ("none", "affine", "homography"):
            raise ConfigError(
                f"misalign must be 'none', 'affine' or 'homography', got {self.misalign!r}"
            )
        if min(self.num_train, self.num_val, self.num_test) < 1:
            raise ConfigError("every split needs at least one image")
        if self.misalign != "none" and len(self.modalities) > 1:
            raise ConfigError(
                f"misalign={self.misalign!r} is not supported yet with several aux modalities "
                f"({self.modality}); prepare one modality at a time to misregister it"
            )

    @property
    def total(self) -> int:
        return self.num_train + self.num_val + self.num_test

    @property
    def modalities(self) -> tuple[str, ...]:
        """The aux modalities rendered, in canonical order."""
        return tuple(self.modality.split(","))


def frame_seed(seed: int, index: int) -> int:
    """Per-frame seed, independent of worker count and order."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def rig_misalignment(spec: SyntheticSpec) -> np.ndarray | None:
    """The one ``aux_from_rgb`` transform of a rig-wide misregistration (``None`` otherwise).

    Drawn from the dataset seed, like a camera pair whose calibration is off by a fixed amount.
    """
    if spec.misalign == "none" or spec.misalign_per != "rig":
        return None
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x716]))
    return misalignment(rng, spec.misalign_strength, spec.height, spec.width, spec.misalign)


def _render(spec: SyntheticSpec, index: int) -> MultiFrame:
    if len(spec.modalities) > 1:
        return render_rgbdt_frame(frame_seed(spec.seed, index), spec.height, spec.width)
    frame: Frame = render_frame(
        frame_seed(spec.seed, index),
        spec.height,
        spec.width,
        spec.modality,
        spec.misalign,
        spec.misalign_strength,
        rig_misalignment(spec),
    )
    return MultiFrame(frame.rgb, {spec.modality: frame.aux}, frame.labels, frame.meta)


def _write_aux(path: Path, modality: str, aux: np.ndarray) -> None:
    if modality == "depth":
        write_atomic(path, lambda p: encode_depth_png16(aux, p))
    else:
        thermal = np.clip(aux * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        write_atomic(path, lambda p: Image.fromarray(thermal).save(p, format="PNG"))


def _write_frame(job: tuple[Path, SyntheticSpec, int]) -> tuple[str, dict[str, Any]]:
    root, spec, index = job
    name = f"{index:05d}"
    frame = _render(spec, index)
    for modality, aux in frame.aux.items():
        _write_aux(root / modality / f"{name}.png", modality, aux)
    write_atomic(root / "rgb" / f"{name}.png", lambda p: Image.fromarray(frame.rgb).save(p))
    write_atomic(root / "labels" / f"{name}.png", lambda p: Image.fromarray(frame.labels).save(p))
    meta = {k: v for k, v in frame.meta.items() if k != "K"}
    return name, meta


def prepare_synthetic(
    root: str | Path, spec: SyntheticSpec | None = None, workers: int = 2, progress: bool = True
) -> Path:
    """Render the dataset to ``root`` (atomic per file, resumable, deterministic).

    A finished dataset with the same spec is left as it is; an interrupted one
    is completed (files already written are kept, as they are deterministic).
    """
    spec = spec or SyntheticSpec()
    root = Path(root)
    info_path = root / "dataset.json"
    info = _dataset_info(spec)
    if info_path.is_file() and _stored_spec(info_path) == asdict(spec):
        return root
    if info_path.is_file():
        raise ConfigError(
            f"{root} holds a synthetic dataset made with other settings; "
            "choose another --root or delete the folder"
        )
    folders = ("rgb", *spec.modalities, "labels")
    for sub in (*folders, "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    todo = [
        i
        for i in range(spec.total)
        if not all((root / d / f"{i:05d}.png").is_file() for d in folders)
    ]
    pending = set(todo)
    jobs = [(root, spec, i) for i in range(spec.total)]
    metas: dict[str, Any] = {}
    if spec.misalign != "none":  # frames kept from an interrupted run: recompute their meta
        metas.update(_meta_only(j) for j in jobs if j[2] not in pending)
    metas.update(
        _run_jobs([j for j in jobs if j[2] in pending], workers, progress, "rendering frames")
    )
    bounds = np.cumsum([0, spec.num_train, spec.num_val, spec.num_test])
    for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True):
        names = "".join(f"{i:05d}\n" for i in range(int(lo), int(hi)))
        write_text_atomic(root / "splits" / f"{split}.txt", names)
    if spec.misalign != "none":
        write_text_atomic(root / "meta.json", json.dumps(dict(sorted(metas.items()))))
    write_text_atomic(info_path, json.dumps(info, indent=2))  # last: marks completion
    return root


def _dataset_info(spec: SyntheticSpec) -> dict[str, Any]:
    """The ``dataset.json`` of a dataset made with ``spec`` (written last)."""
    if len(spec.modalities) == 1:
        depth = spec.modality == "depth"
        return {
            "name": f"synthetic-{spec.modality}",
            "classes": list(DEPTH_CLASSES if depth else THERMAL_CLASSES),
            "palette": [list(c) for c in (DEPTH_PALETTE if depth else THERMAL_PALETTE)],
            "ignore_index": 255,
            "modality": spec.modality,
            "depth_format": "png16_mm" if depth else None,
            "K": scaled_intrinsics(spec.height, spec.width).tolist(),
            "generator": asdict(spec),
        }
    return {
        "name": "synthetic-rgbdt",
        "classes": list(RGBDT_CLASSES),
        "palette": [list(c) for c in RGBDT_PALETTE],
        "ignore_index": 255,
        "modalities": {
            m: {"folder": m, "encoding": AUX_ENCODINGS[m], "channels": 1, "optional": False}
            for m in spec.modalities
        },
        # the one-aux readers' keys: default view and the depth encoding
        "modality": spec.modalities[0],
        "depth_format": AUX_ENCODINGS["depth"],
        "K": scaled_intrinsics(spec.height, spec.width).tolist(),
        "generator": asdict(spec),
    }


def declared_modalities(info: dict[str, Any]) -> tuple[str, ...]:
    """The aux modalities a ``dataset.json`` declares (``modalities``, else ``modality``)."""
    multi = info.get("modalities")
    if isinstance(multi, dict):
        return tuple(multi)
    single = info.get("modality")
    return (single,) if isinstance(single, str) else ()


def _stored_spec(info_path: Path) -> dict[str, Any]:
    """The generator settings recorded in ``dataset.json``, with defaults for newer fields."""
    stored = json.loads(info_path.read_text()).get("generator")
    return {**asdict(SyntheticSpec()), **stored} if isinstance(stored, dict) else {}


def _meta_only(job: tuple[Path, SyntheticSpec, int]) -> tuple[str, dict[str, Any]]:
    """Recompute the metadata of an already written frame (cheap relative to I/O safety)."""
    _, spec, index = job
    frame = _render(spec, index)
    return f"{index:05d}", {k: v for k, v in frame.meta.items() if k != "K"}


def _run_jobs(
    jobs: Sequence[tuple[Path, SyntheticSpec, int]], workers: int, progress: bool, label: str
) -> dict[str, Any]:
    from rich.progress import Progress

    out: dict[str, Any] = {}
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=len(jobs))
        if workers <= 1 or len(jobs) < 8:
            for job in jobs:
                name, meta = _write_frame(job)
                out[name] = meta
                bar.advance(task)
        else:
            with get_context("spawn").Pool(workers) as pool:
                for name, meta in pool.imap_unordered(_write_frame, jobs, chunksize=4):
                    out[name] = meta
                    bar.advance(task)
    return out


class SyntheticRGBX(FolderRGBX):
    """The embedded synthetic dataset (generic folder layout with its ``dataset.json``).

    Prepare it first with ``rgbx-fusion prepare synthetic --root <root>``. A dataset
    prepared with ``--modality depth,thermal`` is read as RGB-D or as RGB-T of the same
    frames, by ``modality``; naming a modality the dataset does not declare is an error.
    """

    def __init__(
        self,
        split: str = "train",
        root: str | Path = "datasets/synthetic",
        modality: str = "depth",
    ) -> None:
        if not (Path(root) / "dataset.json").is_file():
            from rgbx_fusion.errors import MissingFileError

            raise MissingFileError(
                Path(root) / "dataset.json",
                "a prepared synthetic dataset",
                "no dataset.json",
                f"run `rgbx-fusion prepare synthetic --root {root} --modality {modality}`",
            )
        info_path = Path(root) / "dataset.json"
        declared = declared_modalities(read_json_object(info_path))
        wanted = [m.strip() for m in modality.split(",")]
        if declared and any(m not in declared for m in wanted):
            raise DatasetError(
                info_path,
                f"the aux modality {modality!r} (data.dataset.init_args.modality) among the "
                "modalities it declares",
                f"only {', '.join(map(repr, declared))}",
                f"set modality to one of those, or prepare a dataset with {modality} "
                f"(`rgbx-fusion prepare synthetic --modality {modality}`)",
            )
        super().__init__(split=split, root=root, modality=modality)
