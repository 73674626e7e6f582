"""Parameter-light fusions: element-wise add, concat + projection, weighted sum, max."""

from __future__ import annotations

from torch import Tensor

from rgbx_fusion.models.fusion.base import FusionBase, check_pair


class AddFusion(FusionBase):
    """Element-wise sum.

    Equation: ``Z = X_rgb + X_aux``.
    """

    summary = "element-wise sum of the two streams (no parameters)"

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        check_pair(self, x_rgb, x_aux, self.channels)
        return x_rgb + x_aux
