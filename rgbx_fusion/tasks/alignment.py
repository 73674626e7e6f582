"""AlignmentTask: train an aligner without labels, by undoing known random warps of aux.

Every training batch of registered RGB-X pairs (any dataset, the usual data module) gets a
random warp of its aux image, drawn on the fly and therefore known: a similarity (shift,
rotation, scale about the centre; optionally perspective terms) and optionally a random
smooth flow. The aligner sees ``(rgb, warped aux)`` and is trained to predict the
displacement that undoes the warp, with the mean end-point error (EPE) as the loss. No
segmentation label is read.

Convention (as :func:`~rgbx_fusion.alignment_report.flow_from_matrix`): the warped aux is
``aux_w(q) = aux(M⁻¹ q)`` for a drawn ``aux_from_rgb`` matrix ``M``, so the aligner must sample
``aux_w`` at ``M p``: its target displacement is ``M p - p``. Missing aux (0) stays missing
(nearest-neighbour resampling, or bilinear that is 0 wherever a missing pixel takes part);
where the warp samples outside the frame the image is mirrored in (``outside``).

Validation and test draw warps from a fixed seed (the same warps every epoch) and log
``<split>/epe``, ``<split>/epe_identity`` (the EPE of doing nothing) and
``<split>/epe_unwarped`` (the motion the aligner puts on the registered pair itself, which
should be 0: an aligner that reads the warp from anything but the images' content moves
it), in pixels of the evaluated images. On data whose samples carry a ground-truth
``aux_from_rgb`` in ``meta`` (the misregistered synthetic data), the stored misregistration
is measured instead of a random one. ``rgbx-fusion fit --config
configs/align/synthetic_depth.yaml`` trains one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from rgbx_fusion.console import console
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.align.base import AlignBase
from rgbx_fusion.models.align.correlation import CorrelationAlign, matrix_flow
from rgbx_fusion.tasks.guards import checkpoint_metadata
from rgbx_fusion.tasks.known_warps import (
    endpoint_errors,
    inverse_target,
    random_margins,
    random_matrices,
    random_smooth_flow,
    reflect_inside,
    warp_nearest,
    warp_valid_bilinear,
)
from rgbx_fusion.tasks.optim import adamw
from rgbx_fusion.tasks.segmentation import warmup_poly

#: Builds the aligner: ``aligner(rgb_channels, aux_channels)``; in configs a ``class_path``.
AlignerFactory = Callable[[int, int], AlignBase]


class AlignmentTask(pl.LightningModule):
    """Self-supervised training of an aligner on registered pairs warped by known transforms.

    Args:
        aligner: factory ``(rgb_channels, aux_channels) -> AlignBase`` (a ``class_path`` in
            configs; default :class:`~rgbx_fusion.models.align.correlation.CorrelationAlign`).
            It must offer ``displacement(rgb, aux)`` (every aligner here does); an aligner
            with ``displacements`` (one flow per coarse-to-fine level) is supervised at every
            level.
        aux_channels: linked from the data.
        max_shift: largest random shift per axis, in pixels of the training images.
        max_rotation: largest random rotation, degrees.
        max_scale: largest random scale change (0.12 = ±12 %).
        max_perspective: largest random perspective term (units of ``1 / max(H, W)``).
        flow_magnitude: largest value of an extra random smooth flow, pixels (0: none; for
            dense aligners).
        flow_grid: lattice size of that smooth flow.
        warps_per_image: each training image is used this many times per batch, each with its
            own warp (data loading is the slow part; the aligner is cheap).
        aux_interpolation: ``nearest`` (depth: never mixes values across edges) or
            ``bilinear`` (0 where a missing pixel takes part).
        outside: what a warped aux shows where it samples outside the frame: ``zeros``
            (missing) or ``reflect`` (the image mirrored at its edges). With ``zeros`` the
            band of missing pixels along the frame edges gives the warp away, and an aligner
            on weakly structured pairs (thermal at night) learns to read that band instead of
            matching the images; ``reflect`` leaves only the images to match.
        random_margin: largest width, pixels, of a band of missing pixels put along each
            side of every warped aux (each side its own uniform width, independent of the
            warp), so that the aligner meets missing frame edges in training without their
            telling the warp (0: none). Training only: validation and test warps have none.
        loss: ``epe`` (mean end-point error) or ``l1`` (mean absolute flow difference).
        level_weight: weight of the coarser levels' EPE (deep supervision; 0: final only).
        align_loss_weight: weight of the aligner's ``regularization()``.
        lr, weight_decay, warmup_fraction, poly_power: AdamW with warm-up + poly decay.
        val_seed: seed of the validation and test warps.
        truth_size: ``(H, W)`` in which stored ``aux_from_rgb`` matrices act; ``None`` reads
            the size of the split's first image.
    """

    #: What ``ModelCheckpoint`` keeps by default for this task (read by the experiment).
    checkpoint_monitor: ClassVar[tuple[str, str]] = ("val/epe", "min")

    def __init__(
        self,
        aligner: AlignerFactory = CorrelationAlign,
        aux_channels: int = 1,
        max_shift: float = 10.0,
        max_rotation: float = 8.0,
        max_scale: float = 0.12,
        max_perspective: float = 0.0,
        flow_magnitude: float = 0.0,
        flow_grid: int = 4,
        warps_per_image: int = 1,
        aux_interpolation: Literal["nearest", "bilinear"] = "nearest",
        outside: Literal["zeros", "reflect"] = "reflect",
        random_margin: float = 0.0,
        loss: Literal["epe", "l1"] = "epe",
        level_weight: float = 0.5,
        align_loss_weight: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.02,
        poly_power: float = 0.9,
        val_seed: int = 0,
        truth_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["aligner"])
        if aux_interpolation not in ("nearest", "bilinear"):
            raise ConfigError(f"aux_interpolation must be nearest or bilinear: {aux_interpolation}")
        if outside not in ("zeros", "reflect"):
            raise ConfigError(f"outside must be 'zeros' or 'reflect', got {outside!r}")
        if random_margin < 0:
            raise ConfigError(f"random_margin must be ≥ 0 pixels, got {random_margin}")
        if loss not in ("epe", "l1"):
            raise ConfigError(f"loss must be 'epe' or 'l1', got {loss!r}")
        if warps_per_image < 1:
            raise ConfigError(f"warps_per_image must be ≥ 1, got {warps_per_image}")
        self.aligner = aligner(3, aux_channels)
        if not callable(getattr(self.aligner, "displacement", None)):
            raise ConfigError(f"{type(self.aligner).__name__} has no displacement(rgb, aux)")
        self.run_config: str | None = None  # the CLI's resolved config, saved in checkpoints
        self._native: dict[str, tuple[int, int]] = {}
        self._sums: dict[str, list[float]] = {}

    @property
    def _hp(self) -> Any:
        return self.hparams

    def forward(self, rgb: Tensor, aux: Tensor) -> tuple[Tensor, Tensor]:
        out: tuple[Tensor, Tensor] = self.aligner(rgb, aux)
        return out

    # ---- known warps ------------------------------------------------------------------------
    def make_pair(
        self, aux: Tensor, generator: torch.Generator | None = None, margins: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Warp ``aux`` by random known transforms (``margins``: add the ``random_margin``
        bands of training).

        Returns:
            the warped aux, the target displacement (what the aligner must apply) and the
            ``aux_from_rgb`` matrices drawn.

        Shape:
            aux: (B, C, H, W) -> ((B, C, H, W), (B, 2, H, W), (B, 3, 3))
        """
        hp = self._hp
        b, _, h, w = aux.shape
        mats = random_matrices(
            b, (h, w), hp.max_shift, hp.max_rotation, hp.max_scale, hp.max_perspective, generator
        )
        extra = None
        if hp.flow_magnitude > 0:
            extra = random_smooth_flow(b, (h, w), hp.flow_magnitude, hp.flow_grid, generator)
            extra = extra.to(aux.device, aux.dtype)
        matrix = mats.to(aux.device)
        # the warp that makes aux_w(q) = aux(M⁻¹ q + g(q))
        sample_at = matrix_flow(torch.linalg.inv(matrix), h, w).to(aux.dtype)
        if extra is not None:
            sample_at = sample_at + extra
        if hp.outside == "reflect":
            sample_at = reflect_inside(sample_at)
        warp = warp_nearest if hp.aux_interpolation == "nearest" else warp_valid_bilinear
        warped = warp(aux, sample_at)
        if margins and hp.random_margin > 0:
            mask = random_margins(b, (h, w), float(hp.random_margin), generator)
            warped = warped * mask.to(warped)
        target = inverse_target(matrix, None if extra is None else extra.double(), (h, w))
        return warped, target.to(aux.dtype), mats

    def _flows(self, rgb: Tensor, aux: Tensor) -> list[Tensor]:
        many: Any = getattr(self.aligner, "displacements", None)
        one: Any = self.aligner.displacement
        flows: list[Tensor] = many(rgb, aux) if callable(many) else [one(rgb, aux)]
        return [f.expand(rgb.shape[0], -1, -1, -1) for f in flows]

    def _distance(self, flow: Tensor, target: Tensor) -> Tensor:
        if self._hp.loss == "l1":
            return (flow - target).abs().sum(1).mean()
        return endpoint_errors(flow, target).mean()

    # ---- steps ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        rgb, aux = batch["rgb"], batch["aux"]
        k = self._hp.warps_per_image
        if k > 1:
            rgb, aux = rgb.repeat(k, 1, 1, 1), aux.repeat(k, 1, 1, 1)
        warped, target, _ = self.make_pair(aux)
        flows = self._flows(rgb, warped)
        final = self._distance(flows[-1], target)
        loss = final
        if len(flows) > 1 and self._hp.level_weight > 0:
            coarse = torch.stack([self._distance(f, target) for f in flows[:-1]]).mean()
            loss = loss + self._hp.level_weight * coarse
        reg = self.aligner.regularization()
        if reg is not None:
            loss = loss + self._hp.align_loss_weight * reg
            self.log("train/reg", reg, batch_size=rgb.shape[0])
        bs = rgb.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        with torch.no_grad():
            epe = endpoint_errors(flows[-1], target).mean()
        self.log("train/epe", epe, prog_bar=True, batch_size=bs)
        return loss

    def _native_size(self, split: str) -> tuple[int, int]:
        if self._hp.truth_size is not None:
            h, w = self._hp.truth_size
            return int(h), int(w)
        if split not in self._native:
            dm: Any = self.trainer.datamodule  # type: ignore[attr-defined]
            name = dm.splits.get(split, split) if hasattr(dm, "splits") else split
            shape = dm.base_dataset(name)[0]["rgb"].shape
            self._native[split] = (int(shape[0]), int(shape[1]))
        return self._native[split]

    def _targets(
        self, split: str, batch: dict[str, Any], batch_idx: int
    ) -> tuple[Tensor, Tensor, bool]:
        """The aux to align and the displacement that aligns it: the stored truth when every
        sample has one, else a seeded random warp."""
        aux = batch["aux"]
        metas = batch.get("meta") or []
        truths = [m.get("aux_from_rgb") if isinstance(m, dict) else None for m in metas]
        if truths and all(t is not None for t in truths):
            from rgbx_fusion.alignment_report import flow_from_matrix

            matrix = torch.tensor(truths, dtype=torch.float64).view(-1, 3, 3)
            flow = flow_from_matrix(matrix, self._native_size(split), tuple(aux.shape[-2:]))
            return aux, flow.to(aux.device, aux.dtype), True
        generator = torch.Generator().manual_seed(self._hp.val_seed * 100_003 + batch_idx)
        warped, target, _ = self.make_pair(aux, generator, margins=False)
        return warped, target, False

    def _eval_step(self, split: str, batch: dict[str, Any], batch_idx: int) -> None:
        aux, target, truth = self._targets(split, batch, batch_idx)
        flow = self._flows(batch["rgb"], aux)[-1]
        epe = endpoint_errors(flow, target)
        none = endpoint_errors(torch.zeros_like(target), target)
        sums = self._sums.setdefault(split, [0.0] * 5)
        sums[0] += float(epe.sum())
        sums[1] += float(none.sum())
        sums[2] += float(epe.shape[0])
        sums[3] += float(truth) * epe.shape[0]
        if not truth:  # the registered pair itself: an aligner that matches leaves it alone
            still = self._flows(batch["rgb"], batch["aux"])[-1]
            sums[4] += float(endpoint_errors(still, torch.zeros_like(still)).sum())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def _eval_epoch_end(self, split: str) -> None:
        sums = torch.tensor(self._sums.pop(split, [0.0] * 5), dtype=torch.float64)
        if sums[2] == 0:
            return
        if self.trainer.world_size > 1:
            gathered = self.all_gather(sums)
            assert isinstance(gathered, Tensor)
            sums = gathered.reshape(-1, 5).sum(0)
        epe, none = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        self.log(f"{split}/epe", epe, prog_bar=True)
        self.log(f"{split}/epe_identity", none)
        self.log(f"{split}/truth_fraction", float(sums[3] / sums[2]))
        self.last_scores = {split: {"epe": epe, "epe_identity": none}}
        unwarped = sums[2] - sums[3]
        if unwarped > 0:
            still = float(sums[4] / unwarped)
            self.log(f"{split}/epe_unwarped", still)
            self.last_scores[split]["epe_unwarped"] = still
        state = self.trainer.state.fn if self._trainer is not None else None
        if state in ("validate", "test") and self.trainer.is_global_zero:
            against = "the stored aux_from_rgb" if sums[3] == sums[2] else "seeded random warps"
            console.print(
                f"{split} EPE {epe:.3f} px (doing nothing: {none:.3f} px) over "
                f"{int(sums[2])} images, against {against}"
            )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rgbx_fusion"] = checkpoint_metadata([], self.run_config)

    def configure_optimizers(self) -> Any:
        decay: list[nn.Parameter] = []
        plain: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim > 1 and name.endswith(".weight") else plain).append(p)
        hp = self._hp
        opt = adamw(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": plain, "weight_decay": 0.0},
            ],
            lr=hp.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_fraction * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_poly(step, total, warmup, hp.poly_power)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
