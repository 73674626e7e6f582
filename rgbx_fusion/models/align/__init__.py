"""Aligners behind the :class:`AlignBase` contract.

``ALIGNERS`` maps a short name to each class; it exists for listings and the
comparison harness only. Configs name classes by ``class_path``.
"""

from rgbx_fusion.models.align.base import AlignBase, IdentityAlign

ALIGNERS: dict[str, type[AlignBase]] = {
    "identity": IdentityAlign,
}

__all__ = ["ALIGNERS", "AlignBase", "IdentityAlign"]
