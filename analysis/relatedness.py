"""How a math or code query's top sequence relates to it, read from the corpus metadata (Figs. 13–14).

The paper finds that small models' top sequences for math and code queries are spurious token matches,
while large models' are related solutions, also in other programming languages.
"""

from __future__ import annotations

import pandas as pd

CODE_CLASSES = ("same_algorithm_same_language", "same_algorithm_other_language", "other_code", "spurious")
MATH_CLASSES = ("word_problem", "other_math", "spurious")
#: the classes counted as related to the query: the same algorithm in any language, or a word problem
RELATED = ("same_algorithm_same_language", "same_algorithm_other_language", "word_problem")


def _get(meta, key) -> str:
    v = meta.get(key) if hasattr(meta, "get") else None
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def classify_code(meta, algorithm: str, language: str) -> str:
    """A training sequence's relation to a code query implementing `algorithm` in `language`."""
    if _get(meta, "category") != "code":
        return "spurious"
    if _get(meta, "algorithm") != algorithm:
        return "other_code"
    return "same_algorithm_same_language" if _get(meta, "prog_lang") == language else "same_algorithm_other_language"


def classify_math(meta) -> str:
    """A training sequence's relation to a math word-problem query."""
    if _get(meta, "category") != "math":
        return "spurious"
    return "word_problem" if _get(meta, "kind") == "word_problem" else "other_math"


def classify(meta, query_type: str, algorithm: str = "", language: str = "") -> str:
    """Dispatch on the query's type: `code` or `math`."""
    if query_type == "code":
        return classify_code(meta, algorithm, language)
    if query_type == "math":
        return classify_math(meta)
    raise ValueError(f"no relatedness classes for query type {query_type!r}: use a math or code query")
