"""Late fusion over N branches: the logits of the present branches, averaged or weighted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.fusion.multi import (
    all_present,
    masked_softmax,
    presence_weights,
    weighted_sum,
)
from rgbx_fusion.models.topologies.branch import DecoderFactory, SegmentationBranch, StreamOptions

MultiLateMode = Literal["mean", "weighted"]


class MultiLateFusion(nn.Module):
    """Fuse the logits of N branches, renormalised over the present ones.

    Modes:
        ``mean``: ``Z = (1 / n) Σ_{s present} Z_s``.
        ``weighted``: ``Z_k = Σ_{s present} w_{s,k} Z_{s,k}`` with
        ``w_{·,k} = softmax_{s present}(a_{·,k})``: learned per-class logits ``a`` (N, K),
        starting at zero (the mean).

    With two branches both present these are the one-aux network's ``mean`` and
    ``weighted`` late fusions (its ``sigmoid(a_k)`` is ``softmax([a_k, 0])``).

    Shape:
        logits: N × (B, K, H, W); present: (B, N) -> (B, K, H, W)
    """

    def __init__(self, num_classes: int, num_streams: int, mode: MultiLateMode = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "weighted"):
            raise ConfigError(f"late_fusion must be 'mean' or 'weighted', got {mode!r}")
        self.mode = mode
        self.num_streams = num_streams
        if mode == "weighted":
            self.logits = nn.Parameter(torch.zeros(num_streams, num_classes))

    def forward(self, logits: Sequence[Tensor], present: Tensor | None = None) -> Tensor:
        p = all_present(logits, present)
        dtype = logits[0].dtype
        if self.mode == "mean":
            return weighted_sum(logits, p, presence_weights(p, dtype))
        a = self.logits.to(dtype).unsqueeze(0).expand(p.shape[0], -1, -1)
        return weighted_sum(logits, p, masked_softmax(a, p[..., None], dim=1))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_streams={self.num_streams}"


class AuxBranches(nn.Module):
    """The aux encoder–decoder–classifier branches of late fusion.

    ``separate``: ``branches[name]`` per modality over its own channels. ``shared``: one
    ``branch`` over ``shared_channels`` inputs behind a 1×1 conv ``stems[name]`` per
    modality.

    Shape:
        forward(name, x: (B, C_name, H, W)) -> (B, K, H / r_0, W / r_0)
    """

    def __init__(
        self,
        modalities: Mapping[str, int],
        streams: StreamOptions,
        shared_channels: int | None,
        decoder: DecoderFactory,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.shared = shared_channels is not None
        if shared_channels is None:
            self.branches = nn.ModuleDict(
                {
                    name: SegmentationBranch(
                        streams.stream(c, aux=True), decoder, num_classes, dropout
                    )
                    for name, c in modalities.items()
                }
            )
        else:
            self.stems = nn.ModuleDict(
                {name: nn.Conv2d(c, shared_channels, 1) for name, c in modalities.items()}
            )
            self.branch = SegmentationBranch(
                streams.stream(shared_channels, aux=True), decoder, num_classes, dropout
            )

    def branch_for(self, name: str) -> SegmentationBranch:
        """The branch that runs modality ``name`` (the same one for all when shared)."""
        branch = self.branch if self.shared else self.branches[name]
        assert isinstance(branch, SegmentationBranch)
        return branch

    def forward(self, name: str, x: Tensor) -> Tensor:
        if self.shared:
            x = self.stems[name](x)
        out: Tensor = self.branch_for(name)(x)
        return out


__all__ = ["AuxBranches", "MultiLateFusion", "MultiLateMode"]
