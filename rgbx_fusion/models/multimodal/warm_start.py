"""Weights of a one-aux :class:`RGBXSegmenter` in a one-modality :class:`MultiModalSegmenter`.

With ``modalities={name: Ca}`` and separate aux encoders, the N-modality network has the
one-aux network's parts under other names (and, for early fusion, one more input
channel: the absence channel). :func:`rgbx_state_dict` renames the keys; the parts that
only handle absent modalities (absence biases, fills, tokens) keep the target's initial
values, and an all-present batch then gives the one-aux network's logits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.fusion.multi_pairwise import PairwiseAggregateFusion, PairwiseEachFusion
from rgbx_fusion.models.multimodal.segmenter import MultiModalSegmenter
from rgbx_fusion.models.state_dict import check_keys

#: Target parameters with no one-aux counterpart: they only act on absent modalities.
PRESENCE_ONLY = re.compile(r"(^|\.)(absent_bias|absent_tokens\..*|fills\.\w+|fill)$")


def _fusion_prefix(net: MultiModalSegmenter, stage: int) -> str:
    fusion = net.fusions[stage]
    if isinstance(fusion, PairwiseEachFusion):
        return f"fusions.{stage}.pairs.0."
    if isinstance(fusion, PairwiseAggregateFusion):
        return f"fusions.{stage}.fusion."
    return f"fusions.{stage}."


def _rename(key: str, net: MultiModalSegmenter, name: str) -> str | None:
    """The target key of one source key (``None``: dropped, the training-only aux head)."""
    fixed = {
        "encoder.rgb.": "rgb_encoder.",
        "encoder.aux.": f"aux.encoders.{name}.",
        "encoder.aux_proj.": f"aux.proj.{name}.",
        "aligners.": f"aligners.{name}.",
        "input_align.": f"input_aligners.{name}.",
        "aux_branch.": f"aux_branches.branches.{name}.",
    }
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if key.startswith("aux_head."):
        return None
    if key.startswith(("rectifiers.", "encoder.aux_stem.", "late.conv.")):
        raise ConfigError(
            f"{key}: rectifiers, shared rgb/aux weights and conv late fusion have no "
            "MultiModalSegmenter counterpart"
        )
    match = re.match(r"fusions\.(\d+)\.(.*)", key)
    if match:
        return _fusion_prefix(net, int(match.group(1))) + match.group(2)
    return key


def rgbx_state_dict(state: Mapping[str, Tensor], net: MultiModalSegmenter) -> dict[str, Tensor]:
    """``state`` (an :class:`RGBXSegmenter`'s) with the keys and shapes of ``net``.

    Early fusion's first convolution gets zero filters on the absence channel; late
    ``weighted`` logits ``a`` become ``[a, 0]`` (``sigmoid(a) = softmax([a, 0])_0``).

    Raises:
        ConfigError: ``net`` has several modalities or a shared aux encoder, or ``state``
            holds parts without a counterpart (rectifiers, shared weights, conv late fusion).
        WeightsMismatchError: the renamed keys or shapes still differ from ``net``'s.
    """
    if len(net.names) != 1 or (net.fusion_stage == "mid" and net.aux_encoder != "separate"):
        raise ConfigError(
            "one-aux weights fit a MultiModalSegmenter with one modality and "
            f"aux_encoder='separate'; got modalities {list(net.names)}, "
            f"aux_encoder={net.aux_encoder!r}"
        )
    name = net.names[0]
    target = net.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = _rename(key, net, name)
        if new is None:
            continue
        if new == "late.logit_weight":
            new, value = "late.logits", torch.stack([value, torch.zeros_like(value)])
        want = target.get(new)
        if (
            want is not None
            and value.dim() == 4
            and want.dim() == 4
            and want.shape[1] > value.shape[1]
            and (want.shape[0], *want.shape[2:]) == (value.shape[0], *value.shape[2:])
        ):  # the early encoder's first conv: zero filters on the absence channel
            pad = value.new_zeros(value.shape[0], want.shape[1] - value.shape[1], *value.shape[2:])
            value = torch.cat([value, pad], dim=1)
        out[new] = value
    for key, value in target.items():
        if key not in out and PRESENCE_ONLY.search(key):
            out[key] = value
    check_keys({k: v.shape for k, v in target.items()}, out, "the RGBXSegmenter weights")
    return out


def load_rgbx_weights(net: MultiModalSegmenter, state: Mapping[str, Tensor]) -> None:
    """Load an :class:`RGBXSegmenter` state dict into a one-modality ``net`` in place."""
    net.load_state_dict(rgbx_state_dict(state, net))


__all__ = ["PRESENCE_ONLY", "load_rgbx_weights", "rgbx_state_dict"]
