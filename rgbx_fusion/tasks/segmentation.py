"""SegmentationTask: the LightningModule that trains and evaluates an RGB-X network."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor, nn

from rgbx_fusion.console import console
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.models.tta import describe_mode, multiscale_probabilities, parse_scales
from rgbx_fusion.tasks.guards import (
    NonFiniteGuard,
    check_checkpoint_fits,
    checkpoint_metadata,
    report_nonfinite,
)
from rgbx_fusion.tasks.metrics import SegmentationMetrics, iou_table
from rgbx_fusion.tasks.optim import adamw

#: Builds the network: ``network(num_classes, aux_channels)``, or for a multi-modality
#: dataset ``network(num_classes, modalities)`` (a ``MultiModalSegmenter``). In configs
#: this is a ``class_path`` (default :class:`RGBXSegmenter`) whose first two parameters
#: are filled from the data.
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
        num_classes, aux_channels, ignore_index, class_names, modalities: linked from the
            data (``modalities``: name → channels of a multi-modality dataset, else None).
        lr: peak learning rate. weight_decay: AdamW weight decay.
        warmup_fraction: share of the total steps spent warming up.
        poly_power: exponent of the poly decay.
        align_loss_weight: weight of the aligners' regularisation losses.
        aux_loss_weight: weight of the cross-entropy of the network's auxiliary heads (see
            ``RGBXSegmenter(aux_head_channels=...)``), their logits upsampled bilinearly to
            the labels.
        align_lr_scale: learning-rate multiplier of the aligners' parameters. A global
            transform is a handful of numbers that each move by about ``lr`` per AdamW step,
            so at the backbone's rate a shift of several pixels takes thousands of steps;
            10 is a good start. Aligners' free transform parameters get no weight decay.
        nonfinite: what a NaN/inf loss or gradient does: ``stop`` raises
            :class:`~rgbx_fusion.errors.NonFiniteError` naming the batch's samples;
            ``skip`` drops that batch's update with a warning; ``off`` does not look
            (the check reads one value from the device per optimizer step). Clip
            gradients with ``--trainer.gradient_clip_val``. Under ``16-mixed`` only the
            loss is checked: the gradient scaler skips steps with inf gradients itself.
        channels_last: convert the network's weights and every input batch to
            ``channels_last`` memory (faster convolutions with bf16/fp16 on GPUs).
        compile: ``torch.compile`` the network in place (``nn.Module.compile``; the
            checkpoint keys stay the same). The first steps are slow while it compiles.
            Sizes are static: each new input shape (a validation size, a smaller last
            batch) compiles once more, up to torch's recompile limit, after which
            that shape runs eagerly. Symbolic sizes would compile once for all shapes,
            but Inductor fails to lower timm's MiT backbones with them.
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
        aux_loss_weight: float = 0.4,
        align_lr_scale: float = 1.0,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        channels_last: bool = False,
        compile: bool = False,
        modalities: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        # A network *factory* is not data: an experiment built from a config records the
        # network's config instead (rgbx_fusion.experiment.build).
        self.save_hyperparameters(ignore=["network"])
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names for num_classes={num_classes}; "
                "link both from the data"
            )
        if modalities:
            self.net = network(num_classes, modalities)  # type: ignore[arg-type]
        else:
            self.net = network(num_classes, aux_channels)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile(dynamic=False)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        self.metrics = nn.ModuleDict(
            {s: SegmentationMetrics(num_classes, ignore_index) for s in ("val", "test")}
        )
        self.test_scales: tuple[float, ...] = (1.0,)
        self.test_flip = False
        self.nonfinite = nonfinite
        self.run_config: str | None = None  # the CLI's resolved config, saved in checkpoints
        self._guard = NonFiniteGuard()

    def set_test_augmentation(self, scales: Sequence[float] = (1.0,), flip: bool = False) -> None:
        """Evaluate ``test`` on these input scales (and mirror images); see
        :func:`~rgbx_fusion.models.tta.multiscale_probabilities`. The CLI sets it from
        ``--eval.scales 0.5,0.75,1,1.25,1.5 --eval.flip``.
        """
        self.test_scales = parse_scales(list(scales))
        self.test_flip = bool(flip)

    @property
    def test_mode(self) -> str:
        """``"single-scale"`` or e.g. ``"multi-scale 0.5,0.75,1,1.25,1.5 + flip"``."""
        return describe_mode(self.test_scales, self.test_flip)

    @property
    def _hp(self) -> Any:
        return self.hparams

    def metric(self, split: str) -> SegmentationMetrics:
        metric = self.metrics[split]
        assert isinstance(metric, SegmentationMetrics)
        return metric

    def forward(self, rgb: Tensor, aux: Tensor, present: Tensor | None = None) -> Tensor:
        """``present``: (B, M) which modalities a multi-modality batch holds (its network
        skips the others); ``None`` for one aux image, or all present."""
        if self.channels_last:
            rgb = rgb.contiguous(memory_format=torch.channels_last)
            aux = aux.contiguous(memory_format=torch.channels_last)
        out: Tensor = self.net(rgb, aux) if present is None else self.net(rgb, aux, present)
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
        heads = getattr(self.net, "auxiliary_logits", None)
        if callable(heads):
            for name, aux_logits in heads().items():
                up = F.interpolate(
                    aux_logits, size=mask.shape[-2:], mode="bilinear", align_corners=False
                )
                value = F.cross_entropy(up, mask, ignore_index=self.ignore_index)
                parts[name] = value
                total = total + self._hp.get("aux_loss_weight", 0.4) * value
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["rgb"], batch["aux"], batch.get("present"))
        loss, parts = self._loss(logits, batch["mask"])
        bs = batch["rgb"].shape[0]
        if self.nonfinite != "off":  # checked before the optimizer step, without a sync here
            self._guard.add_loss(loss, batch.get("meta"))
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        optimizer = self.optimizers()
        if isinstance(optimizer, LightningOptimizer):  # groups sort the network's first
            self.log("train/lr", float(optimizer.param_groups[0]["lr"]), batch_size=bs)
        for name, value in parts.items():
            if name != "ce":
                self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _eval_step(self, split: str, batch: dict[str, Any]) -> None:
        if split == "test" and (self.test_scales != (1.0,) or self.test_flip):
            self._augmented_test_step(batch)
            return
        logits = self(batch["rgb"], batch["aux"], batch.get("present"))
        loss, _ = self._loss(logits, batch["mask"])
        self.log(f"{split}/loss", loss, batch_size=batch["rgb"].shape[0], sync_dist=True)
        self.metric(split).update(logits.argmax(1), batch["mask"])

    def _augmented_test_step(self, batch: dict[str, Any]) -> None:
        probs = multiscale_probabilities(
            self.net,
            batch["rgb"],
            batch["aux"],
            self.test_scales,
            self.test_flip,
            batch.get("present"),
        )
        mask = batch["mask"]
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), mask, ignore_index=self.ignore_index)
        self.log("test/loss", loss, batch_size=mask.shape[0], sync_dist=True)
        self.metric("test").update(probs.argmax(1), mask)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        logits = self(batch["rgb"], batch["aux"], batch.get("present"))
        return {"pred": logits.argmax(1), "meta": batch["meta"], "rgb": batch["rgb"]}

    def _eval_epoch_end(self, split: str) -> None:
        metric = self.metric(split)
        scores = metric.scores()
        self.log(f"{split}/mIoU", scores["mIoU"].float(), prog_bar=True)
        self.log(f"{split}/pixel_acc", scores["pixel_acc"].float())
        if split == "test":  # which evaluation mode produced these numbers
            self.log("test/eval_scales", float(len(self.test_scales)))
            self.log("test/eval_flip", float(self.test_flip))
        for name, value in zip(self.class_names, scores["iou"].tolist(), strict=True):
            if not math.isnan(value):
                self.log(f"{split}/iou/{name}", value)
        self.last_scores = {split: {k: v.detach().cpu() for k, v in scores.items()}}
        state = self.trainer.state.fn if self._trainer is not None else None
        if state in ("validate", "test") and self.trainer.is_global_zero:
            mode = f" ({self.test_mode})" if split == "test" else ""
            console.print(iou_table(f"{split} per-class IoU{mode}", self.class_names, scores))
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.nonfinite == "off":
            return
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer else None
        bad = self._guard.check(self, gradients=scaler is None)
        if bad is not None:
            report_nonfinite(self, bad[0], bad[1], self._guard.checked_meta)
            optimizer.zero_grad(set_to_none=True)  # "skip": no parameter moves

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rgbx_fusion"] = checkpoint_metadata(self.class_names, self.run_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(self, checkpoint, f"checkpoint {path}" if path else "the checkpoint")

    def configure_optimizers(self) -> Any:
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        aligner_params = {
            id(p)
            for module in self.net.modules()
            if isinstance(module, AlignBase)
            for p in module.parameters()
        }
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            aligner = id(p) in aligner_params
            # Free transform parameters (an aligner's delta, flow or control-point grids) are
            # not weights to shrink: decay would pull the transform back to the identity.
            free = aligner and not name.endswith(".weight")
            decays = not (p.ndim <= 1 or name.endswith(".bias") or free)
            groups.setdefault((aligner, decays), []).append(p)
        lr, scale = self._hp.lr, self._hp.get("align_lr_scale", 1.0)
        opt = adamw(
            [
                {
                    "params": params,
                    "lr": lr * scale if aligner else lr,
                    "weight_decay": self._hp.weight_decay if decays else 0.0,
                }
                for (aligner, decays), params in sorted(groups.items())
            ],
            lr=lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self._hp.warmup_fraction * total)
        power = self._hp.poly_power
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_poly(step, total, warmup, power)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
