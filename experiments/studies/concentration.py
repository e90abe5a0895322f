"""Concentration (Fig. 9): how much of each query's positive influence its top sequences hold."""
from __future__ import annotations

import pandas as pd

from analysis.concentration import FRACTIONS, concentration_table

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import all_scores_table
from . import register


@register("concentration")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("concentration") or {}
    fractions = [float(f) for f in opts.get("fractions", FRACTIONS)]
    queries = select_queries(world, "concentration", opts.get("queries"))
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
