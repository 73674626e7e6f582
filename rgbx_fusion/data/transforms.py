"""Augmentation pipelines (albumentations) that keep rgb, aux and mask registered.

Geometric transforms run on all three targets: rgb with bilinear resampling,
aux and mask with nearest resampling (depth must not be interpolated across
object edges or into missing pixels). Photometric transforms touch rgb only.
No transform pads, so no fill value can leak into aux or mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from rgbx_fusion.types import Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_train_transform(
    size: Sequence[int] | None,
    scale: Sequence[float] = (0.5, 1.0),
    hflip: bool = True,
    photometric: bool = True,
) -> A.Compose:
    """Random resized crop (+ flip) on all targets, colour jitter on rgb only.

    Args:
        size: output ``(height, width)``; ``None`` keeps the input size (no crop).
        scale: range of the crop area as a fraction of the image.
        hflip: random horizontal flip.
        photometric: brightness/contrast/saturation jitter and blur on rgb (no hue
            change: hue can be what separates classes).
    """
    ops: list[Any] = []
    if size is not None:
        h, w = int(size[0]), int(size[1])
        ratio = (w / h * 0.85, w / h / 0.85)
        ops.append(
            A.RandomResizedCrop(
                size=(h, w),
                scale=(float(scale[0]), float(scale[1])),
                ratio=ratio,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if photometric:
        ops.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.8))
        ops.append(A.GaussianBlur(blur_limit=(3, 3), p=0.1))
    return A.Compose(ops, additional_targets={"aux": "mask"})


def build_eval_transform(size: Sequence[int] | None) -> A.Compose:
    """Optional resize for evaluation (bilinear rgb, nearest aux/mask)."""
    ops: list[Any] = []
    if size is not None:
        ops.append(
            A.Resize(
                int(size[0]),
                int(size[1]),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    return A.Compose(ops, additional_targets={"aux": "mask"})


def apply_transform(transform: A.Compose, sample: Sample) -> Sample:
    """Run an albumentations pipeline on a sample, keeping all targets together."""
    out = transform(image=sample["rgb"], mask=sample["mask"], aux=sample["aux"])
    aux = out["aux"]
    if aux.ndim == 2:  # albumentations drops a trailing singleton channel on some paths
        aux = aux[..., None]
    return Sample(rgb=out["image"], aux=aux, mask=out["mask"], meta=sample["meta"])


class Normalizer:
    """Turn a transformed sample into normalised CHW tensors.

    Convention:
        rgb → float in [0, 1], then ``(x - rgb_mean) / rgb_std``. aux → ``(x -
        aux_mean) / aux_std`` on valid pixels; missing pixels (aux == 0 in every
        channel) stay exactly 0 so the network sees one unambiguous value. With
        ``aux_groups`` (the channel count of each modality of a multi-modality
        dataset) "every channel" is every channel of that pixel's modality.
    """

    def __init__(
        self,
        rgb_mean: Sequence[float] = IMAGENET_MEAN,
        rgb_std: Sequence[float] = IMAGENET_STD,
        aux_mean: Sequence[float] = (0.0,),
        aux_std: Sequence[float] = (1.0,),
        aux_groups: Sequence[int] | None = None,
    ) -> None:
        self.aux_groups = list(aux_groups) if aux_groups else None
        self.rgb_mean = torch.tensor(rgb_mean, dtype=torch.float32).view(-1, 1, 1)
        self.rgb_std = torch.tensor(rgb_std, dtype=torch.float32).view(-1, 1, 1)
        self.aux_mean = torch.tensor(aux_mean, dtype=torch.float32).view(-1, 1, 1)
        self.aux_std = torch.tensor(aux_std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: Sample) -> dict[str, Any]:
        rgb = torch.from_numpy(np.ascontiguousarray(sample["rgb"])).permute(2, 0, 1).float() / 255
        aux = torch.from_numpy(np.ascontiguousarray(sample["aux"], dtype=np.float32))
        aux = aux.permute(2, 0, 1)
        if self.aux_groups is None:
            valid = (aux != 0).any(dim=0, keepdim=True)
        else:
            valid = torch.cat(
                [
                    (part != 0).any(dim=0, keepdim=True).expand_as(part)
                    for part in aux.split(self.aux_groups, dim=0)
                ]
            )
        aux = torch.where(valid, (aux - self.aux_mean) / self.aux_std, torch.zeros_like(aux))
        return {
            "rgb": (rgb - self.rgb_mean) / self.rgb_std,
            "aux": aux,
            "mask": torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=np.int64)),
            "meta": sample["meta"],
        }

    def denormalize_rgb(self, rgb: Tensor) -> Tensor:
        """Inverse of the rgb normalisation, → uint8-range float in [0, 255]."""
        mean, std = self.rgb_mean.to(rgb), self.rgb_std.to(rgb)
        return ((rgb * std + mean) * 255).clamp(0, 255)
