"""timm-backed encoders: streams run stage by stage, and the MiT family.

:mod:`~rgbx_fusion.models.encoders.staged` cuts any timm ``features_only`` model
into stages (:class:`StagedBackbone`) and pairs two of them for mid fusion
(:class:`DualEncoder`). Importing this package imports
:mod:`~rgbx_fusion.models.encoders.mit`, which registers ``mit_b0`` … ``mit_b5``
with timm, so ``backbone: mit_b2`` works wherever encoders are built.
"""

from rgbx_fusion.models.encoders.mit import MIT_SPECS, MiTSpec, create_mit
from rgbx_fusion.models.encoders.staged import (
    DualEncoder,
    StagedBackbone,
    create_features_model,
    extend_input_channels,
    weights_file_kwargs,
)

__all__ = [
    "MIT_SPECS",
    "DualEncoder",
    "MiTSpec",
    "StagedBackbone",
    "create_features_model",
    "create_mit",
    "extend_input_channels",
    "weights_file_kwargs",
]
