"""Checkpoint converters: weights released by other projects → this package's networks.

* :mod:`~rgbx_fusion.models.convert.mit`: official MiT (SegFormer) ImageNet weights
  → the timm MiT encoders of :mod:`rgbx_fusion.models.encoders.mit`.
* :mod:`~rgbx_fusion.models.convert.cmx`: released CMX checkpoints → an
  :class:`~rgbx_fusion.models.segmenter.RGBXSegmenter` and its configuration.
"""
