"""Concentration of influence (Fig. 9): the share of a query's total positive influence held by its top x% of sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd

FRACTIONS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)


def concentration_table(scores: pd.DataFrame, fractions=FRACTIONS) -> pd.DataFrame:
    """One row per (query, top fraction): how many sequences that is and the share of positive influence they hold.

    The top x% is taken of all scored candidates (at least one sequence); negative scores count as zero,
    as in the paper, which measures how much of the positive influence a few sequences carry.
    """
    rows = []
    for query, g in scores.groupby("query", sort=False):
        s = np.sort(np.clip(g["score"].to_numpy(np.float64), 0, None))[::-1]
        total, cum = s.sum(), np.cumsum(s)
        for f in fractions:
            k = max(1, int(round(f * len(s))))
            rows.append(
                {
                    "query": query,
                    "top_fraction": f,
                    "num_sequences": k,
                    "num_candidates": len(s),
                    "share": float(cum[k - 1] / total) if total > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def concentration_figure(table: pd.DataFrame):
    """Fig. 9: share of positive influence vs the fraction of top sequences, one line per query."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = list(table.groupby("query", sort=False))
    many = len(groups) > 10
    for i, (q, g) in enumerate(groups):
        kw = (
            dict(color="tab:blue", alpha=0.3, lw=0.8, label=f"each of {len(groups)} queries" if i == 0 else None)
            if many
            else dict(marker="o", ms=3, lw=1, label=q)
        )
        ax.plot(100 * g["top_fraction"], 100 * g["share"], **kw)
    mean = table.groupby("top_fraction")["share"].mean()
    ax.plot(100 * mean.index, 100 * mean.values, color="black", lw=2.2, label="mean")
    ax.set_xscale("log")
    ax.set_xlabel("top sequences (% of candidates, log scale)")
    ax.set_ylabel("% of total positive influence")
    ax.set_title("Concentration of influence", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5), ncol=1 + len(groups) // 20)
    return fig
