"""What :class:`MultiModalSegmenter` accepts: declared modalities, checked inputs, and the
single input of early fusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.fusion.multi import drop_absent


def check_modalities(modalities: Mapping[str, int]) -> dict[str, int]:
    """The declared modalities as an ordered ``dict``, or a :class:`ConfigError`.

    >>> check_modalities({"depth": 1, "thermal": 1})
    {'depth': 1, 'thermal': 1}
    """
    if isinstance(modalities, int):  # built for a dataset of one aux image
        raise ConfigError(
            f"MultiModalSegmenter needs a dataset of several named aux modalities (e.g. "
            f"modality: depth,thermal); the data has one aux image of {modalities} "
            "channel(s): use RGBXSegmenter, or set the dataset's modality to the ones the "
            "model was made for"
        )
    if not isinstance(modalities, Mapping) or not modalities:
        raise ConfigError(
            "modalities must name at least one aux modality with its channels, e.g. "
            f"{{'depth': 1, 'thermal': 1}}; got {modalities!r}"
        )
    out: dict[str, int] = {}
    for name, channels in modalities.items():
        if not isinstance(name, str) or not name.isidentifier() or name == "rgb":
            raise ConfigError(
                f"modality names must be Python identifiers other than 'rgb' (they become "
                f"parameter names), got {name!r}"
            )
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(
                f"modality {name!r}: channels must be a positive int, got {channels!r}"
            )
        out[name] = channels
    return out


def check_named(option: Any, modalities: Mapping[str, int], what: str) -> None:
    """Raise a :class:`ConfigError` when a per-modality dict names an undeclared modality."""
    if isinstance(option, Mapping):
        unknown = [k for k in option if k not in modalities]
        if unknown:
            raise ConfigError(
                f"{what} names {unknown}, which are not declared modalities {list(modalities)}"
            )


def split_aux(modalities: Mapping[str, int], aux: Tensor) -> dict[str, Tensor]:
    """A (B, ΣC, H, W) tensor of every modality's channels, concatenated in the declared
    order (the data module's batches), → the dict ``forward`` takes.

    Raises:
        ConfigError: the channel count is not the declared total.
    """
    total = sum(modalities.values())
    if aux.dim() != 4 or aux.shape[1] != total:
        raise ConfigError(
            f"aux as one tensor must be (B, {total}, H, W): the channels of "
            f"{dict(modalities)} in that order, got {tuple(aux.shape)}"
        )
    return dict(zip(modalities, aux.split(list(modalities.values()), dim=1), strict=True))


def check_inputs(
    modalities: Mapping[str, int],
    rgb: Tensor,
    aux: Mapping[str, Tensor],
    present: Tensor | None,
) -> Tensor | None:
    """Check the forward inputs against the declaration; return ``present`` as bool.

    Only shapes are read, never values, so the checks are free under ``torch.export``.

    Raises:
        ConfigError: naming the modality and what was expected and found.

    Shape:
        rgb: (B, 3, H, W); aux[name]: (B, C_name, H, W); present: (B, M) -> (B, M) bool
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ConfigError(f"rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
    if not isinstance(aux, Mapping):
        raise ConfigError(
            f"aux must be a dict name -> (B, C, H, W) tensor for {list(modalities)}, got a "
            f"{type(aux).__name__}"
        )
    missing = [k for k in modalities if k not in aux]
    extra = [k for k in aux if k not in modalities]
    if missing or extra:
        parts = ([f"missing modality {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"undeclared modality {', '.join(map(repr, extra))}"] if extra else []
        )
        raise ConfigError(
            f"aux has {'; '.join(parts)} (declared: {list(modalities)}); give a tensor for "
            "every declared modality and mark absent ones in present"
        )
    batch, size = rgb.shape[0], tuple(rgb.shape[-2:])
    for name, channels in modalities.items():
        x = aux[name]
        if x.dim() != 4:
            raise ConfigError(f"aux[{name!r}] must be (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ConfigError(
                f"aux[{name!r}] has {x.shape[1]} channels, expected {channels} as declared "
                f"in modalities"
            )
        if tuple(x.shape[-2:]) != size or x.shape[0] != batch:
            raise ConfigError(
                f"aux[{name!r}] is {tuple(x.shape)}, expected batch {batch} and size {size} "
                "like rgb; resize or register it onto the rgb grid first"
            )
    if present is None:
        return None
    expected = (batch, len(modalities))
    if tuple(present.shape) != expected:
        raise ConfigError(
            f"present must be (B, M) = {expected} in the order {list(modalities)}, got "
            f"{tuple(present.shape)}"
        )
    return present if present.dtype == torch.bool else present != 0


class EarlyInput(nn.Module):
    """The one encoder input of early fusion, with absent modalities made explicit.

    ``separate``: ``[rgb; x_1 | f_1; …; x_M | f_M; a_1; …; a_M]`` with ``3 + Σ C_m + M``
    channels: an absent modality's channels hold its learned fill ``f_m`` (a constant per
    channel, starting at 0) and its *absence channel* ``a_m`` is 1 (0 where present).

    ``shared``: every modality is mapped to ``S`` channels by its own 1×1 stem, and the
    present ones are averaged: ``[rgb; mean_{m present} stem_m(x_m) | f; a_1; …; a_M]``
    (``3 + S + M`` channels; the fill ``f`` where none is present).

    An absence channel is 1 for "absent" so that an all-present batch sees the one-aux
    network's input plus zero channels: the first conv's filters on those channels learn
    a per-modality "missing" response, and the fill replaces values that are never read.

    Shape:
        rgb: (B, 3, H, W); aux[name]: (B, C_name, H, W); present: (B, M)
        -> (B, in_channels, H, W)
    """

    def __init__(self, modalities: Mapping[str, int], shared_channels: int | None = None) -> None:
        super().__init__()
        self.names = list(modalities)
        self.shared = shared_channels is not None
        if shared_channels is None:
            self.fills = nn.ParameterDict(
                {name: nn.Parameter(torch.zeros(c)) for name, c in modalities.items()}
            )
            width = sum(modalities.values())
        else:
            self.stems = nn.ModuleDict(
                {name: nn.Conv2d(c, shared_channels, 1) for name, c in modalities.items()}
            )
            self.fill = nn.Parameter(torch.zeros(shared_channels))
            width = shared_channels
        self.in_channels = 3 + width + len(self.names)

    def forward(self, rgb: Tensor, aux: Mapping[str, Tensor], present: Tensor | None) -> Tensor:
        b, (h, w) = rgb.shape[0], rgb.shape[-2:]
        if present is None:
            present = torch.ones(b, len(self.names), dtype=torch.bool, device=rgb.device)
        absence = (~present).to(rgb.dtype)[..., None, None].expand(-1, -1, h, w)
        if not self.shared:
            parts = [
                drop_absent(aux[n], present[:, j], self.fills[n].to(rgb.dtype).view(1, -1, 1, 1))
                for j, n in enumerate(self.names)
            ]
            return torch.cat([rgb, *parts, absence], dim=1)
        weights = present.to(rgb.dtype)
        count = weights.sum(dim=1).clamp_min(1.0)
        hub: Tensor | None = None
        for j, n in enumerate(self.names):
            term = drop_absent(self.stems[n](aux[n]), present[:, j])
            term = term * (weights[:, j] / count).view(-1, 1, 1, 1)
            hub = term if hub is None else hub + term
        assert hub is not None
        fill = self.fill.to(rgb.dtype).view(1, -1, 1, 1)
        return torch.cat([rgb, drop_absent(hub, present.any(dim=1), fill), absence], dim=1)


__all__ = ["EarlyInput", "check_inputs", "check_modalities", "check_named"]
