"""MiT (SegFormer) encoders built from timm's PVTv2, and the official MiT weights.

MiT-B0…B5 are timm's :class:`~timm.models.pvt_v2.PyramidVisionTransformerV2`
with MiT's depths, widths, heads and spatial-reduction ratios and an MLP ratio
of 4 at every stage (PVTv2 uses 8, 8, 4, 4). timm's norms already have MiT's
epsilons: 1e-5 for the overlapping patch embedding and the spatial-reduction
norm (``nn.LayerNorm``), 1e-6 for the block and stage norms (timm's
``LayerNorm``). Importing this module registers ``mit_b0`` … ``mit_b5`` with
timm, so every encoder of the toolkit accepts ``backbone: mit_b2``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import Tensor, nn

from rgbx_fusion.errors import (
    CheckpointError,
    ConfigError,
    OfflineWeightsError,
)
from rgbx_fusion.models.state_dict import (
    StateDict,
    check_keys,
    read_state_dict,
    unwrap_state_dict,
)


@dataclass(frozen=True)
class MiTSpec:
    """Shape of one MiT variant (SegFormer, Xie et al. 2021)."""

    depths: tuple[int, int, int, int]
    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4

    def timm_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`PyramidVisionTransformerV2` that build this variant."""
        return {
            "depths": self.depths,
            "embed_dims": self.embed_dims,
            "num_heads": self.num_heads,
            "sr_ratios": self.sr_ratios,
            "mlp_ratios": (float(self.mlp_ratio),) * 4,
            "qkv_bias": True,
        }


_WIDE = (64, 128, 320, 512)
#: The six MiT variants by name.
MIT_SPECS: dict[str, MiTSpec] = {
    "b0": MiTSpec((2, 2, 2, 2), (32, 64, 160, 256)),
    "b1": MiTSpec((2, 2, 2, 2), _WIDE),
    "b2": MiTSpec((3, 4, 6, 3), _WIDE),
    "b3": MiTSpec((3, 4, 18, 3), _WIDE),
    "b4": MiTSpec((3, 8, 27, 3), _WIDE),
    "b5": MiTSpec((3, 6, 40, 3), _WIDE),
}


def normalize_variant(variant: str) -> str:
    """``"mit_b2"``, ``"B2"`` or ``"b2"`` → ``"b2"``; anything else is a :class:`ConfigError`."""
    name = variant.lower().removeprefix("mit_").removeprefix("mit-")
    if name not in MIT_SPECS:
        raise ConfigError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_SPECS)}")
    return name


def create_mit(variant: str, **kwargs: Any) -> PyramidVisionTransformerV2:
    """A randomly initialised MiT as a timm PVTv2 (``kwargs`` override, e.g. ``num_classes=0``)."""
    spec = MIT_SPECS[normalize_variant(variant)]
    return PyramidVisionTransformerV2(**{**spec.timm_kwargs(), **kwargs})


# ---- key mapping ------------------------------------------------------------------------


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
        model: a :func:`create_mit` model to load into; without a classifier
            (``num_classes=0``) the file's ``head.*`` is left out.

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


def weights_file_kwargs(
    path: str | Path, kwargs: Mapping[str, Any], backbone: str, aux_backbone: str | None = None
) -> dict[str, Any]:
    """``timm.create_model`` arguments that load ``path`` into ``backbone`` (both streams).

    The file goes through timm's ``pretrained_cfg_overlay``, so the model's own
    checkpoint filter runs (for ``mit_b*``: :func:`mit_checkpoint_filter`).
    """
    if aux_backbone not in (None, backbone):
        raise ConfigError(
            f"backbone_weights is one file for both streams, but the aux stream is "
            f"{aux_backbone!r} and the rgb stream {backbone!r}; use the same backbone, or pass "
            "per-stream files through backbone_kwargs"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"backbone_weights: {p} does not exist")
    overlay = {**dict(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(p)}
    return {**kwargs, "pretrained_cfg_overlay": overlay}


# ---- timm registration --------------------------------------------------------------------


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


def _create_timm_mit(variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file") and not overlay.get("state_dict"):
        raise OfflineWeightsError(
            f"timm has no download for {variant}: get SegFormer's ImageNet file "
            f"({variant}.pth) yourself and set backbone_weights: path/to/{variant}.pth "
            f"(or backbone_kwargs: {{pretrained_cfg_overlay: {{file: path/to/{variant}.pth}}}})"
        )
    spec = MIT_SPECS[variant.removeprefix("mit_")]
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        PyramidVisionTransformerV2,
        variant,
        pretrained,
        pretrained_filter_fn=mit_checkpoint_filter,
        feature_cfg={"flatten_sequential": True, "out_indices": out_indices},
        **{**spec.timm_kwargs(), **kwargs},
    )


def _cfg() -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": False,
    }


default_cfgs = generate_default_cfgs({f"mit_{v}": _cfg() for v in MIT_SPECS})


@register_model
def mit_b0(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B0 (SegFormer) on timm's PVTv2: depths 2-2-2-2, widths 32-64-160-256."""
    return _create_timm_mit("mit_b0", pretrained, **kwargs)


@register_model
def mit_b1(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B1: depths 2-2-2-2, widths 64-128-320-512."""
    return _create_timm_mit("mit_b1", pretrained, **kwargs)


@register_model
def mit_b2(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B2: depths 3-4-6-3, widths 64-128-320-512."""
    return _create_timm_mit("mit_b2", pretrained, **kwargs)


@register_model
def mit_b3(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B3: depths 3-4-18-3, widths 64-128-320-512."""
    return _create_timm_mit("mit_b3", pretrained, **kwargs)


@register_model
def mit_b4(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B4: depths 3-8-27-3, widths 64-128-320-512."""
    return _create_timm_mit("mit_b4", pretrained, **kwargs)


@register_model
def mit_b5(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B5: depths 3-6-40-3, widths 64-128-320-512."""
    return _create_timm_mit("mit_b5", pretrained, **kwargs)


__all__ = [
    "MIT_SPECS",
    "MiTSpec",
    "check_keys",
    "convert_mit_state_dict",
    "create_mit",
    "detect_mit_variant",
    "load_mit",
    "mit_key_map",
    "mit_shapes",
    "read_state_dict",
]
