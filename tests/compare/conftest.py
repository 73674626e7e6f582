"""Compare tests train several tiny models: one intra-op thread each.

On a busy 2-core machine, two threads per op spend most of their time waiting for
each other (a 2-batch fit took ~25 s with 2 threads and ~2 s with 1).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
