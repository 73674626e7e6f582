"""Decoders behind the :class:`DecoderBase` contract.

A decoder is built as ``Decoder(in_channels: Sequence[int], **options)``, exposes
``out_channels`` and a one-line ``summary``, and maps a feature pyramid (finest
first) to ``(B, out_channels, H_0, W_0)``. The segmenter adds the 1×1 classifier
and the upsampling to the input size. ``DECODERS`` maps a short name to each
class, for listings only; configs name classes by ``class_path``. A test keeps
it complete.
"""

from rgbx_fusion.models.decoders.aspp import ASPPDecoder
from rgbx_fusion.models.decoders.base import DecoderBase
from rgbx_fusion.models.decoders.fapn import FaPNDecoder
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.decoders.mlp import MLPDecoder

DECODERS: dict[str, type[DecoderBase]] = {
    "fpn": FPNDecoder,
    "fapn": FaPNDecoder,
    "mlp": MLPDecoder,
    "aspp": ASPPDecoder,
}

__all__ = ["DECODERS", "ASPPDecoder", "DecoderBase", "FPNDecoder", "FaPNDecoder", "MLPDecoder"]
