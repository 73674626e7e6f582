"""Released CMX checkpoints → rgbx-fusion networks and checkpoints.

CMX (Zhang et al.) = two MiT streams, a feature rectification module (FRM)
after every stage fed back to both streams, a feature fusion module (FFM) per
stage feeding an all-MLP decoder. In rgbx-fusion that is an
:class:`~rgbx_fusion.models.segmenter.RGBXSegmenter` with ``backbone: mit_bX``,
``rectify: FeatureRectify``, ``feedback: true``, ``fusion: CMXFusion`` (heads
1, 2, 5, 8) and ``decoder: MLPDecoder`` (embed dim 256 for B0, 512 otherwise);
:func:`cmx_network_config` writes that configuration.

Key mapping (official CMX ``EncoderDecoder`` names, ``i`` = 1…4 the stage,
``s = i - 1``; MiT keys inside a stream as in :mod:`rgbx_fusion.models.convert.mit`,
``T(k)`` = the timm name of MiT key ``k``, placed in the stream's stage
segment: ``patch_embed.*`` → ``segments.0.patch_embed.*``, ``stages.{s}.*`` →
``segments.{s}.stages_{s}.*``)::

    backbone.{patch_embed,block,norm}{i}…           encoder.rgb.segments…T(k)
    backbone.extra_{patch_embed,block,norm}{i}…     encoder.aux.segments…T(k)
    backbone.FRMs.{s}.channel_weights.mlp.{0,2}.*   rectifiers.{s}.channel_weights.mlp.{0,2}.*
    backbone.FRMs.{s}.spatial_weights.mlp.{0,2}.*   rectifiers.{s}.spatial_weights.mlp.{0,2}.*
    backbone.FFMs.{s}.cross.*                       fusions.{s}.cross.*
        (channel_proj1/2, cross_attn.kv1/kv2, end_proj1/2, norm1/2)
    backbone.FFMs.{s}.channel_emb.*                 fusions.{s}.channel_emb.*
        (residual, channel_embed.{0,1,3,4}, norm)
    decode_head.linear_c{i}.proj.*                  decoder.linear_c{i}.proj.*
    decode_head.linear_fuse.0.weight                decoder.linear_fuse.conv.weight
    decode_head.linear_fuse.0.bias                  decoder.linear_fuse.bn.running_mean (folded)
    decode_head.linear_fuse.1.*                     decoder.linear_fuse.bn.*
    decode_head.linear_pred.*                       head.1.*

The fuse convolution's bias is folded into the BatchNorm that follows it
(``BN(Wx + b)`` with mean ``μ`` equals ``BN(Wx)`` with mean ``μ - b``), exact
in evaluation; in training, batch statistics cancel the bias anyway.
``num_batches_tracked`` counters are optional (they carry no weights). Every
other key of the file must be in the table and every table key in the file,
with the right shape, or :class:`~rgbx_fusion.errors.WeightsMismatchError`
lists the differences; keys matching ``ignore`` patterns are dropped and
reported, never silently.

Input convention of the released models: both images 3-channel, scaled to
[0, 1] and normalised with the ImageNet mean and std (HHA for NYU Depth v2,
thermal repeated to three channels for MFNet). The checkpoint written by
``rgbx-fusion import cmx`` (:mod:`rgbx_fusion.tasks.imported_checkpoint`) stores that
normalisation as the data module's aux statistics.

Not reproduced: CMX's stochastic-depth rates in stage 2 (each stream uses one
rate for all its blocks there); the imported network uses timm's per-block
rates (``drop_path_rate`` 0.1), which matters only when fine-tuning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import Tensor

from rgbx_fusion.errors import CheckpointError
from rgbx_fusion.models.convert.mit import mit_key_map, resolve_variant
from rgbx_fusion.models.state_dict import check_keys

#: FFM/FRM heads per stage in CMX (the MiT attention heads).
CMX_HEADS = (1, 2, 5, 8)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def decoder_embed_dim(variant: str) -> int:
    """CMX's MLP-decoder width: 256 for MiT-B0, 512 otherwise."""
    return 256 if variant == "b0" else 512


