"""Torch CPU thread count for the duration of a block, restored afterwards.

Library code must not change the caller's global setting; a training recipe whose floats depend
on the thread count (reductions split differently) sets it only inside itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rrm_plugin.errors import RRMUserError


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(n)`; the previous count is restored on exit."""
    if n < 1:
        raise RRMUserError(f"thread count must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
