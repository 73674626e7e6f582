"""Contract shared by every decoder.

A decoder turns the encoder's feature pyramid into one map at the finest level;
the segmenter adds the classifier and the upsampling to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn


class DecoderBase(nn.Module):
    """Decode a feature pyramid, finest level first, into one map at the finest level.

    Subclasses call ``super().__init__(in_channels, out_channels)`` before building
    their layers, set :attr:`summary` (one line, shown by ``rgbx-fusion list
    decoders``) and write their equations in the class docstring.

    Args:
        in_channels: channels of every encoder level, finest first (an encoder's
            ``feature_spec.channels``).
        out_channels: channels of the decoded map, read by the segmenter's classifier.

    Attributes:
        in_channels: the levels' channels as a tuple of ints.
        out_channels: channels of the output.

    Shape:
        features: [(B, in_channels[i], H_i, W_i)], finest first -> (B, out_channels, H_0, W_0)
    """

    summary: ClassVar[str] = ""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one feature level")
        if out_channels <= 0:
            raise ValueError(
                f"{type(self).__name__}: out_channels must be positive, got {out_channels}"
            )
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = int(out_channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_features(self, features: Sequence[Tensor]) -> None:
        """Raise a clear error when the decoder gets features it was not built for.

        Args:
            features: the encoder features, finest first.

        Raises:
            ValueError: wrong number of levels, wrong channel count, or a level that
                is not an NCHW tensor.
        """
        name = type(self).__name__
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"{name} was built for {len(self.in_channels)} feature levels {self.in_channels} "
                f"but got {len(features)}; build it from the encoder's feature_spec.channels"
            )
        for i, (f, c) in enumerate(zip(features, self.in_channels, strict=True)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(
                    f"{name}: level {i} should be (B, {c}, H, W) (NCHW), got {tuple(f.shape)}; "
                    "check the encoder's feature_spec and that features are NCHW, finest first"
                )

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
