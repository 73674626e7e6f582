from __future__ import annotations

import math

import numpy as np
import torch

from rgbx_fusion.tasks.metrics import SegmentationMetrics, scores_from_confusion
from rgbx_fusion.tasks.segmentation import warmup_poly


def test_miou_matches_a_hand_computed_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    k, ignore = 4, 255
    target = rng.integers(0, k, size=(3, 20, 30))
    target[:, :2] = ignore
    pred = np.where(rng.uniform(size=target.shape) < 0.7, target, rng.integers(0, k, target.shape))
    pred = np.where(target == ignore, 0, pred)
    cm = np.zeros((k, k))
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != ignore:
            cm[t, p] += 1
    iou = [cm[i, i] / (cm[i].sum() + cm[:, i].sum() - cm[i, i]) for i in range(k)]
    metric = SegmentationMetrics(k, ignore)
    for b in range(3):  # accumulated over batches, not averaged per batch
        metric.update(torch.from_numpy(pred[b : b + 1]), torch.from_numpy(target[b : b + 1]))
    scores = metric.scores()
    np.testing.assert_allclose(scores["iou"].numpy(), iou, rtol=1e-12)
    assert math.isclose(float(scores["mIoU"]), float(np.mean(iou)), rel_tol=1e-12)
    assert math.isclose(float(scores["pixel_acc"]), np.trace(cm) / cm.sum(), rel_tol=1e-12)


def test_absent_classes_are_left_out_of_the_mean() -> None:
    cm = torch.tensor([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    assert math.isnan(float(s["iou"][2]))
    assert math.isclose(float(s["mIoU"]), (5 / 8 + 4 / 7) / 2)


def test_warmup_poly_schedule() -> None:
    assert warmup_poly(0, 100, 10, 0.9) == 0.1
    assert warmup_poly(9, 100, 10, 0.9) == 1.0
    assert warmup_poly(10, 100, 10, 0.9) == 1.0
    assert 0 < warmup_poly(55, 100, 10, 0.9) < 1
    assert warmup_poly(100, 100, 10, 0.9) == 0.0
