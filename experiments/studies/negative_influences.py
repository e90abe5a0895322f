"""Negative influence: per query, the training sequences that most decrease log p(completion | prompt), and how
much of the influence magnitude over all candidates is negative (the paper lists only the positive top sequences;
influence is signed, and the negative tail is the other half of the distribution the sparsity study fits).

It reads the same scan as the other single-model studies (a cached scan is reused), with no second pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.balance import balance_figure, most_negative, sign_balance
from analysis.figures import figure
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import all_scores_table
from ._sweep import text
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "most negatively influential sequences listed per query")
    queries: list[str] | None = option(None, "null: the queries tagged `negative_influences` (else all); or names")

    def __post_init__(self):
        if self.top_k < 1:
            raise InfluenceError(f"negative_influences.top_k={self.top_k} must be at least 1")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    queries = select_queries(world, "negative_influences", opts.queries)
    search = search_stage(cfg, world)
    scores = all_scores_table(search.result, world, queries)
    balance = sign_balance(scores)
    low = most_negative(scores, opts.top_k)
    meta = world.train.meta
    low = low.assign(
        sequence_id=[int(meta.iloc[r].get("id", r)) for r in low["row"]],
        kind=[text(meta.iloc[r].get("kind")) for r in low["row"]],
        text=[world.train.texts[r] for r in low["row"]],
    )
    summary = {
        "queries": len(balance),
        "negative_share_median": float(balance["negative_share"].median()),
        "bottom_over_top_median": float(balance["bottom_over_top"].median()),
    }
    return {
        "negative_influences": low,
        "sign_balance": balance,
        "_summary": pd.DataFrame([summary]),
        "_metadata": metadata(search, world, top_k=opts.top_k),
    }


STUDY = Study(
    name="negative_influences",
    title="Negative influence: the other tail",
    where="beyond the paper (§5.2's scans)",
    run=run,
    options=Options,
    figures=(
        figure(
            "sign_balance",
            balance_figure,
            "sign_balance",
            caption="Positive vs negative share of each query's summed |influence|: look for how balanced the signs "
            "are (the paper: roughly balanced, positives heavier at the top).",
        ),
    ),
)