def cmx_network_config(variant: str, embed_dim: int | None = None) -> dict[str, Any]:
    """The ``model.network`` config (``class_path`` + ``init_args``) of a CMX model."""
    cmx = "rgbx_fusion.models.fusion.cmx"
    return {
        "class_path": "rgbx_fusion.models.segmenter.RGBXSegmenter",
        "init_args": {
            "fusion_stage": "mid",
            "backbone": f"mit_{variant}",
            "pretrained": False,
            "backbone_kwargs": {"drop_path_rate": 0.1},
            "fusion": [
                {"class_path": f"{cmx}.CMXFusion", "init_args": {"num_heads": h}} for h in CMX_HEADS
            ],
            "rectify": {"class_path": f"{cmx}.FeatureRectify"},
            "feedback": True,
            "decoder": {
                "class_path": "rgbx_fusion.models.decoders.mlp.MLPDecoder",
                # one Dropout2d(0.1) before the classifier, as in CMX: the segmenter's
                "init_args": {"channels": embed_dim or decoder_embed_dim(variant), "dropout": 0.0},
            },
            "dropout": 0.1,
        },
    }


def _segment_key(timm_key: str) -> str:
    """timm PVTv2 key → key inside a :class:`StagedBackbone` cut into four stages."""
    if timm_key.startswith("patch_embed."):
        return f"segments.0.{timm_key}"
    m = re.match(r"stages\.(\d)\.(.*)", timm_key)
    if m is None:  # pragma: no cover - mit_key_map yields only these two forms
        raise CheckpointError(f"unexpected MiT key {timm_key!r}")
    s = m.group(1)
    return f"segments.{s}.stages_{s}.{m.group(2)}"


def _wb(src: str, dst: str) -> list[tuple[str, str]]:
    return [(f"{src}.weight", f"{dst}.weight"), (f"{src}.bias", f"{dst}.bias")]


def cmx_key_map(variant: str) -> dict[str, str]:
    """Every official CMX key of ``variant`` → its rgbx-fusion segmenter key.

    The fuse-conv bias ``decode_head.linear_fuse.0.bias`` maps to the BN's
    ``running_mean`` (folded, see the module docstring).
    """
    pairs: list[tuple[str, str]] = []
    for src, dst in mit_key_map(variant, head=False).items():
        pairs.append((f"backbone.{src}", f"encoder.rgb.{_segment_key(dst)}"))
        pairs.append((f"backbone.extra_{src}", f"encoder.aux.{_segment_key(dst)}"))
    for s in range(4):
        frm, ffm = f"FRMs.{s}", f"FFMs.{s}"
        for part in ("channel_weights", "spatial_weights"):
            for j in (0, 2):
                name = f"{part}.mlp.{j}"
                pairs += _wb(f"backbone.{frm}.{name}", f"rectifiers.{s}.{name}")
        names = ["cross.channel_proj1", "cross.channel_proj2", "cross.end_proj1"]
        names += ["cross.end_proj2", "cross.norm1", "cross.norm2"]
        names += [f"channel_emb.channel_embed.{j}" for j in (0, 1, 3)]
        for name in names:
            pairs += _wb(f"backbone.{ffm}.{name}", f"fusions.{s}.{name}")
        for name in ("cross.cross_attn.kv1", "cross.cross_attn.kv2", "channel_emb.residual"):
            pairs.append((f"backbone.{ffm}.{name}.weight", f"fusions.{s}.{name}.weight"))
        for bn in ("channel_emb.channel_embed.4", "channel_emb.norm"):
            pairs += [(f"backbone.{ffm}.{bn}.{t}", f"fusions.{s}.{bn}.{t}") for t in _BN]
    for i in range(1, 5):
        pairs += _wb(f"decode_head.linear_c{i}.proj", f"decoder.linear_c{i}.proj")
    pairs.append(("decode_head.linear_fuse.0.weight", "decoder.linear_fuse.conv.weight"))
    pairs.append(("decode_head.linear_fuse.0.bias", "decoder.linear_fuse.bn.running_mean"))
    pairs += [(f"decode_head.linear_fuse.1.{t}", f"decoder.linear_fuse.bn.{t}") for t in _BN]
    pairs += _wb("decode_head.linear_pred", "head.1")
    return dict(pairs)


