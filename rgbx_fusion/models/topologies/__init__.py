"""The ways :class:`~rgbx_fusion.models.segmenter.RGBXSegmenter` joins RGB and aux.

One module per topology, each with a builder that returns the network's parts
by name (the segmenter registers them under those names, which are the keys of
its state dict) and the functions its forward pass needs:

* :mod:`~rgbx_fusion.models.topologies.mid`: two streams aligned, rectified and
  fused stage by stage, one decoder over the fused maps.
* :mod:`~rgbx_fusion.models.topologies.late`: two encoder–decoder branches whose
  logits are fused.
* :mod:`~rgbx_fusion.models.topologies.single`: one stream, over concatenated
  inputs (early fusion) or one modality (the rgb-only and aux-only baselines).

:mod:`~rgbx_fusion.models.topologies.branch` holds what they share: the
backbone options of a stream and the encoder + decoder + classifier branch.
"""
