"""torch's thread count, chosen by the size of a fit: one thread for small fits, torch's own
choice for large ones; a count the user has set (``torch.set_num_threads``, or
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the environment) is left alone."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from . import thresholds

#: torch's thread count when pyroem was imported: a different count later was set by the user
_AT_IMPORT = torch.get_num_threads()


def _user_set() -> bool:
    return (torch.get_num_threads() != _AT_IMPORT
            or any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")))


@contextlib.contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Within the block, one thread if ``work`` (elements of the largest table) is below
    ``thresholds.SINGLE_THREAD_WORK`` and the user has not chosen a count; restored afterwards."""
    before = torch.get_num_threads()
    small = work < thresholds.SINGLE_THREAD_WORK and before > 1 and not _user_set()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)
