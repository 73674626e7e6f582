"""Aligners behind the :class:`AlignBase` contract.

``ALIGNERS`` maps a short name to each class; it exists for listings and the
comparison harness only. Configs name classes by ``class_path``.
"""

from rgbx_fusion.models.align.affine import AffineAlign, HomographyAlign
from rgbx_fusion.models.align.base import AlignBase, IdentityAlign
from rgbx_fusion.models.align.correlation import CorrelationAlign
from rgbx_fusion.models.align.deform import DeformableAlign
from rgbx_fusion.models.align.flow import FlowAlign
from rgbx_fusion.models.align.reproject import DepthReprojection
from rgbx_fusion.models.align.tps import TPSAlign

ALIGNERS: dict[str, type[AlignBase]] = {
    "identity": IdentityAlign,
    "affine": AffineAlign,
    "homography": HomographyAlign,
    "tps": TPSAlign,
    "flow": FlowAlign,
    "reproject": DepthReprojection,
    "deform": DeformableAlign,
    "correlation": CorrelationAlign,
}

__all__ = [
    "ALIGNERS",
    "AffineAlign",
    "AlignBase",
    "CorrelationAlign",
    "DeformableAlign",
    "DepthReprojection",
    "FlowAlign",
    "HomographyAlign",
    "IdentityAlign",
    "TPSAlign",
]
