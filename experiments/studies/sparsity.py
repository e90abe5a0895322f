"""Sparsity (Fig. 8, Table 1): fit heavy-tailed laws to the tail of each query's influence distribution."""
from __future__ import annotations

import pandas as pd

from analysis.sparsity import MIN_TAIL, sparsity_tables
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import all_scores_table
from . import register


@register("sparsity")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("sparsity") or {}
    n, alpha = int(opts.get("tail", 500)), float(opts.get("ks_alpha", 0.05))
    if n < MIN_TAIL:
        raise InfluenceError(f"sparsity.tail={n} is too short to fit a tail: use at least {MIN_TAIL}")
    queries = select_queries(world, "sparsity", opts.get("queries"))
    search = search_stage(cfg, world)
    scores = all_scores_table(search.result, world, queries)
    fits, table = sparsity_tables(scores, n, alpha)
    fitted = table.dropna(subset=["alpha"])
    summary = {"queries": len(table), "fitted": len(fitted), "tail": n,
               "power_law_best_fit": int((fitted["best_fit"] == "power_law").sum()) if len(fitted) else 0,
               "power_law_rejected_by_ks": int(fitted["power_law_rejected"].sum()) if len(fitted) else 0,
               "alpha_median": float(fitted["alpha"].median()) if len(fitted) else float("nan")}
    return {"sparsity": table, "sparsity_fits": fits, "scores": scores, "_summary": pd.DataFrame([summary]),
            "_metadata": metadata(search, world, tail=n, ks_alpha=alpha)}
