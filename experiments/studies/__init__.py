"""Studies, registered by name: each is a function (config, world) -> {table name: DataFrame}."""
from __future__ import annotations

from collections.abc import Callable

from influence import InfluenceError

STUDIES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        STUDIES[name] = fn
        return fn
    return wrap


def get_study(name: str) -> Callable:
    if name not in STUDIES:
        raise InfluenceError(f"unknown study {name!r}: choose one of {sorted(STUDIES)}")
    return STUDIES[name]


from . import top_influences  # noqa: E402,F401  (registers)
from . import query_rank  # noqa: E402,F401
from . import tfidf_vs_unfiltered  # noqa: E402,F401
from . import sparsity  # noqa: E402,F401
from . import concentration  # noqa: E402,F401
from . import layer_wise  # noqa: E402,F401
from . import memorization  # noqa: E402,F401
from . import accuracy  # noqa: E402,F401
from . import abstraction  # noqa: E402,F401
from . import word_order  # noqa: E402,F401
from . import math_code  # noqa: E402,F401
from . import cross_lingual  # noqa: E402,F401
from . import role_play  # noqa: E402,F401
