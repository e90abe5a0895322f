"""Thread control for small dense linear algebra.

Many small float64 SVDs/eigendecompositions run slower with several OpenMP threads, and
~100x slower when the cores are shared with other work; one thread is the safe choice there.
"""

from __future__ import annotations

import contextlib

import torch

SMALL = 1024  # matrices up to this size are decomposed single-threaded


@contextlib.contextmanager
def single_thread(enabled: bool = True):
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