@dataclass
class CMXConversion:
    """The result of :func:`convert_cmx_state_dict`."""

    variant: str
    num_classes: int
    embed_dim: int
    state_dict: dict[str, Tensor]
    network: dict[str, Any]
    ignored: list[str] = field(default_factory=list)


def _strip_module(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel adds to every key."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def convert_cmx_state_dict(
    state_dict: Mapping[str, Tensor],
    variant: str | None = None,
    ignore: Sequence[str] = (),
) -> CMXConversion:
    """Map an official CMX state dict onto an rgbx-fusion :class:`RGBXSegmenter`.

    Args:
        state_dict: the model weights of a released CMX checkpoint.
        variant: MiT variant ``b0`` … ``b5``; ``None`` detects it from the shapes.
        ignore: regular expressions of keys to drop before checking (reported in
            :attr:`CMXConversion.ignored`).

    Returns:
        The converted segmenter state dict (no ``net.`` prefix) and its network config.

    Raises:
        WeightsMismatchError: missing, unexpected or mis-shaped keys.
        CheckpointError: not a CMX state dict at all.
    """
    sd = _strip_module(state_dict)
    patterns = [re.compile(p) for p in ignore]
    ignored = [k for k in sd if any(p.search(k) for p in patterns)]
    sd = {k: v for k, v in sd.items() if k not in ignored}
    for key in ("decode_head.linear_pred.weight", "decode_head.linear_c1.proj.weight"):
        if key not in sd:
            raise CheckpointError(
                f"no {key!r}: not a CMX (dual MiT + MLP decoder) state dict "
                f"(first keys: {list(sd)[:5]})"
            )
    name, what = resolve_variant(sd, variant, prefix="backbone.")
    num_classes = int(sd["decode_head.linear_pred.weight"].shape[0])
    embed = int(sd["decode_head.linear_c1.proj.weight"].shape[0])
    network = cmx_network_config(name, embed)
    net = build_cmx_network(name, num_classes, embed)
    target = net.state_dict()
    table = cmx_key_map(name)
    expected = {
        src: (target[dst].shape if not src.endswith("linear_fuse.0.bias") else (embed,))
        for src, dst in table.items()
    }
    optional = {k for k in expected if k.endswith("num_batches_tracked") and k not in sd}
    for k in optional:
        expected.pop(k)
    check_keys(expected, sd, f"CMX {what}")
    converted = {dst: sd[src] for src, dst in table.items() if src in sd}
    bias = sd["decode_head.linear_fuse.0.bias"]
    converted["decoder.linear_fuse.bn.running_mean"] = (
        sd["decode_head.linear_fuse.1.running_mean"] - bias
    )
    for k in optional:
        converted[table[k]] = target[table[k]]
    net.load_state_dict(converted, strict=True)  # a last check; the file's dtypes are kept
    return CMXConversion(name, num_classes, embed, converted, network, ignored)


def build_cmx_network(variant: str, num_classes: int, embed_dim: int | None = None) -> Any:
    """The :class:`RGBXSegmenter` that :func:`cmx_network_config` describes (random weights)."""
    from rgbx_fusion.models.decoders.mlp import MLPDecoder
    from rgbx_fusion.models.fusion.cmx import CMXFusion, FeatureRectify
    from rgbx_fusion.models.segmenter import RGBXSegmenter

    args = cmx_network_config(variant, embed_dim)["init_args"]
    return RGBXSegmenter(
        num_classes,
        3,
        fusion_stage="mid",
        backbone=args["backbone"],
        pretrained=False,
        backbone_kwargs=args["backbone_kwargs"],
        fusion=[partial(CMXFusion, num_heads=h) for h in CMX_HEADS],
        rectify=FeatureRectify,
        feedback=True,
        decoder=partial(MLPDecoder, **args["decoder"]["init_args"]),
        dropout=args["dropout"],
    )


__all__ = [
    "CMX_HEADS",
    "CMXConversion",
    "build_cmx_network",
    "cmx_key_map",
    "cmx_network_config",
    "convert_cmx_state_dict",
    "decoder_embed_dim",
]
