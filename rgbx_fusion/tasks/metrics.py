"""Segmentation metrics from a confusion matrix accumulated over a whole split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.table import Table
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Confusion matrix over every pixel of a split (synchronised across processes).

    ``IoU_k = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)``; classes absent from both the
    predictions and the labels of the split have no IoU (NaN) and are left out
    of ``mIoU``. Pixel accuracy is ``trace(C) / ΣC``. Rows are labels, columns
    predictions; ``ignore_index`` pixels are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    def scores(self) -> dict[str, Tensor]:
        """``{"mIoU", "pixel_acc", "iou" (per class)}`` from the accumulated matrix."""
        return scores_from_confusion(self.compute())


def scores_from_confusion(confusion: Tensor) -> dict[str, Tensor]:
    """mIoU, pixel accuracy and per-class IoU from a K×K confusion matrix."""
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {
        "mIoU": iou.nanmean() if (union > 0).any() else torch.tensor(0.0, dtype=cm.dtype),
        "pixel_acc": tp.sum() / total if total > 0 else torch.tensor(0.0, dtype=cm.dtype),
        "iou": iou,
    }


def iou_table(title: str, class_names: Sequence[str], scores: dict[str, Tensor]) -> Table:
    """A rich table of per-class IoU plus mIoU and pixel accuracy."""
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in zip(class_names, scores["iou"].tolist(), strict=True):
        table.add_row(name, "—" if value != value else f"{value:.4f}")
    table.add_section()
    table.add_row("mIoU", f"{float(scores['mIoU']):.4f}")
    table.add_row("pixel acc", f"{float(scores['pixel_acc']):.4f}")
    return table
