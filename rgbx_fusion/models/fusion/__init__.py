"""Fusion operators behind the :class:`FusionBase` contract.

``FUSIONS`` maps a short name to each class and ``RECTIFIERS`` each
:class:`RectifyBase`; they exist for listings and the comparison harness only.
Configs name classes by ``class_path``. A test keeps both dicts complete.
"""

from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase
from rgbx_fusion.models.fusion.channel_attention import (
    MSCAM,
    AFFFusion,
    CBAMFusion,
    FeatureSelection,
    FSMFusion,
    SEFusion,
    iAFFFusion,
)
from rgbx_fusion.models.fusion.cmx import CMXFusion, FeatureRectify
from rgbx_fusion.models.fusion.cross_attention import CrossAttentionFusion
from rgbx_fusion.models.fusion.non_local import NonLocalFusion
from rgbx_fusion.models.fusion.simple import AddFusion, ConcatFusion, MaxFusion, WeightedSumFusion
from rgbx_fusion.models.fusion.spatial import GatedFusion, SpatialAdaptiveFusion

FUSIONS: dict[str, type[FusionBase]] = {
    "add": AddFusion,
    "concat": ConcatFusion,
    "weighted_sum": WeightedSumFusion,
    "max": MaxFusion,
    "se": SEFusion,
    "cbam": CBAMFusion,
    "aff": AFFFusion,
    "iaff": iAFFFusion,
    "fsm": FSMFusion,
    "spatial_adaptive": SpatialAdaptiveFusion,
    "gated": GatedFusion,
    "cross_attention": CrossAttentionFusion,
    "non_local": NonLocalFusion,
    "cmx": CMXFusion,
}

RECTIFIERS: dict[str, type[RectifyBase]] = {
    "rectify": FeatureRectify,
}

__all__ = [
    "FUSIONS",
    "MSCAM",
    "RECTIFIERS",
    "AFFFusion",
    "AddFusion",
    "CBAMFusion",
    "CMXFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "FSMFusion",
    "FeatureRectify",
    "FeatureSelection",
    "FusionBase",
    "GatedFusion",
    "MaxFusion",
    "NonLocalFusion",
    "RectifyBase",
    "SEFusion",
    "SpatialAdaptiveFusion",
    "WeightedSumFusion",
    "iAFFFusion",
]
