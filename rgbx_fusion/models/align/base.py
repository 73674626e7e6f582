"""Contract shared by every aligner.

Alignment answers *where*: it resamples the aux image or aux features onto the
RGB grid before fusion. Fusion (:mod:`rgbx_fusion.models.fusion`) answers *how*.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class AlignBase(nn.Module):
    """Resample aux features (or images) onto the RGB grid.

    Convention:
        aux is warped toward rgb; rgb is never moved. At initialisation every
        learned aligner is the identity (output == input).

    Shape:
        x_rgb: (B, C1, H, W); x_aux: (B, C2, H, W) -> (x_rgb, aux_aligned (B, C2, H, W))
    """

    summary: ClassVar[str] = ""
    _last_displacement: Tensor | None = None  # set by _remember_displacement

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def regularization(self) -> Tensor | None:
        """Regularisation loss of the last forward pass (``None`` when there is none)."""
        return None

    def last_transform(self) -> Tensor | None:
        """The last predicted transform (matrix, grid or offsets) for visualisation."""
        return None

    def last_displacement(self) -> Tensor | None:
        """The displacement field applied by the last forward pass, detached.

        ``None`` before the first forward, for aligners that do not move pixels along a field
        (identity, reprojection) and while compiling or exporting (nothing is stored then).

        Convention:
            Pixels of the map the aligner ran on, channel 0 = x (right), 1 = y (down): the
            aligned aux at ``p`` was sampled at ``p + flow(p)`` (as in
            :func:`~rgbx_fusion.models.align.flow.warp_by_flow`).

        Shape:
            -> (B, 2, h, w)
        """
        return self._last_displacement

    def _remember_displacement(self, flow: Tensor, batch: int) -> None:
        """Keep ``flow`` (detached, expanded to the batch) for :meth:`last_displacement`."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return  # a side effect on the module would break the graph
        self._last_displacement = flow.detach().expand(batch, -1, -1, -1)


class IdentityAlign(AlignBase):
    """No alignment: returns both inputs unchanged."""

    summary = "no alignment (aux is assumed registered)"

    def __init__(self, rgb_channels: int | None = None, aux_channels: int | None = None) -> None:
        super().__init__()

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        return x_rgb, x_aux


def aligner_losses(net: nn.Module) -> dict[str, Tensor]:
    """The regularisation losses every aligner inside ``net`` exposed in the last forward
    pass, keyed ``align/<module name>`` (``align/input`` for ``net`` itself)."""
    losses: dict[str, Tensor] = {}
    for name, module in net.named_modules():
        if isinstance(module, AlignBase):
            reg = module.regularization()
            if reg is not None:
                losses[f"align/{name or 'input'}"] = reg
    return losses
