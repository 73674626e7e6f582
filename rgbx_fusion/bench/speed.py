"""How the benchmark runs a network: precision (Lightning's names: autocast for
``bf16-mixed`` / ``16-mixed``, a gradient scaler for ``16-mixed``) and memory layout."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import ConfigError

#: Lightning's precision names that the benchmark runs, and their autocast dtypes.
PRECISIONS: dict[str, torch.dtype | None] = {
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


@dataclass(frozen=True)
class Speed:
    """How every network runs: ``precision`` (a :data:`PRECISIONS` name, as in
    ``--trainer.precision``) and ``channels_last`` (weights and inputs, as in
    ``--model.channels_last``)."""

    precision: str = "32-true"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"benchmark precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )

    def check(self, device: torch.device) -> None:
        """Raise :class:`ConfigError` when ``device`` cannot run this precision."""
        if self.precision == "16-mixed" and device.type != "cuda":
            raise ConfigError(f"precision 16-mixed needs a CUDA device, got {device}")

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """Loss scaling, as Lightning does for ``16-mixed``."""
        return torch.amp.GradScaler(device.type) if self.precision == "16-mixed" else None

    def layout(self, t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def prepare(self, net: nn.Module) -> nn.Module:
        return net.to(memory_format=torch.channels_last) if self.channels_last else net


#: float32 in the networks' own layout: how the benchmark runs unless told otherwise.
DEFAULT_SPEED = Speed()
