"""The first job: per query, the most influential training sequences (paper Figs. 1, 10-16 listings).

A resumable scan scores every query on every candidate; a second pass re-scores each query's
top k at full rank with layer- and token-wise breakdowns and the spurious-sequence flag.
"""

from __future__ import annotations

import pandas as pd

from analysis.figures import listings

from ..pipeline.stages import metadata, search_stage
from ..pipeline.tables import all_scores_table, top_k_table, top_tokens_table
from .registry import NoOptions, Study


def run(cfg, world, opts: NoOptions) -> dict[str, pd.DataFrame]:
    search = search_stage(cfg, world, int(cfg.score.top_k))
    tensors = {}
    for q, t in zip(world.queries, search.tops):
        tensors[f"{q.name}/rows"], tensors[f"{q.name}/token_scores"] = t.rows, t.token_scores.float()
    top = top_k_table(search.tops, world.queries, world.train)
    return {
        "top_token_scores": tensors,  # (k, layers, tokens) per query: the Fig. 4 heatmaps
        "top_influences": top,
        "top_tokens": top_tokens_table(search.tops, world.queries, world),
        "scores": all_scores_table(search.result, world),
        "_summary": pd.DataFrame(
            [
                {
                    "queries": len(world.queries),
                    "candidates": search.result.scores.shape[1],
                    "mean_top1_score": float(top[top["rank"] == 1]["score"].mean()),
                    "spurious_share_of_top": float(top["spurious"].mean()),
                }
            ]
        ),
        "_metadata": metadata(search, world),
    }


STUDY = Study(
    name="top_influences",
    title="The most influential training sequences",
    where="Figs. 1, 10–16 (listings)",
    run=run,
    figures=listings("top_tokens"),
    long_tables=frozenset({"scores", "top_tokens"}),
)
