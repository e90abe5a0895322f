"""Figures of the scale studies (Figs. 1, 10–16, 28–29), drawn from their tables only.

Trends are plotted against non-embedding parameters on a log axis, one line per query (the mean over seeds,
error bars: the standard deviation over seeds) and the mean over queries in black (the cross-lingual ratio: the
median, the statistic of its headline); category shares are
stacked bars per model size (means over seeds and queries).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

#: stacked-bar panels per figure: the mean over queries, then one per query up to this many
MAX_QUERY_PANELS = 6


def trend_panel(
    ax, table: pd.DataFrame, value: str, ylabel: str, by: str = "query", stat: str = "mean", over: str | None = None
) -> None:
    """`value` against parameters: a line per `by` (`stat` ± std over seeds) and the `stat` over `by` (black)."""
    for name, g in table.groupby(by, sort=False):
        s = g.groupby(["params", "seed"])[value].mean().groupby("params").agg([stat, "std"]).fillna(0.0)
        ax.errorbar(s.index, s[stat], yerr=s["std"], marker="o", ms=3, lw=1, alpha=0.6, capsize=2, label=str(name))
    s = table.groupby(["params", "seed"])[value].agg(stat).groupby("params").agg([stat, "std"]).fillna(0.0)
    ax.errorbar(
        s.index, s[stat], yerr=s["std"], color="black", marker="s", lw=2.2, capsize=3, label=f"{stat} over {by}"
    )
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def trend_figure(
    table: pd.DataFrame,
    panels: list[tuple[str, str]],
    title: str,
    by: str = "query",
    stat: str = "mean",
    over: str | None = None,
):
    n_lines = table[by].nunique() + 1
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 3.4), squeeze=False)
    for ax, (value, label) in zip(axes[0], panels):
        trend_panel(ax, table, value, label, by, stat, over)
    # the legend beside the panels, not over the lines (a line per query can fill any corner)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5), ncol=1 + n_lines // 18)
    seeds = sorted(int(s) for s in table["seed"].unique())
    fig.suptitle(f"{title} ({stat} over seeds {seeds}; error bars: std over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def mean_shares(shares: pd.DataFrame) -> pd.DataFrame:
    """Sizes × labels: the share of each label, absent counted as 0, averaged over seeds and queries."""
    wide = shares.pivot_table(
        index=["size_order", "size", "seed", "query"], columns="label", values="share", aggfunc="sum", fill_value=0.0
    )
    return wide.groupby(["size_order", "size"]).mean().droplevel("size_order")


def share_bars(shares: pd.DataFrame):
    """Stacked bars per model size of the shares of each label (category, kind or class) of the top sequences."""
    queries = list(dict.fromkeys(shares["query"]))
    groups = [("mean over queries", shares)]
    if 1 < len(queries) <= MAX_QUERY_PANELS:
        groups += [(q, shares[shares["query"] == q]) for q in queries]
    labels = sorted(shares["label"].unique())
    colors = dict(zip(labels, plt.get_cmap("tab20").colors))
    fig, axes = plt.subplots(1, len(groups), figsize=(2.2 * len(groups) + 1.8, 3.6), squeeze=False, sharey=True)
    for ax, (name, g) in zip(axes[0], groups):
        m = mean_shares(g)
        bottom = pd.Series(0.0, index=m.index)
        for lab in labels:
            v = m[lab] if lab in m else 0.0 * bottom
            ax.bar(m.index, v, bottom=bottom, color=colors[lab], label=lab or "(none)", edgecolor="white", lw=0.3)
            bottom = bottom + v
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("model size")
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_ylabel(f"share of top sequences ({shares['of'].iloc[0]})")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def abstraction_trends(points: pd.DataFrame):
    """Figs. 1, 10–12: token overlap of the top sequences, the top score and the distractor share vs size."""
    return trend_figure(
        points,
        [
            ("jaccard", "token Jaccard with the query (0–1)"),
            ("bm25_percentile", "BM25 percentile (%)"),
            ("top_score", "top influence (score units)"),
            ("distractor_share", "share of distractors (0–1)"),
        ],
        "Top sequences vs model size",
    )


def math_code_trends(points: pd.DataFrame):
    """Figs. 13–14: spurious and related shares of the top sequences of math and code queries vs size."""
    return trend_figure(
        points,
        [("spurious_share", "share spurious (0–1)"), ("related_share", "share related (0–1)")],
        "Math and code queries",
    )


def role_play_trends(points: pd.DataFrame):
    """Figs. 28–29: share of AI-themed and science-fiction shutdown sequences among the top sequences vs size."""
    return trend_figure(
        points,
        [("ai_share", "share of category ai (0–1)"), ("scifi_share", "share of kind scifi_shutdown (0–1)")],
        "Role-play queries",
    )


def cross_lingual_trend(ratio: pd.DataFrame):
    """Fig. 16-style: influence on the translation / on the English query, summed over the English top sequences.

    The median, as in the study's headline (`cross_lingual.summary`: the per-point median over queries and
    languages): each line the median over seeds, the black line the median over query → language series.
    """
    table = ratio.assign(series=ratio["query"] + " → " + ratio["language"])
    fig = trend_figure(
        table,
        [("ratio", "translated / English influence (ratio, median)")],
        "Cross-lingual influence",
        by="series",
        stat="median",
        over="query → language",
    )
    fig.axes[0].axhline(0.0, color="gray", lw=0.8)
    return fig


def cross_lingual_heatmap(heat: pd.DataFrame) -> dict:
    """Fig. 15: rows, the English top sequences of each size; columns, model sizes; colour, the sequence's
    influence on the translated query divided by the summed English influence of that size's top sequences.
    One figure per (query, language), for the first seed of the sweep."""
    out = {}
    seed = heat["seed"].min()
    sizes = heat.drop_duplicates("size_order").sort_values("size_order")["size"].tolist()
    for (q, lang), g in heat[heat["seed"] == seed].groupby(["query", "language"], sort=False):
        m = g.pivot_table(index=["top_at_order", "top_at", "rank"], columns="size_order", values="value").sort_index()
        fig, ax = plt.subplots(figsize=(1.0 * len(sizes) + 2.5, 0.22 * len(m) + 1.4))
        lim = max(float(abs(m.to_numpy()).max()), 1e-12)
        im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(m.shape[1]), [sizes[i] for i in m.columns], fontsize=7)
        ax.set_yticks(range(len(m)), [f"top of {t} #{r}" for _, t, r in m.index], fontsize=5)
        ax.set_xlabel("model size")
        ax.set_title(f"{q} → {lang} (seed {seed})", fontsize=8)
        fig.colorbar(im, ax=ax, label="translated influence / English top sum", shrink=0.8)
        fig.tight_layout()
        out[f"{q}_{lang}"] = fig
    return out
