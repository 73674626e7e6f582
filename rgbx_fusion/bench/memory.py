"""Peak memory of a piece of work: CUDA's allocator statistics, or tensor storage on CPU.

The process's resident size is a poor measure on CPU: the allocator keeps freed
blocks, other threads allocate too, and the peak cannot be reset reliably.
:class:`TensorMemory` instead counts the storage of every tensor created while it
is active until that tensor is freed, which is what CUDA's
``max_memory_allocated`` reports on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while the mode is active, on any device.

    Every op's new output storages are counted until they are freed; views and
    in-place results of existing storages are not. Works through autograd's
    backward pass, like :class:`torch.utils.flop_counter.FlopCounterMode`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_leaves((args, kwargs))
            if isinstance(t, Tensor) and not t.is_meta
        }
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_leaves(out):
            if not isinstance(t, Tensor) or t.is_meta:
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MB) that ``fn()`` allocates above what was allocated before.

    CUDA's peak allocation on a GPU; :class:`TensorMemory` on other devices.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with TensorMemory() as tracker:
        fn()
    return tracker.peak / 2**20
