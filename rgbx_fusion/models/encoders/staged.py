"""timm-backed encoders that can be run one stage at a time.

Mid fusion needs the two streams side by side stage by stage (and CMX-style
feedback needs to replace a stream's tensor between stages), so every timm
``features_only`` model is cut into *segments*, one per returned stage. The
segments reuse timm's own modules: weights, pretrained loading and
``feature_info`` are timm's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from rgbx_fusion.errors import CheckpointError, ConfigError, OfflineWeightsError
from rgbx_fusion.types import FeatureSpec


def create_features_model(name: str, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with clear errors."""
    try:
        return timm.create_model(
            name, features_only=True, pretrained=pretrained, in_chans=in_chans, **kwargs
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Unknown" in str(exc):
            raise ConfigError(
                f"unknown timm model {name!r}; list names with timm.list_models('{name[:4]}*')"
            ) from exc
        raise
    except OSError as exc:  # huggingface_hub / urllib failures are OSError subclasses
        if not pretrained:
            raise
        raise OfflineWeightsError(
            f"could not download pretrained weights for {name!r} ({exc}). This machine looks "
            "offline: set pretrained: false, or pass a local file with "
            "backbone_kwargs: {pretrained_cfg_overlay: {file: /path/to/weights}}"
        ) from exc


def weights_file_kwargs(
    path: str | Path, kwargs: Mapping[str, Any], backbone: str, aux_backbone: str | None = None
) -> dict[str, Any]:
    """``timm.create_model`` arguments that load ``path`` into ``backbone`` (both streams).

    The file goes through timm's ``pretrained_cfg_overlay``, so the model's own
    checkpoint filter runs (for ``mit_b*``, the official-weights conversion of
    :mod:`rgbx_fusion.models.convert.mit`).

    Raises:
        ConfigError: the two streams are different models (one file cannot fit both).
        CheckpointError: ``path`` is not a file.
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


def extend_input_channels(model: nn.Module, in_chans: int) -> None:
    """Grow the first 3-channel convolution of ``model`` to ``in_chans`` inputs, in place.

    The RGB filters are kept as they are, so a pretrained network sees RGB exactly
    as before; every extra channel starts with the mean of the RGB filters (the
    filter a grey image would see). With the extra channels at zero the output is
    unchanged.
    """
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                if in_chans <= 3:
                    return
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    child.stride,  # type: ignore[arg-type]
                    child.padding,  # type: ignore[arg-type]
                    child.dilation,  # type: ignore[arg-type]
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    w = child.weight
                    extra = w.mean(dim=1, keepdim=True).expand(-1, in_chans - 3, -1, -1)
                    new.weight.copy_(torch.cat([w, extra], dim=1))
                    if child.bias is not None and new.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(parent, name, new)
                return
    raise ConfigError(f"{type(model).__name__} has no 3-channel input convolution to extend")


def _segments_from_feature_net(model: Any, keep: Sequence[str]) -> list[nn.Sequential]:
    """Cut a timm FeatureDictNet/FeatureListNet into segments ending at ``keep`` layers."""
    segments: list[nn.Sequential] = []
    current: OrderedDict[str, nn.Module] = OrderedDict()
    wanted = {k.replace(".", "_") for k in keep}
    for name, module in model.items():
        flat = name.replace(".", "_")
        current[flat] = module
        if flat in wanted:
            segments.append(nn.Sequential(current))
            current = OrderedDict()
            if len(segments) == len(keep):
                break
    return segments


def _segments_from_block_net(model: Any, stage_ends: Sequence[int]) -> list[nn.Sequential]:
    """Cut timm's EfficientNet/MobileNetV3 feature nets (stem + ``blocks``) into segments."""
    segments: list[nn.Sequential] = []
    current: OrderedDict[str, nn.Module] = OrderedDict(
        [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
    )
    if isinstance(getattr(model, "act1", None), nn.Module):  # MobileNetV3 keeps act apart
        current["act1"] = model.act1
    ends = sorted(stage_ends)
    if 0 in ends:
        segments.append(nn.Sequential(current))
        current = OrderedDict()
    for i, block in enumerate(model.blocks):
        current[f"blocks_{i}"] = block
        if i + 1 in ends:
            segments.append(nn.Sequential(current))
            current = OrderedDict()
    return segments


class StagedBackbone(nn.Module):
    """A timm ``features_only`` model run stage by stage.

    Args:
        name: timm model name.
        in_chans: input channels.
        pretrained: load timm's pretrained weights (needs network or a local file).
        out_indices: which of timm's feature levels to return; ``None`` takes up to
            four levels with stride ≥ 4 (the usual 1/4 … 1/32 pyramid).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for Swin).

    Shape:
        forward(x: (B, in_chans, H, W)) -> list of (B, C_i, H / r_i, W / r_i), NCHW.
    """

    def __init__(
        self,
        name: str = "resnet18",
        in_chans: int = 3,
        pretrained: bool = False,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # Pretrained weights with more than 3 inputs (early fusion): keep the RGB
        # filters and extend them, instead of timm's cyclic repeat of all channels.
        extend = pretrained and in_chans > 3
        model: Any = create_features_model(name, 3 if extend else in_chans, pretrained, **kwargs)
        if extend:
            extend_input_channels(model, in_chans)
        info = model.feature_info
        reductions = list(info.reduction())
        if out_indices is None:
            candidates = [i for i, r in enumerate(reductions) if r >= 4]
            out_indices = candidates[-4:]
        n_levels = len(reductions)
        if not out_indices or any(i < 0 or i >= n_levels for i in out_indices):
            raise ConfigError(f"{name}: out_indices must lie in [0, {n_levels}), got {out_indices}")
        self.name = name
        self.feature_spec = FeatureSpec(
            channels=tuple(int(info.channels()[i]) for i in out_indices),
            reductions=tuple(int(reductions[i]) for i in out_indices),
        )
        fmt = str(getattr(model, "output_fmt", "NCHW"))
        self.nhwc = fmt.endswith("NHWC")
        if hasattr(model, "return_layers"):
            layer_names = [info.module_name()[i] for i in out_indices]
            segs = _segments_from_feature_net(model, layer_names)
        elif hasattr(model, "blocks") and hasattr(model, "_stage_out_idx"):
            stage_ends = [int(info.info[i]["stage"]) for i in out_indices]
            segs = _segments_from_block_net(model, stage_ends)
        else:
            raise ConfigError(
                f"{name}: timm returns a {type(model).__name__}, which cannot be run stage by "
                "stage; choose a CNN / hierarchical transformer (resnet, convnext, pvt_v2, "
                "swin, efficientnet, mobilenetv3 ...)"
            )
        if len(segs) != len(out_indices):
            raise ConfigError(f"{name}: could not split the model into {len(out_indices)} stages")
        self.segments = nn.ModuleList(segs)

    @property
    def num_stages(self) -> int:
        return len(self.segments)

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        """Run segment ``index`` on the previous segment's native-format output."""
        out: Tensor = self.segments[index](x)
        return out

    def to_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2) if self.nhwc else x

    def from_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1) if self.nhwc else x

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i in range(self.num_stages):
            x = self.forward_stage(i, x)
            feats.append(self.to_nchw(x))
        return feats


class DualEncoder(nn.Module):
    """Two staged streams: RGB and aux (separate or shared weights).

    The aux stream may be a different timm model or width; its features are
    projected to the RGB widths by 1×1 convs so that fusions see equal shapes.

    Args:
        backbone: timm name of the RGB stream.
        aux_channels: channels of the aux input.
        aux_backbone: timm name of the aux stream (``None``: same as ``backbone``).
        pretrained: timm pretrained weights for both streams.
        share_weights: one set of weights for both streams; aux is mapped to 3
            channels by a learned 1×1 conv first.
        out_indices: feature levels (see :class:`StagedBackbone`).
        backbone_kwargs: extra ``timm.create_model`` arguments for both streams.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        aux_channels: int = 1,
        aux_backbone: str | None = None,
        pretrained: bool = False,
        share_weights: bool = False,
        out_indices: Sequence[int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(backbone_kwargs or {})
        self.rgb = StagedBackbone(backbone, 3, pretrained, out_indices, **kwargs)
        if share_weights:
            if aux_backbone not in (None, backbone):
                raise ConfigError("share_weights needs aux_backbone to be empty or equal backbone")
            self.aux: StagedBackbone = self.rgb
            self.aux_stem: nn.Module = nn.Conv2d(aux_channels, 3, 1)
        else:
            self.aux = StagedBackbone(
                aux_backbone or backbone, aux_channels, pretrained, out_indices, **kwargs
            )
            self.aux_stem = nn.Identity()
        self.share_weights = share_weights
        self.feature_spec = self.rgb.feature_spec
        aux_spec = self.aux.feature_spec
        if aux_spec.reductions != self.feature_spec.reductions:
            raise ConfigError(
                f"rgb stream strides {self.feature_spec.reductions} differ from aux stream "
                f"strides {aux_spec.reductions}; choose backbones with the same pyramid"
            )
        self.aux_proj = nn.ModuleList(
            nn.Identity() if ca == cr else nn.Conv2d(ca, cr, 1)
            for ca, cr in zip(aux_spec.channels, self.feature_spec.channels, strict=True)
        )

    @property
    def widths_match(self) -> bool:
        return self.aux.feature_spec.channels == self.feature_spec.channels

    def forward(self, rgb: Tensor, aux: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Both pyramids without fusion (used for benchmarks and baselines)."""
        x_r, x_a = rgb, self.aux_stem(aux)
        out_r, out_a = [], []
        for i in range(self.rgb.num_stages):
            x_r = self.rgb.forward_stage(i, x_r)
            x_a = self.aux.forward_stage(i, x_a)
            out_r.append(self.rgb.to_nchw(x_r))
            out_a.append(self.aux_proj[i](self.aux.to_nchw(x_a)))
        return out_r, out_a


__all__ = [
    "DualEncoder",
    "StagedBackbone",
    "create_features_model",
    "extend_input_channels",
    "weights_file_kwargs",
]
