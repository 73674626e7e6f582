"""Fusion operators behind the :class:`FusionBase` contract.

``FUSIONS`` maps a short name to each class; it exists for listings and the
comparison harness only. Configs name classes by ``class_path``.
"""

from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase
from rgbx_fusion.models.fusion.simple import AddFusion

FUSIONS: dict[str, type[FusionBase]] = {
    "add": AddFusion,
}

RECTIFIERS: dict[str, type[RectifyBase]] = {}

__all__ = ["FUSIONS", "RECTIFIERS", "AddFusion", "FusionBase", "RectifyBase"]
