"""The first job: per query, the most influential training sequences (paper Figs. 1, 10-16 listings).

A resumable scan scores every query on every candidate; a second pass re-scores each query's
top k at full rank with layer- and token-wise breakdowns, the spurious-sequence flag and the outlier
diagnostics (loss per token, self-influence, cosine, how many queries' top k hold the sequence); the sequences
that dominate many queries' lists are listed in `dominant_sequences`. With `candidates.path`, the file's texts
are scored as hypothetical training sequences beside them (`candidate_scores`, `candidate_tokens`).
"""

from __future__ import annotations

import pandas as pd

from analysis.figures import listings
from analysis.outliers import dominance_summary, dominant_sequences

from ..pipeline.hypothetical import candidate_tables
from ..pipeline.options import score_options
from ..pipeline.stages import metadata, search_stage, training_set_size
from ..pipeline.tables import all_scores_table, top_k_table, top_tokens_table
from .registry import NoOptions, Study

#: the per-copy unit, explained once in each report that carries it
UNITS = (
    "score is the influence I = -grad f^T (G + lambda I)^-1 grad L(z) (no 1/N); delta_log_p = score / N is the "
    "predicted change in log p(completion | prompt) from adding one copy of the sequence to the N training sequences"
)


def run(cfg, world, opts: NoOptions) -> dict[str, pd.DataFrame]:
    search = search_stage(cfg, world, int(cfg.score.top_k))
    tensors = {}
    for q, t in zip(world.queries, search.tops):
        tensors[f"{q.name}/rows"], tensors[f"{q.name}/token_scores"] = t.rows, t.token_scores.float()
    n = training_set_size(cfg, world)
    top = top_k_table(search.tops, world.queries, world.train, n)
    share = score_options(cfg).dominant_share
    dominant = dominant_sequences(top, len(world.queries), share)
    candidates = candidate_tables(cfg, world, search.curvature, search.result)
    summary = {
        "queries": len(world.queries),
        "candidates": search.result.scores.shape[1],
        "mean_top1_score": float(top[top["rank"] == 1]["score"].mean()),
        "spurious_share_of_top": float(top["spurious"].mean()),
        "dominant_sequences": dominance_summary(dominant, top, len(world.queries), share),
        "units": UNITS + f" (N = {n})",
    }
    if candidates:
        best = candidates["candidate_scores"].query("rank == 1")
        summary["hypothetical_candidates"] = (
            f"{candidates['candidate_scores']['candidate'].nunique()} texts from candidates.path; the best one per "
            f"query would rank {int(best['rank_among_training'].median())} (median) among the training sequences"
        )
    return {
        "top_token_scores": tensors,  # (k, layers, tokens) per query: the Fig. 4 heatmaps
        "top_influences": top,
        "dominant_sequences": dominant,
        "top_tokens": top_tokens_table(search.tops, world.queries, world),
        "scores": all_scores_table(search.result, world),
        **candidates,
        "_summary": pd.DataFrame([summary]),
        "_metadata": metadata(search, world, training_set_size=n),
    }


STUDY = Study(
    name="top_influences",
    title="The most influential training sequences",
    where="Figs. 1, 10–16 (listings)",
    run=run,
    figures=listings("top_tokens") + listings("candidate_tokens", stem="candidate_sequences"),
    long_tables=frozenset({"scores", "top_tokens", "candidate_tokens"}),
)
