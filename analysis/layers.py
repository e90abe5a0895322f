"""Layer-wise influence (Figs. 17–21) and the layers × tokens heatmap of one sequence (Fig. 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def layer_blocks(num_layers: int, max_blocks: int = 9) -> list[list[int]]:
    """Split transformer layers 0..n-1 into min(max_blocks, n) contiguous, near-equal blocks, bottom to top."""
    return [list(b) for b in np.array_split(np.arange(num_layers), min(max_blocks, num_layers))]


def block_span(layers: list[int]) -> str:
    """The transformer layers of a block as text: `3` or `0–2`."""
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}–{layers[-1]}"


def block_layers(num_layers: int, max_blocks: int = 9) -> pd.DataFrame:
    """One row per block of `layer_blocks`: block, layers (its span, `0–2`), n_layers (how many it holds)."""
    return pd.DataFrame(
        [
            {"block": b, "layers": block_span(ls), "n_layers": len(ls)}
            for b, ls in enumerate(layer_blocks(num_layers, max_blocks))
        ]
    )


#: fewer transformer layers than this: the lower/middle/upper thirds hold too few layers to read as a depth trend
MIN_RELIABLE_LAYERS = 9


def depth_reliability(num_layers: int, max_blocks: int = 9) -> str:
    """A one-line note on how far a peak block can be read as a place in the depth, given the layers there are."""
    sizes = [len(b) for b in layer_blocks(num_layers, max_blocks)]
    per = str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}–{max(sizes)}"
    third = -(-num_layers // 3)
    if num_layers < MIN_RELIABLE_LAYERS:
        return (
            f"low: {num_layers} layers, {per} per block; a third of the depth is ≤ {third} layer(s), so 'upper' vs "
            f"'middle' compares single layers, not regions (reliable from {MIN_RELIABLE_LAYERS} layers)"
        )
    return f"{num_layers} layers, {per} per block; thirds of ~{third} layers"


def block_shares(layer_table: pd.DataFrame) -> pd.DataFrame:
    """Per query, each block's share of the summed influence of the query's top sequences.

    `layer_table` has one row per (query, type, rank, block) with `influence`; shares are over the
    absolute block sums so that a query whose top sequences carry negative layer terms still sums to 1.
    """
    sums = layer_table.groupby(["query", "type", "block"], sort=False)["influence"].sum().reset_index()
    total = sums.groupby("query")["influence"].transform(lambda v: np.abs(v).sum())
    sums["share"] = sums["influence"].abs() / total.replace(0, np.nan)
    return sums


def layer_figure(layer_table: pd.DataFrame, shares_table: pd.DataFrame | None = None):
    """Figs. 17–21: per query (grouped by type), the share of top-sequence influence in each layer block.

    `shares_table` (the study's `layer_shares`, where it has `layers` and `n_layers`): the blocks are labelled with
    the transformer layers they hold, and a note warns when each holds one layer of a shallow model.
    """
    import matplotlib.pyplot as plt

    shares = block_shares(layer_table)
    grid = shares.pivot_table(index=["type", "query"], columns="block", values="share", sort=False)
    grid = grid.sort_index(level=0, sort_remaining=False)
    spans = {}
    if shares_table is not None and {"layers", "n_layers"} <= set(shares_table.columns):
        spans = shares_table.drop_duplicates("block").set_index("block")[["layers", "n_layers"]].to_dict("index")
    labels = [f"{c}\nL{spans[c]['layers']}" if c in spans else str(c) for c in grid.columns]
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(10.5, max(3.2, 0.18 * len(grid) + 1.8)), gridspec_kw={"width_ratios": [1.3, 1]}
    )
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(grid)), [f"{t}: {q}" for t, q in grid.index], fontsize=5)
    ax.set_xticks(range(grid.shape[1]), labels, fontsize=6)
    xlabel = "layer block (bottom → top; L: transformer layers it holds)" if spans else "layer block (bottom → top)"
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_title("share of top-sequence influence per layer block", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04).set_label("share of |influence| (0–1)", fontsize=7)
    by_type = shares.groupby(["type", "block"])["share"].mean().unstack("block")
    for t, row in by_type.iterrows():
        ax2.plot(
            row.index, row.values, marker="o", ms=3, label=f"{t} ({shares[shares['type'] == t]['query'].nunique()})"
        )
    ax2.set_xticks(list(by_type.columns), [labels[list(grid.columns).index(c)] for c in by_type.columns], fontsize=6)
    ax2.set_xlabel(xlabel, fontsize=7)
    ax2.set_ylabel("mean share of |influence| (0–1)", fontsize=7)
    ax2.set_title("by query type (queries)", fontsize=8)
    ax2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax2.grid(alpha=0.3)
    if spans and max(v["n_layers"] for v in spans.values()) == 1:
        fig.text(
            0.5,
            0.005,
            f"{len(spans)} blocks of one layer each: a peak is one layer, not a region of the depth (few layers)",
            ha="center",
            fontsize=7,
            color="#a00",
        )
    fig.tight_layout(rect=(0, 0.04 if spans else 0, 1, 1))
    return fig


#: tokens per row of the Fig. 4 heatmap, and rows at most (longer sequences: a window around the top token)
HEATMAP_ROW_TOKENS = 64
HEATMAP_MAX_ROWS = 4


def heatmap_window(n: int, top: int, width: int = HEATMAP_ROW_TOKENS * HEATMAP_MAX_ROWS) -> tuple[int, int]:
    """[start, stop) of at most `width` positions of n, centred on `top` where the sequence is longer."""
    if n <= width:
        return 0, n
    start = min(max(0, top - width // 2), n - width)
    return start, start + width


def token_heatmap_figure(table: pd.DataFrame, row_tokens: int = HEATMAP_ROW_TOKENS, max_rows: int = HEATMAP_MAX_ROWS):
    """Fig. 4: layers × tokens influence of one training sequence on one query (the whole grid sums to its score).

    Column t holds the terms of position t, whose output predicts token t+1: the token shown (and the
    highlighted, most influential one) is the one BEFORE the predicted token, as in the paper. A long sequence
    is wrapped into stacked rows of `row_tokens` tokens (one colour scale); beyond `max_rows` rows, the window of
    tokens around the most influential one is drawn and the title says which positions.
    """
    import matplotlib.pyplot as plt

    grid = table.pivot_table(index="layer", columns="position", values="score", sort=False).fillna(0.0)
    grid = grid[sorted(grid.columns)]
    tokens = table.drop_duplicates("position").set_index("position")["token"].reindex(grid.columns)
    values = grid.to_numpy()
    lim = float(np.abs(values).max()) or 1.0
    n = values.shape[1]
    top = int(np.argmax(values.sum(0)))
    start, stop = heatmap_window(n, top, row_tokens * max_rows)
    chunks = [(a, min(a + row_tokens, stop)) for a in range(start, stop, row_tokens)]
    layers = values.shape[0]
    panel_h = 0.13 * layers + 0.75
    fig, axes = plt.subplots(
        len(chunks), 1, figsize=(0.13 * row_tokens + 2.2, panel_h * len(chunks) + 0.7), squeeze=False
    )
    for ax, (a, b) in zip(axes[:, 0], chunks):
        im = ax.imshow(
            values[:, a:b],
            aspect="auto",
            cmap="RdBu_r",
            vmin=-lim,
            vmax=lim,
            extent=(a - 0.5, b - 0.5, layers - 0.5, -0.5),
        )
        ax.set_xlim(a - 0.5, a + row_tokens - 0.5)  # every row as wide as a full one: the columns line up
        ax.set_xticks(range(a, b), [repr(str(t))[1:-1] for t in tokens.iloc[a:b]], rotation=90, fontsize=5.5)
        ax.set_yticks(range(layers), [str(l) for l in grid.index], fontsize=5)
        ax.set_ylabel("layer (module)", fontsize=6)
        ax.text(1.005, 0.5, f"pos {a}–{b - 1}", transform=ax.transAxes, fontsize=5.5, va="center", rotation=90)
        if a <= top < b:
            label = ax.get_xticklabels()[top - a]
            label.set_color("red")
            label.set_fontweight("bold")
    axes[-1, 0].set_xlabel("token (the input at each position; its column predicts the next token)", fontsize=6)
    first = table.iloc[0]
    shown = "" if (start, stop) == (0, n) else f"; positions {start}–{stop - 1} of {n}, around the top token"
    fig.suptitle(
        f"{first['query']} ← sequence #{first['sequence_id']} (score {values.sum():+.3g}{shown})\n"
        "red label: the token before the most influential prediction",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes((0.94, 0.15, 0.012, 0.7))
    fig.colorbar(im, cax=cax).set_label("influence (score units)", fontsize=6)
    cax.tick_params(labelsize=5)
    return fig
