"""Wall-clock time of the pipeline's stages (world, fit, scan, breakdown), collected per process.

The paper run turns them into its `stage_timings` table and bench/bench_paper.py prints them; a stage
served from its on-disk cache shows up with the seconds it took to load.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import pandas as pd

_RECORDS: list[dict] = []


@contextmanager
def timed(stage: str, **labels):
    """Time the block; the labels it yields may be filled in inside it (e.g. a model's name once it is built)."""
    t0 = time.perf_counter()
    try:
        yield labels
    finally:
        _RECORDS.append({"stage": stage, **labels, "seconds": time.perf_counter() - t0})


def take() -> pd.DataFrame:
    """The stages timed since the last call (and forget them)."""
    df = pd.DataFrame(_RECORDS, columns=None if _RECORDS else ["stage", "seconds"])
    _RECORDS.clear()
    return df
