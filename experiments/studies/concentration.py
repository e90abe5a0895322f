"""Concentration (Fig. 9): how much of each query's positive influence its top sequences hold."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.concentration import FRACTIONS, concentration_figure, concentration_table
from analysis.figures import figure
from analysis.scorecard import Finding, top_percent_share
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import all_scores_table
from .registry import Study, option


@dataclass
class Options:
    fractions: list[float] = option(
        help="top fractions of the candidates whose share of positive influence is given",
        factory=lambda: list(FRACTIONS),
    )
    queries: list[str] | None = option(None, "null: the queries tagged `concentration`; or a list of names")

    def __post_init__(self):
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise InfluenceError(f"concentration.fractions={self.fractions} must be fractions in (0, 1]")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    fractions = [float(f) for f in opts.fractions]
    queries = select_queries(world, "concentration", opts.queries)
    search = search_stage(cfg, world)
    table = concentration_table(all_scores_table(search.result, world, queries), fractions)
    at = table.pivot_table(index="query", columns="top_fraction", values="share")
    summary = {"queries": len(queries), "candidates": int(search.result.scores.shape[1])}
    for f in (0.001, 0.01, 0.1):
        if f in at.columns:
            summary[f"share_top_{f:g}_min"] = float(at[f].min())
            summary[f"share_top_{f:g}_median"] = float(at[f].median())
            summary[f"share_top_{f:g}_max"] = float(at[f].max())
    return {"concentration": table, "_summary": pd.DataFrame([summary]), "_metadata": metadata(search, world)}


STUDY = Study(
    name="concentration",
    title="Concentration of influence",
    where="§5.2, Fig. 9",
    order=50,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig9_concentration",
            concentration_figure,
            "concentration",
            caption="Share of positive influence held by the top x% of sequences (log x): the paper finds a small "
            "top fraction holding most of it (sparse influence).",
        ),
    ),
    findings=(
        Finding(
            "Top 1% of sequences hold 10–60% of positive influence",
            "12–52%",
            "median share of the top 1% in [10%, 60%]",
            top_percent_share,
        ),
    ),
)
