"""RGB plus any number of named aux modalities, with a per-sample presence mask.

:class:`MultiModalSegmenter` (:mod:`~rgbx_fusion.models.multimodal.segmenter`) takes
``(rgb, aux: dict name -> tensor, present: (B, M) bool)``; absent modalities are
skipped explicitly, never fed as zeros. Its parts: the aux streams and presence-aware
execution (:mod:`~rgbx_fusion.models.multimodal.streams`), input checks and the early
fusion input (:mod:`~rgbx_fusion.models.multimodal.inputs`), late fusion
(:mod:`~rgbx_fusion.models.multimodal.late`), and the mapping of a one-aux
:class:`~rgbx_fusion.models.segmenter.RGBXSegmenter`'s weights onto a one-modality
network (:mod:`~rgbx_fusion.models.multimodal.warm_start`). The N-stream fusions live
with the other fusions, in :mod:`rgbx_fusion.models.fusion.multi` and
:mod:`rgbx_fusion.models.fusion.multi_pairwise`.
"""

from rgbx_fusion.models.multimodal.segmenter import (
    AbsentMode,
    MultiFusionStage,
    MultiModalSegmenter,
)
from rgbx_fusion.models.multimodal.warm_start import load_rgbx_weights, rgbx_state_dict

__all__ = [
    "AbsentMode",
    "MultiFusionStage",
    "MultiModalSegmenter",
    "load_rgbx_weights",
    "rgbx_state_dict",
]
