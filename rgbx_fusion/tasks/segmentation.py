"""SegmentationTask: the LightningModule that trains and evaluates an RGB-X network."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from rich.console import Console
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.tasks.metrics import SegmentationMetrics, iou_table

#: Builds the network: ``network(num_classes, aux_channels)``. In configs this is a
#: ``class_path`` (default :class:`RGBXSegmenter`) whose first two parameters are
#: filled from the data.
NetworkFactory = Callable[[int, int], nn.Module]


def warmup_poly(step: int, total: int, warmup: int, power: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then poly decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** power


class SegmentationTask(pl.LightningModule):
    """Cross-entropy training with AdamW, warm-up + poly schedule and split-level metrics.

    Args:
        network: factory of the network (see :data:`NetworkFactory`).
        num_classes, aux_channels, ignore_index, class_names: linked from the data.
        lr: peak learning rate. weight_decay: AdamW weight decay.
        warmup_fraction: share of the total steps spent warming up.
        poly_power: exponent of the poly decay.
        align_loss_weight: weight of the aligners' regularisation losses.
    """

    def __init__(
        self,
        network: NetworkFactory = RGBXSegmenter,
        num_classes: int = 2,
        aux_channels: int = 1,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.05,
        poly_power: float = 0.9,
        align_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        # Under the CLI the hyper-parameters are the parsed config (plain data); a
        # network *factory* passed from Python is not data, so keep it out.
        self.save_hyperparameters(ignore=None if _given_hyperparameters.get() else ["network"])
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names for num_classes={num_classes}; "
                "link both from the data"
            )
        self.net = network(num_classes, aux_channels)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        self.metrics = nn.ModuleDict(
            {s: SegmentationMetrics(num_classes, ignore_index) for s in ("val", "test")}
        )

    @property
    def _hp(self) -> Any:
        return self.hparams

    def metric(self, split: str) -> SegmentationMetrics:
        metric = self.metrics[split]
        assert isinstance(metric, SegmentationMetrics)
        return metric

    def forward(self, rgb: Tensor, aux: Tensor) -> Tensor:
        out: Tensor = self.net(rgb, aux)
        return out

    def _loss(self, logits: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(logits, mask, ignore_index=self.ignore_index)
        parts = {"ce": ce}
        reg = getattr(self.net, "regularization", None)
        total = ce
        if callable(reg):
            for name, value in reg().items():
                parts[name] = value
                total = total + self._hp.align_loss_weight * value
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["rgb"], batch["aux"])
        loss, parts = self._loss(logits, batch["mask"])
        bs = batch["rgb"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            if name != "ce":
                self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _eval_step(self, split: str, batch: dict[str, Any]) -> None:
        logits = self(batch["rgb"], batch["aux"])
        loss, _ = self._loss(logits, batch["mask"])
        self.log(f"{split}/loss", loss, batch_size=batch["rgb"].shape[0], sync_dist=True)
        self.metric(split).update(logits.argmax(1), batch["mask"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        logits = self(batch["rgb"], batch["aux"])
        return {"pred": logits.argmax(1), "meta": batch["meta"], "rgb": batch["rgb"]}

    def _eval_epoch_end(self, split: str) -> None:
        metric = self.metric(split)
        scores = metric.scores()
        self.log(f"{split}/mIoU", scores["mIoU"].float(), prog_bar=True)
        self.log(f"{split}/pixel_acc", scores["pixel_acc"].float())
        for name, value in zip(self.class_names, scores["iou"].tolist(), strict=True):
            if not math.isnan(value):
                self.log(f"{split}/iou/{name}", value)
        self.last_scores = {split: {k: v.detach().cpu() for k, v in scores.items()}}
        state = self.trainer.state.fn if self._trainer is not None else None
        if state in ("validate", "test") and self.trainer.is_global_zero:
            Console().print(iou_table(f"{split} per-class IoU", self.class_names, scores))
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self._hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self._hp.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self._hp.warmup_fraction * total)
        power = self._hp.poly_power
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_poly(step, total, warmup, power)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
