"""Writing predictions: label PNGs (palette mode) and colour overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter

from rgbx_fusion.data.atomic import write_atomic
from rgbx_fusion.data.datamodule import RGBXDataModule
from rgbx_fusion.data.transforms import Normalizer
from rgbx_fusion.errors import CheckpointError


def colorize(
    labels: npt.NDArray[np.integer], palette: Sequence[Sequence[int]]
) -> npt.NDArray[np.uint8]:
    """Map class indices to palette colours (unknown / ignore → black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


def overlay(
    rgb: npt.NDArray[np.uint8], color: npt.NDArray[np.uint8], alpha: float = 0.5
) -> npt.NDArray[np.uint8]:
    """Blend a colour label map over the image."""
    out = rgb.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_label_png(
    labels: npt.NDArray[np.integer], palette: Sequence[Sequence[int]], path: Path
) -> None:
    """Save class indices as an 8-bit palette PNG (values are the class ids)."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    write_atomic(path, lambda p: img.save(p, format="PNG"))


def _save_rgb(image: npt.NDArray[np.uint8], path: Path) -> None:
    write_atomic(path, lambda p: Image.fromarray(image).save(p, format="PNG"))


class SegmentationWriter(BasePredictionWriter):
    """Writes ``labels/<name>.png`` and ``overlays/<name>.png`` for every predicted image."""

    def __init__(
        self, output_dir: str | Path, palette: Sequence[Sequence[int]], normalizer: Normalizer
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.palette = palette
        self.normalizer = normalizer
        self.written = 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        preds = prediction["pred"].cpu().numpy()
        rgbs = self.normalizer.denormalize_rgb(prediction["rgb"].float().cpu())
        for pred, rgb, meta in zip(preds, rgbs, prediction["meta"], strict=True):
            name = str(meta.get("name", f"{batch_idx:05d}_{self.written:05d}"))
            save_label_png(pred, self.palette, self.output_dir / "labels" / f"{name}.png")
            image = rgb.permute(1, 2, 0).numpy().astype(np.uint8)
            blend = overlay(image, colorize(pred, self.palette))
            _save_rgb(blend, self.output_dir / "overlays" / f"{name}.png")
            self.written += 1


def restore_normalization(datamodule: RGBXDataModule, ckpt_path: str | Path) -> None:
    """Set the DataModule's aux normalisation from a checkpoint, before any image is read.

    New images must be normalised with the statistics the model was trained with; the
    DataModule would otherwise estimate them from the "training" split of the dataset it
    was given, which for prediction is the folder of new, unlabelled images.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    saved = state.get(type(datamodule).__qualname__)
    if isinstance(saved, dict):
        datamodule.load_state_dict(saved)
    unlabelled = not getattr(datamodule.base_dataset(datamodule.predict_split), "has_labels", True)
    if unlabelled and (datamodule.aux_mean is None or datamodule.aux_std is None):
        raise CheckpointError(
            f"{ckpt_path}: holds no aux normalisation ({type(datamodule).__qualname__} state), "
            "and it cannot be estimated from unlabelled images; set data.aux_mean and "
            "data.aux_std to the training values"
        )
