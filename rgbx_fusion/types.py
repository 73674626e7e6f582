"""Small shared types: the sample contract and the encoder feature spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt


class Sample(TypedDict):
    """One item returned by every dataset, before transforms.

    Convention:
        ``rgb`` is H×W×3 uint8 in RGB order; ``aux`` is H×W×Ca float32 (depth in
        metres, 0 = missing); ``mask`` is H×W int64 with ``ignore_index`` (255)
        for unlabelled pixels; ``meta`` holds at least ``name`` and may hold
        camera intrinsics (``K``, 3×3) and alignment ground truth.
    """

    rgb: npt.NDArray[np.uint8]
    aux: npt.NDArray[np.float32]
    mask: npt.NDArray[np.int64]
    meta: dict[str, Any]


@dataclass(frozen=True)
class FeatureSpec:
    """Channels and stride (relative to the input) of every encoder stage.

    >>> FeatureSpec(channels=(64, 128), reductions=(4, 8)).num_stages
    2
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.reductions):
            raise ValueError(
                f"FeatureSpec needs one reduction per stage, got {len(self.channels)} channel "
                f"entries and {len(self.reductions)} reductions"
            )

    @property
    def num_stages(self) -> int:
        return len(self.channels)
