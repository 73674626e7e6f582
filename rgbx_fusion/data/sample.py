"""Batching of transformed samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep ``meta`` as a list of dicts (one per sample).

    Samples of a multi-modality dataset (``meta["present"]``: one bool per modality) also
    give ``present``, a (B, M) bool tensor.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch = {
        "rgb": torch.stack([it["rgb"] for it in items]),
        "aux": torch.stack([it["aux"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "meta": [it["meta"] for it in items],
    }
    if all("present" in it["meta"] for it in items):
        batch["present"] = torch.tensor([it["meta"]["present"] for it in items], dtype=torch.bool)
    return batch
