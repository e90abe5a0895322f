"""The sign balance of influence: how much of a query's total influence magnitude is negative, and its most
negatively influential sequences, from the long (query, row, score) table every scan study writes."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sign_balance(scores: pd.DataFrame) -> pd.DataFrame:
    """Per query: the summed positive and negative influence, the negative share of the total magnitude, and the
    most negative score against the most positive (|min| / max: 1 means both tails reach as far)."""
    rows = []
    for query, g in scores.groupby("query", sort=False):
        s = g["score"].to_numpy(dtype=float)
        pos, neg = float(s[s > 0].sum()), float(-s[s < 0].sum())
        top, bottom = float(s.max()), float(s.min())
        rows.append(
            {
                "query": query,
                "candidates": len(s),
                "positive_sum": pos,
                "negative_sum": neg,
                "negative_share": neg / (pos + neg) if pos + neg > 0 else np.nan,
                "top_score": top,
                "bottom_score": bottom,
                "bottom_over_top": -bottom / top if top > 0 and bottom < 0 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def most_negative(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per query, its `k` lowest-scoring rows, ranked from the most negative (rank 1)."""
    low = pd.concat([g.nsmallest(k, "score", keep="first") for _, g in scores.groupby("query", sort=False)])
    return low.assign(rank=low.groupby("query", sort=False).cumcount() + 1).reset_index(drop=True)


def balance_figure(table: pd.DataFrame):
    """Per query, the share of its total influence magnitude that is positive (red) and negative (blue)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.4 * len(table) + 1.2))
    y = np.arange(len(table))
    neg = 100 * table["negative_share"].to_numpy()
    ax.barh(y, 100 - neg, color="tab:red", label="positive")
    ax.barh(y, neg, left=100 - neg, color="tab:blue", label="negative")
    ax.set_yticks(y, table["query"], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the summed |influence| over the candidates")
    ax.set_title("Sign balance of influence", fontsize=9)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
