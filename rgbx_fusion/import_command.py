"""``rgbx-fusion import cmx``: a released CMX model as an rgbx-fusion checkpoint.

::

    rgbx-fusion import cmx --ckpt NYUDV2_CMX+B2.pth --out cmx_b2.ckpt [--variant b2]
    rgbx-fusion test --config configs/nyudv2_cmx_b2.yaml --ckpt_path cmx_b2.ckpt \\
        --eval.scales 0.5,0.75,1,1.25,1.5 --eval.flip

The key mapping and the conventions are documented in
:mod:`rgbx_fusion.models.cmx_checkpoint`. The written checkpoint holds the
converted weights (``state_dict``, prefixed ``net.``), the full network
configuration as ``hyper_parameters`` (the form the CLI saves, so ``test
--ckpt_path`` and :func:`rgbx_fusion.load_model` rebuild the same network),
CMX's input normalisation as the data module's aux statistics, and where it
came from (``rgbx_fusion_source``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rgbx_fusion.errors import CheckpointError
from rgbx_fusion.models.cmx_checkpoint import CMXConversion, convert_cmx_state_dict
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


def _import_cmx(args: argparse.Namespace) -> int:
    from rich.console import Console

    names = None
    if args.class_names:
        names = [n.strip() for n in Path(args.class_names).read_text().splitlines() if n.strip()]
    conv = convert_cmx_checkpoint(
        args.ckpt, args.out, args.variant, names, args.ignore_index, args.ignore or ()
    )
    params = sum(v.numel() for k, v in conv.state_dict.items() if v.is_floating_point())
    console = Console()
    console.print(
        f"CMX MiT-{conv.variant.upper()}: {conv.num_classes} classes, decoder width "
        f"{conv.embed_dim}, {len(conv.state_dict)} tensors ({params / 1e6:.1f} M values) "
        f"written to {args.out}"
    )
    if conv.ignored:
        console.print(f"dropped {len(conv.ignored)} keys matching --ignore: {conv.ignored}")
    console.print(
        "evaluate: rgbx-fusion test --config <data config> "
        f"--ckpt_path {args.out} [--eval.scales 0.5,0.75,1,1.25,1.5 --eval.flip]"
    )
    return 0


def add_import_parser(sub: Any) -> None:
    """Register ``import cmx`` on the toolkit's subcommand parser."""
    imp = sub.add_parser("import", help="convert released checkpoints of other code bases")
    fmt = imp.add_subparsers(dest="format", required=True)
    cmx = fmt.add_parser(
        "cmx", help="a released CMX model (dual MiT + FRM/FFM + MLP decoder) → .ckpt"
    )
    cmx.add_argument("--ckpt", required=True, help="the released .pth file")
    cmx.add_argument("--out", required=True, help="the rgbx-fusion .ckpt to write")
    cmx.add_argument(
        "--variant",
        choices=("b0", "b1", "b2", "b3", "b4", "b5"),
        default=None,
        help="MiT variant (default: detected from the weights' shapes)",
    )
    cmx.add_argument("--class-names", default=None, help="text file, one class name per line")
    cmx.add_argument("--ignore-index", type=int, default=255)
    cmx.add_argument(
        "--ignore",
        action="append",
        help="regular expression of keys to drop (repeatable; dropped keys are listed)",
    )
    cmx.set_defaults(func=_import_cmx)


__all__ = ["add_import_parser", "convert_cmx_checkpoint"]
