"""Layer-wise influence (Figs. 17–21) and the layers × tokens heatmap of one sequence (Fig. 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def layer_blocks(num_layers: int, max_blocks: int = 9) -> list[list[int]]:
    """Split transformer layers 0..n-1 into min(max_blocks, n) contiguous, near-equal blocks, bottom to top."""
    return [list(b) for b in np.array_split(np.arange(num_layers), min(max_blocks, num_layers))]


def block_shares(layer_table: pd.DataFrame) -> pd.DataFrame:
    """Per query, each block's share of the summed influence of the query's top sequences.

    `layer_table` has one row per (query, type, rank, block) with `influence`; shares are over the
    absolute block sums so that a query whose top sequences carry negative layer terms still sums to 1.
    """
    sums = layer_table.groupby(["query", "type", "block"], sort=False)["influence"].sum().reset_index()
    total = sums.groupby("query")["influence"].transform(lambda v: np.abs(v).sum())
    sums["share"] = sums["influence"].abs() / total.replace(0, np.nan)
    return sums


def layer_figure(layer_table: pd.DataFrame):
    """Figs. 17–21: per query (grouped by type), the share of top-sequence influence in each layer block."""
    import matplotlib.pyplot as plt

    shares = block_shares(layer_table)
    grid = shares.pivot_table(index=["type", "query"], columns="block", values="share", sort=False)
    grid = grid.sort_index(level=0, sort_remaining=False)
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(10, max(3, 0.18 * len(grid) + 1.5)), gridspec_kw={"width_ratios": [1.3, 1]}
    )
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(grid)), [f"{t}: {q}" for t, q in grid.index], fontsize=5)
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=7)
    ax.set_xlabel("layer block (bottom → top)")
    ax.set_title("share of top-sequence influence per layer block", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    by_type = shares.groupby(["type", "block"])["share"].mean().unstack("block")
    for t, row in by_type.iterrows():
        ax2.plot(
            row.index, row.values, marker="o", ms=3, label=f"{t} ({shares[shares['type'] == t]['query'].nunique()})"
        )
    ax2.set_xticks(list(by_type.columns))
    ax2.set_xlabel("layer block (bottom → top)")
    ax2.set_ylabel("mean share")
    ax2.set_title("by query type", fontsize=8)
    ax2.legend(fontsize=6)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def token_heatmap_figure(table: pd.DataFrame):
    """Fig. 4: layers × tokens influence of one training sequence on one query (the whole grid sums to its score).

    Column t holds the terms of position t, whose output predicts token t+1: the token shown (and the
    highlighted, most influential one) is the one BEFORE the predicted token, as in the paper.
    """
    import matplotlib.pyplot as plt

    grid = table.pivot_table(index="layer", columns="position", values="score", sort=False).fillna(0.0)
    tokens = table.drop_duplicates("position").set_index("position")["token"].reindex(grid.columns)
    lim = float(np.abs(grid.to_numpy()).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.14 * grid.shape[1] + 2), max(2.5, 0.25 * grid.shape[0] + 1.5)))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(grid.shape[1]), [str(t) for t in tokens], rotation=90, fontsize=4)
    ax.set_yticks(range(grid.shape[0]), [str(l) for l in grid.index], fontsize=5)
    top = int(np.argmax(grid.to_numpy().sum(0)))
    ax.get_xticklabels()[top].set_color("red")
    ax.get_xticklabels()[top].set_fontweight("bold")
    first = table.iloc[0]
    ax.set_title(
        f"{first['query']} ← sequence #{first['sequence_id']} (score {grid.to_numpy().sum():+.3g}); "
        f"red: the token before the most influential prediction",
        fontsize=7,
    )
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig
