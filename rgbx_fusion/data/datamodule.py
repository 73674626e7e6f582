"""RGBXDataModule: splits, transforms, normalisation and loaders for any RGB-X dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset, Sampler

from rgbx_fusion.data.modality_dropout import ModalityDropout
from rgbx_fusion.data.resumable_loader import ResumableLoader
from rgbx_fusion.data.sample import collate
from rgbx_fusion.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalizer,
    apply_transform,
    build_eval_transform,
    build_train_transform,
)
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.types import Sample

#: Builds the dataset of one split: ``factory("train")``. In configs this is a
#: ``class_path`` whose first parameter is ``split``.
DatasetFactory = Callable[[str], Dataset[Sample]]


class TransformedDataset(Dataset[dict[str, Any]]):
    """Applies a transform and the normaliser to every sample of a dataset."""

    def __init__(
        self,
        base: Dataset[Sample],
        transform: Any,
        normalizer: Normalizer,
        dropout: ModalityDropout | None = None,
    ) -> None:
        self.base = base
        self.transform = transform
        self.normalizer = normalizer
        self.dropout = dropout

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        seed = None
        if isinstance(index, tuple):  # (index, seed) from a ResumableSampler
            index, seed = index
            self.transform.set_random_seed(seed)
        sample = self.normalizer(apply_transform(self.transform, self.base[index]))
        return sample if self.dropout is None else self.dropout(sample, seed)


class RGBXDataModule(pl.LightningDataModule):
    """Loaders for train / val / test / predict splits of an RGB-X dataset.

    Args:
        dataset: factory of the dataset of a split (``class_path`` + ``init_args``
            in a config; the split name is passed at build time).
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader worker processes.
        train_size: ``(height, width)`` of training crops; ``None`` keeps full images.
        eval_size: resize for val/test/predict; ``None`` evaluates at native size.
        scale: crop-area range of the random resized crop.
        aux_mean, aux_std: aux normalisation per channel; ``None`` estimates them
            from valid pixels of up to 64 training samples (stored in checkpoints).
        pin_memory: ``None`` pins when CUDA is available.
        modality_dropout: training only, for a dataset of several aux modalities: the
            probability that each sample loses a modality, one for all or per name
            (``{depth: 0.5, thermal: 0.5}``); see
            :class:`~rgbx_fusion.data.modality_dropout.ModalityDropout`.
    """

    def __init__(
        self,
        dataset: DatasetFactory,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        train_size: tuple[int, int] | None = None,
        eval_size: tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        photometric: bool = True,
        rgb_mean: Sequence[float] = IMAGENET_MEAN,
        rgb_std: Sequence[float] = IMAGENET_STD,
        aux_mean: Sequence[float] | None = None,
        aux_std: Sequence[float] | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_split: str = "test",
        modality_dropout: dict[str, float] | float | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be ≥ 1, got {batch_size}")
        self.dataset_factory = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_size = train_size
        self.eval_size = eval_size
        self.scale = scale
        self.hflip = hflip
        self.photometric = photometric
        self.rgb_mean, self.rgb_std = tuple(rgb_mean), tuple(rgb_std)
        self.aux_mean = None if aux_mean is None else tuple(float(v) for v in aux_mean)
        self.aux_std = None if aux_std is None else tuple(float(v) for v in aux_std)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.splits = {"fit": train_split, "val": val_split, "test": test_split}
        self.predict_split = predict_split
        self.modality_dropout = modality_dropout
        self._datasets: dict[str, Dataset[Sample]] = {}
        self.sampler_seed: int | None = None
        self._train_loader: ResumableLoader | None = None
        self._resume_at: dict[str, int] | None = None  # a checkpoint's loader position

    # ---- dataset facts (linked to the model by the CLI) -----------------------------
    def base_dataset(self, split: str) -> Dataset[Sample]:
        if split not in self._datasets:
            self._datasets[split] = self.dataset_factory(split)
        return self._datasets[split]

    @property
    def _probe(self) -> Any:
        return self.base_dataset(self.splits["fit"])

    @property
    def num_classes(self) -> int:
        return len(self._probe.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self._probe.classes)

    @property
    def ignore_index(self) -> int:
        return int(getattr(self._probe, "ignore_index", 255))

    @property
    def aux_channels(self) -> int:
        return int(getattr(self._probe, "aux_channels", 1))

    @property
    def modalities(self) -> dict[str, int] | None:
        """Name → channels of each aux modality of a multi-modality dataset (``None`` for
        one aux image: the network takes ``aux_channels``)."""
        found = getattr(self._probe, "modalities", None)
        return {str(k): int(v) for k, v in found.items()} if found else None

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [(int(c[0]), int(c[1]), int(c[2])) for c in self._probe.palette]

    # ---- normalisation ---------------------------------------------------------------
    def estimate_aux_stats(self, max_samples: int = 64) -> tuple[tuple[float, ...], ...]:
        """Mean and std of valid (non-zero) aux pixels over evenly spaced training samples."""
        ds = self._probe
        n = len(ds)
        idx = np.linspace(0, n - 1, num=min(n, max_samples)).round().astype(int)
        total = np.zeros(self.aux_channels)
        total_sq = np.zeros(self.aux_channels)
        count = np.zeros(self.aux_channels)
        for i in np.unique(idx):
            aux = ds[int(i)]["aux"].reshape(-1, self.aux_channels).astype(np.float64)
            valid = aux != 0
            total += np.where(valid, aux, 0).sum(0)
            total_sq += np.where(valid, aux**2, 0).sum(0)
            count += valid.sum(0)
        count = np.maximum(count, 1)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
        return tuple(mean.tolist()), tuple(std.tolist())

    def normalizer(self) -> Normalizer:
        if self.aux_mean is None or self.aux_std is None:
            mean, std = self.estimate_aux_stats()
            self.aux_mean = self.aux_mean or mean
            self.aux_std = self.aux_std or std
            Console(stderr=True).print(
                f"[dim]aux normalisation estimated from training data: mean={_fmt(self.aux_mean)} "
                f"std={_fmt(self.aux_std)}[/dim]"
            )
        groups = list(self.modalities.values()) if self.modalities else None
        return Normalizer(self.rgb_mean, self.rgb_std, self.aux_mean, self.aux_std, groups)

    def state_dict(self) -> dict[str, Any]:
        loader = self._train_loader
        return {
            "aux_mean": self.aux_mean,
            "aux_std": self.aux_std,
            "sampler_seed": self.sampler_seed,
            "train_loader": loader.position() if loader is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("sampler_seed") is not None:
            self.sampler_seed = int(state_dict["sampler_seed"])
        if state_dict.get("aux_mean") is not None:
            self.aux_mean = tuple(state_dict["aux_mean"])
            self.aux_std = tuple(state_dict["aux_std"])
        # Lightning restores this before it builds the training loader, except for
        # strategies that set up first: then the loader exists and seeks now.
        self._resume_at = state_dict.get("train_loader")
        self._seek_once()

    def _seek_once(self) -> None:
        if self._resume_at is not None and self._train_loader is not None:
            self._train_loader.seek(self._resume_at)
            self._resume_at = None

    def dropout(self) -> ModalityDropout | None:
        """The training samples' modality dropout (``None`` without ``modality_dropout``)."""
        if self.modality_dropout is None:
            return None
        probe = self._probe
        root = getattr(probe, "root", None)
        source = f"{type(probe).__name__}" + (f" ({root}/dataset.json)" if root else "")
        return ModalityDropout(self.modality_dropout, self.modalities, source)

    # ---- loaders -------------------------------------------------------------------------
    def dataset(self, stage: str) -> TransformedDataset:
        """The transformed dataset for ``fit`` / ``val`` / ``test`` / ``predict``."""
        norm = self.normalizer()
        if stage == "fit":
            tf = build_train_transform(self.train_size, self.scale, self.hflip, self.photometric)
            return TransformedDataset(
                self.base_dataset(self.splits["fit"]), tf, norm, self.dropout()
            )
        split = self.predict_split if stage == "predict" else self.splits[stage]
        return TransformedDataset(
            self.base_dataset(split), build_eval_transform(self.eval_size), norm
        )

    def _loader(self, stage: str, shuffle: bool) -> DataLoader[dict[str, Any]]:
        workers = self.num_workers
        dataset = self.dataset(stage)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if stage == "fit" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=_unrepeated_sampler(dataset) if stage in ("val", "test") else None,
            drop_last=stage == "fit",
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate,
            worker_init_fn=_init_worker,
        )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Shuffled, augmented training batches in an order a resumed run reproduces
        (see :mod:`rgbx_fusion.data.resumable_loader`), seeded from ``seed_everything``."""
        if self.sampler_seed is None:
            self.sampler_seed = torch.initial_seed() % 2**63
        workers = self.num_workers
        self._train_loader = ResumableLoader(
            self.dataset("fit"),
            batch_size=self.batch_size,
            seed=self.sampler_seed,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate,
            worker_init_fn=_init_worker,
        )
        self._seek_once()
        return self._train_loader

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("predict", shuffle=False)


def _unrepeated_sampler(dataset: Dataset[Any]) -> Sampler[int] | None:
    """Under DDP, a val/test sampler that gives every sample to exactly one process.

    Lightning's default ``DistributedSampler`` pads a split with repeated samples until
    every process has as many, and the repeats would count twice in the confusion matrix.
    The metric sums its state over processes, so unequal shares are fine. ``None`` (keep
    Lightning's choice) outside DDP, or with fewer samples than processes.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world < 2 or len(dataset) < world:  # type: ignore[arg-type]
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=world, shuffle=False)


def _init_worker(worker_id: int) -> None:
    """One OpenCV thread per worker: the workers already run in parallel with training."""
    cv2.setNumThreads(1)


def _fmt(values: Sequence[float] | None) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values or ()) + "]"
