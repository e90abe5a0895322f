"""Outlier diagnostics from a top-k table: the sequences that sit in many queries' top lists.

A few sequences of high loss or high gradient norm can fill every query's unnormalized top list (TrackStar and
RelatIF's observation; on the embedded corpus, unique high-loss passages sat in the top 10 of up to 22 of 56
queries). Listing them, with their loss per token, self-influence and cosine, lets a reader tell such outliers
from k separate findings. A diagnostic, never a finding: nothing here is tuned or removed.
"""

from __future__ import annotations

import math

import pandas as pd


def dominance_threshold(n_queries: int, share: float) -> int:
    """Queries whose top k must hold a sequence for it to count as dominating: at least 2 and `share` of them."""
    return max(2, math.ceil(share * n_queries))


def dominant_sequences(top: pd.DataFrame, n_queries: int, share: float) -> pd.DataFrame:
    """One row per sequence in the top k of at least `dominance_threshold` queries, most queries first: how many
    and which, its best and mean rank, its diagnostics and its text."""
    threshold = dominance_threshold(n_queries, share)
    columns = ["row", "sequence_id", "category", "queries", "query_names", "best_rank", "mean_rank"]
    extra = [c for c in ("loss_per_token", "self_influence", "text") if c in top]
    if top.empty:
        return pd.DataFrame(columns=columns + ["mean_cosine"] + extra)
    agg = {
        "sequence_id": ("sequence_id", "first"),
        "category": ("category", "first"),
        "queries": ("query", "nunique"),
        "query_names": ("query", lambda s: ",".join(sorted(set(s)))),
        "best_rank": ("rank", "min"),
        "mean_rank": ("rank", "mean"),
        **({"mean_cosine": ("cosine", "mean")} if "cosine" in top else {}),
        **{c: (c, "first") for c in extra},
    }
    out = top.groupby("row", as_index=False).agg(**agg)
    out = out[out["queries"] >= threshold]
    return out.sort_values(["queries", "mean_rank"], ascending=[False, True]).reset_index(drop=True)


def dominance_summary(dominant: pd.DataFrame, top: pd.DataFrame, n_queries: int, share: float) -> str:
    """One line for the report: how many sequences dominate, against what threshold, and their loss against the
    top lists' median."""
    k = int(top["rank"].max()) if not top.empty else 0
    threshold = dominance_threshold(n_queries, share)
    if dominant.empty:
        return f"none: no sequence is in the top {k} of {threshold} or more of the {n_queries} queries"
    line = f"{len(dominant)} sequence(s) in the top {k} of {threshold} or more of the {n_queries} queries"
    if "loss_per_token" in dominant and top["loss_per_token"].notna().any():
        line += (
            f"; their median loss {dominant['loss_per_token'].median():.3g} nats/token against "
            f"{top.drop_duplicates('row')['loss_per_token'].median():.3g} for all top-list sequences"
        )
    return line + " (table dominant_sequences)"
