"""Query batching (Fig. 3): how well rank-r query gradients reproduce full-rank scores, from the `query_rank` table."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def rank_correlation(table: pd.DataFrame, title: str = "Query batching: rank-r vs full-rank scores") -> plt.Figure:
    """Fig. 3: Pearson correlation of rank-r and full-rank scores per query, against r."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = list(table.groupby("query", sort=False))
    many = len(groups) > 10  # past ten queries a legend would hide the plot: draw them alike, labelled once
    for i, (query, g) in enumerate(groups):
        g = g.sort_values("rank")
        if many:
            ax.plot(
                g["rank"],
                g["pearson"],
                color="tab:blue",
                lw=0.8,
                alpha=0.35,
                label=f"each of {len(groups)} queries" if i == 0 else None,
            )
        else:
            ax.plot(g["rank"], g["pearson"], marker="o", lw=1, alpha=0.7, label=query)
    mean = table.groupby("rank")["pearson"].mean()
    ax.plot(mean.index, mean.values, color="black", lw=2.5, marker="s", label="mean")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["rank"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("query gradient rank r (log scale)")
    ax.set_ylabel("Pearson r with full rank (−1 to 1)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    return fig
