"""MiT (SegFormer) encoders on timm's PVTv2, registered with timm as ``mit_b0`` … ``mit_b5``.

MiT-B0…B5 are timm's :class:`~timm.models.pvt_v2.PyramidVisionTransformerV2`
with MiT's depths, widths, heads and spatial-reduction ratios and an MLP ratio
of 4 at every stage (PVTv2 uses 8, 8, 4, 4). timm's norms already have MiT's
epsilons: 1e-5 for the overlapping patch embedding and the spatial-reduction
norm (``nn.LayerNorm``), 1e-6 for the block and stage norms (timm's
``LayerNorm``). Importing this module (which :mod:`rgbx_fusion.models.encoders`
does) registers the six names with timm, so every encoder of the toolkit accepts
``backbone: mit_b2``.

timm has no download for them: the official ImageNet files (``mit_bX.pth``) load
through ``backbone_weights`` or timm's ``pretrained_cfg_overlay``, converted on
the way by :func:`rgbx_fusion.models.convert.mit.mit_checkpoint_filter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError, OfflineWeightsError


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
    """``"mit_b2"``, ``"B2"`` or ``"b2"`` → ``"b2"``; anything else is a :class:`ConfigError`.

    >>> normalize_variant("MiT-B2")
    'b2'
    """
    name = variant.lower().removeprefix("mit_").removeprefix("mit-")
    if name not in MIT_SPECS:
        raise ConfigError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_SPECS)}")
    return name


def create_mit(variant: str, **kwargs: Any) -> PyramidVisionTransformerV2:
    """A randomly initialised MiT as a timm PVTv2 (``kwargs`` override, e.g. ``num_classes=0``)."""
    spec = MIT_SPECS[normalize_variant(variant)]
    return PyramidVisionTransformerV2(**{**spec.timm_kwargs(), **kwargs})


def _checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn`` of every ``mit_b*``: official weights → timm names."""
    # Imported here: the converter builds its shape tables from this module's specs.
    from rgbx_fusion.models.convert.mit import mit_checkpoint_filter

    return mit_checkpoint_filter(state_dict, model)


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
        pretrained_filter_fn=_checkpoint_filter,
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


__all__ = ["MIT_SPECS", "MiTSpec", "create_mit", "normalize_variant"]
