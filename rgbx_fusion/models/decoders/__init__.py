"""Decoders: a feature pyramid (finest first) in, one map at the finest level out.

Contract: ``Decoder(in_channels: Sequence[int], **options)`` with an
``out_channels`` attribute and a one-line ``summary``;
``forward(features) -> (B, out_channels, H_0, W_0)``. The segmenter adds the
1×1 classifier and the upsampling to the input size. ``DECODERS`` maps a short
name to each class, for listings only; configs name classes by ``class_path``.
"""

from torch import nn

from rgbx_fusion.models.decoders.aspp import ASPPDecoder
from rgbx_fusion.models.decoders.fapn import FaPNDecoder
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.decoders.mlp import MLPDecoder

DECODERS: dict[str, type[nn.Module]] = {
    "fpn": FPNDecoder,
    "fapn": FaPNDecoder,
    "mlp": MLPDecoder,
    "aspp": ASPPDecoder,
}

__all__ = ["DECODERS", "ASPPDecoder", "FPNDecoder", "FaPNDecoder", "MLPDecoder"]
