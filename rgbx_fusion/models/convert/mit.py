"""Official MiT (SegFormer) ImageNet weights → timm names (:mod:`~rgbx_fusion.models.encoders.mit`).

Key mapping, official ``mit_bX.pth`` (SegFormer ``mix_transformer.py``) → timm
(``i`` = 1…4 is the stage, ``j`` the block)::

    patch_embed1.{proj,norm}.*          patch_embed.{proj,norm}.*
    patch_embed{i}.{proj,norm}.*        stages.{i-1}.downsample.{proj,norm}.*   (i ≥ 2)
    block{i}.{j}.norm1.*                stages.{i-1}.blocks.{j}.norm1.*
    block{i}.{j}.attn.{q,kv,proj}.*     stages.{i-1}.blocks.{j}.attn.{q,kv,proj}.*
    block{i}.{j}.attn.{sr,norm}.*       stages.{i-1}.blocks.{j}.attn.{sr,norm}.*  (sr ratio > 1)
    block{i}.{j}.norm2.*                stages.{i-1}.blocks.{j}.norm2.*
    block{i}.{j}.mlp.{fc1,fc2}.*        stages.{i-1}.blocks.{j}.mlp.{fc1,fc2}.*
    block{i}.{j}.mlp.dwconv.dwconv.*    stages.{i-1}.blocks.{j}.mlp.dwconv.*
    norm{i}.*                           stages.{i-1}.norm.*
    head.*                              head.*   (ImageNet classifier; dropped by encoders)

Both use one ``kv`` ``Linear(C → 2C)`` (keys first) next to a separate ``q``,
so every tensor is copied unchanged. Loading checks every key and shape and
raises :class:`~rgbx_fusion.errors.WeightsMismatchError` listing the missing,
unexpected and mis-shaped keys; nothing is loaded partially.

Use from a config: ``backbone: mit_b2`` with ``backbone_weights:
path/to/mit_b2.pth`` (both streams), or in Python :func:`load_mit`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import CheckpointError
from rgbx_fusion.models.encoders.mit import MIT_SPECS, create_mit, normalize_variant
from rgbx_fusion.models.state_dict import (
    StateDict,
    check_keys,
    read_state_dict,
    unwrap_state_dict,
)


def _pair(src: str, dst: str) -> list[tuple[str, str]]:
    return [(f"{src}.weight", f"{dst}.weight"), (f"{src}.bias", f"{dst}.bias")]


def mit_key_map(variant: str, head: bool = True) -> dict[str, str]:
    """Every official MiT key of ``variant`` → its timm PVTv2 key, stage by stage.

    Args:
        variant: ``b0`` … ``b5`` (``mit_`` prefix allowed).
        head: include the ImageNet classifier ``head.*``.
    """
    spec = MIT_SPECS[normalize_variant(variant)]
    pairs: list[tuple[str, str]] = []
    for s in range(4):
        i = s + 1
        embed = "patch_embed" if s == 0 else f"stages.{s}.downsample"
        pairs += _pair(f"patch_embed{i}.proj", f"{embed}.proj")
        pairs += _pair(f"patch_embed{i}.norm", f"{embed}.norm")
        for j in range(spec.depths[s]):
            src, dst = f"block{i}.{j}", f"stages.{s}.blocks.{j}"
            names = ["norm1", "attn.q", "attn.kv", "attn.proj"]
            if spec.sr_ratios[s] > 1:
                names += ["attn.sr", "attn.norm"]
            names += ["norm2", "mlp.fc1"]
            for n in names:
                pairs += _pair(f"{src}.{n}", f"{dst}.{n}")
            pairs += _pair(f"{src}.mlp.dwconv.dwconv", f"{dst}.mlp.dwconv")
            pairs += _pair(f"{src}.mlp.fc2", f"{dst}.mlp.fc2")
        pairs += _pair(f"norm{i}", f"stages.{s}.norm")
    if head:
        pairs += _pair("head", "head")
    return dict(pairs)


def detect_mit_variant(state_dict: Mapping[str, Tensor], prefix: str = "") -> str:
    """Which MiT variant official-named weights belong to, from widths and block counts.

    Args:
        state_dict: official-named weights (``patch_embed1.proj.weight``, ``block3.17…``).
        prefix: prefix of the MiT keys (``"backbone."`` in a CMX checkpoint).
    """
    key = f"{prefix}patch_embed1.proj.weight"
    if key not in state_dict:
        raise CheckpointError(
            f"no {key!r} in the weights: not an official MiT/SegFormer state dict "
            f"(first keys: {list(state_dict)[:5]})"
        )
    width = int(state_dict[key].shape[0])
    pattern = re.compile(rf"^{re.escape(prefix)}block(\d)\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for k in state_dict:
        m = pattern.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    depths = tuple(len(blocks.get(i, ())) for i in range(1, 5))
    for name, spec in MIT_SPECS.items():
        if spec.depths == depths and spec.embed_dims[0] == width:
            return name
    raise CheckpointError(
        f"weights with stage-1 width {width} and blocks per stage {depths} match no MiT variant "
        f"({', '.join(f'{n}: {s.embed_dims[0]}, {s.depths}' for n, s in MIT_SPECS.items())})"
    )


def convert_mit_state_dict(
    state_dict: Mapping[str, Tensor], variant: str | None = None, prefix: str = ""
) -> StateDict:
    """Official MiT weights → timm PVTv2 names (see the module docstring).

    Args:
        state_dict: official-named weights; ``head.*`` is optional.
        variant: expected variant; ``None`` detects it from the shapes.
        prefix: prefix of the MiT keys to convert; keys without it are not looked at.

    Raises:
        WeightsMismatchError: a key of the variant is missing, a key under ``prefix``
            is not part of it, or a tensor has the wrong shape.
    """
    name, what = resolve_variant(state_dict, variant, prefix)
    mine = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    table = mit_key_map(name, head="head.weight" in mine)
    check_keys(mit_shapes(name, head="head.weight" in mine), mine, what)
    return {table[k]: v for k, v in mine.items()}


def resolve_variant(
    state_dict: Mapping[str, Tensor], variant: str | None, prefix: str = ""
) -> tuple[str, str]:
    """The variant to convert as (``variant`` or the detected one) and a label for errors.

    A forced variant that the shapes contradict is not an error here: the key and
    shape check that follows lists every difference, and the label names the
    variant the shapes point to.
    """
    if variant is None:
        name = detect_mit_variant(state_dict, prefix)
        return name, f"MiT-{name.upper()} weights"
    name = normalize_variant(variant)
    try:
        found: str | None = detect_mit_variant(state_dict, prefix)
    except CheckpointError:
        found = None
    hint = "" if found is None or found == name else f" (shaped like MiT-{found.upper()})"
    return name, f"weights read as MiT-{name.upper()}{hint}"


def mit_shapes(variant: str, head: bool = True, in_chans: int = 3) -> dict[str, torch.Size]:
    """Official key → tensor shape of a MiT variant (1000-class head)."""
    with torch.device("meta"):
        model = create_mit(variant, in_chans=in_chans)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return {src: shapes[dst] for src, dst in mit_key_map(variant, head).items()}


def load_mit(
    path: str | Path, variant: str | None = None, model: nn.Module | None = None
) -> nn.Module:
    """Load an official ``mit_bX.pth`` into a timm MiT (built when ``model`` is ``None``).

    Args:
        path: the official ImageNet weights file (or a dict holding them under
            ``state_dict`` / ``model``).
        variant: ``b0`` … ``b5``; ``None`` detects it from the shapes.
        model: a :func:`~rgbx_fusion.models.encoders.mit.create_mit` model to load into;
            without a classifier (``num_classes=0``) the file's ``head.*`` is left out.

    Returns:
        The model, with every tensor loaded (strict).

    Example:
        >>> encoder = load_mit("mit_b2.pth", "b2")  # doctest: +SKIP
    """
    raw = read_state_dict(path)
    converted = convert_mit_state_dict(raw, variant)
    if model is None:
        name = variant or detect_mit_variant(raw)
        model = create_mit(name, num_classes=1000 if "head.weight" in converted else 0)
    target = model.state_dict()
    if "head.weight" not in target:
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    check_keys({k: v.shape for k, v in target.items()}, converted, f"{path}")
    model.load_state_dict(converted, strict=True)
    return model


def mit_checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> StateDict:
    """timm ``pretrained_filter_fn``: official (or already converted) MiT weights → ``model``.

    The input convolution may differ in input channels (timm adapts it after this
    filter); the classifier is dropped when the model has none.
    """
    sd = unwrap_state_dict(state_dict)
    if "patch_embed1.proj.weight" in sd:
        sd = convert_mit_state_dict(sd, _model_variant(model))
    target = model.state_dict()
    if "head.weight" not in target:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    check_keys(
        {k: v.shape for k, v in target.items()},
        sd,
        f"MiT weights for {type(model).__name__}",
        skip_shape=("patch_embed.proj.weight",),
    )
    return sd


def _model_variant(model: nn.Module) -> str | None:
    arch = str(getattr(model, "pretrained_cfg", {}).get("architecture", ""))
    return arch.removeprefix("mit_") if arch.removeprefix("mit_") in MIT_SPECS else None


__all__ = [
    "convert_mit_state_dict",
    "detect_mit_variant",
    "load_mit",
    "mit_checkpoint_filter",
    "mit_key_map",
    "mit_shapes",
    "resolve_variant",
]
