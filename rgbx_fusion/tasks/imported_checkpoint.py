"""Released checkpoints of other code bases written as rgbx-fusion checkpoints (``import``).

::

    rgbx-fusion import cmx --ckpt NYUDV2_CMX+B2.pth --out cmx_b2.ckpt [--variant b2]
    rgbx-fusion test --config configs/nyudv2/base.yaml --config configs/nyudv2/cmx_b2.yaml \\
        --ckpt_path cmx_b2.ckpt
        --eval.scales 0.5,0.75,1,1.25,1.5 --eval.flip

The key mapping and the conventions are documented in
:mod:`rgbx_fusion.models.convert.cmx`. The written checkpoint holds the
converted weights (``state_dict``, prefixed ``net.``), the full network
configuration as ``hyper_parameters`` (the form the CLI saves, so ``test
--ckpt_path`` and :func:`rgbx_fusion.load_model` rebuild the same network),
CMX's input normalisation as the data module's aux statistics, and where it
came from (``rgbx_fusion_source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rgbx_fusion.errors import CheckpointError
from rgbx_fusion.models.convert.cmx import CMXConversion, convert_cmx_state_dict
from rgbx_fusion.models.state_dict import read_state_dict

#: CMX normalises both images (scaled to [0, 1]) with the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def convert_cmx_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    variant: str | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    ignore: Sequence[str] = (),
) -> CMXConversion:
    """Convert a released CMX ``.pth`` into an rgbx-fusion checkpoint at ``out``.

    Args:
        ckpt: the released file (``{"model": state_dict, ...}`` or a plain state dict).
        out: where to write the ``.ckpt``.
        variant: force the MiT variant (default: detected from the shapes).
        class_names: class names to store (default: ``class_0`` …).
        ignore_index: label value the metrics ignore.
        ignore: regular expressions of keys to drop (they are reported, not loaded).

    Raises:
        WeightsMismatchError: the file does not fit the (detected or forced) variant.
        CheckpointError: unreadable or not a CMX file; wrong number of class names.
    """
    import pytorch_lightning as pl

    from rgbx_fusion.inference import full_network_config

    conv = convert_cmx_state_dict(read_state_dict(ckpt), variant, ignore)
    if class_names is not None and len(class_names) != conv.num_classes:
        raise CheckpointError(
            f"{len(class_names)} class names given for a model with {conv.num_classes} classes"
        )
    hparams: dict[str, Any] = {
        "network": full_network_config(conv.network),
        "num_classes": conv.num_classes,
        "aux_channels": 3,
        "ignore_index": ignore_index,
        "class_names": list(class_names) if class_names is not None else None,
    }
    payload = {
        "state_dict": {f"net.{k}": v for k, v in conv.state_dict.items()},
        "hyper_parameters": hparams,
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
        "RGBXDataModule": {"aux_mean": IMAGENET_MEAN, "aux_std": IMAGENET_STD},
        "rgbx_fusion_source": {
            "format": "cmx",
            "file": Path(ckpt).name,
            "variant": conv.variant,
            "ignored_keys": conv.ignored,
        },
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return conv
