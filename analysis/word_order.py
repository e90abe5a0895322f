"""Word order (Figs. 23–27): influence per partition of synthetic sequences, the flipped / same-order ratios, figures.

Pure functions of the study's long table `word_order_scores` (one row per scale point × query × sequence).
A ratio is mean influence of one partition over the mean of another, per (size, seed, query); the headline
is its median over forward queries and seeds at one size. Ratios are reported as measured, whatever their sign.

The per-answer-token view (`word_order_answer_tokens`, one row per answer token of each query × sequence) gives
each partition's share of summed influence on the answer's first token and on its later ones (`analysis.answer_tokens`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .answer_tokens import first_token_shares, median_share

POINT = ["size", "size_order", "seed", "params"]
QUERY = ["query", "query_order", "fact_id"]
PARTITIONS = ["rewording", "completion_removed", "semantic_change", "irrelevant", "flipped", "flipped_relation_removed"]
RATIOS = [
    "flipped_over_same_order",
    "completion_removed_over_same_order",
    "flipped_relation_removed_over_flipped",
    "cross_lingual_flipped_over_same_order",
]


def same_and_flipped(query_order: str) -> tuple[str, str]:
    """(same-order partition, flipped-order partition) for a query: a flipped query's same order is `flipped`."""
    return ("flipped", "rewording") if query_order == "flipped" else ("rewording", "flipped")


def partition_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, median, std (ddof 0) and count of influence per scale point, query, partition and language."""
    keys = POINT + QUERY + ["partition", "language", "order_vs_query"]
    g = scores.groupby(keys, sort=False)["score"]
    return g.agg(mean="mean", median="median", std=lambda s: float(np.std(s)), n="size").reset_index()


def _ratio(num: pd.Series, den: pd.Series) -> float:
    """mean(num) / mean(den); NaN when either side is empty or the denominator is exactly 0."""
    if num.empty or den.empty or den.mean() == 0:
        return float("nan")
    return float(num.mean() / den.mean())


def _query_ratios(g: pd.DataFrame, query_order: str) -> dict:
    same, flip = same_and_flipped(query_order)
    en, cross = g[g["language"] == "en"], g[g["language"] != "en"]
    part = lambda df, p: df.loc[df["partition"] == p, "score"]  # noqa: E731
    forward = query_order == "forward"  # completion removal and the names-only text are defined for forward queries
    out = {
        "same_order_mean": float(part(en, same).mean()),
        "flipped_mean": float(part(en, flip).mean()),
        "flipped_over_same_order": _ratio(part(en, flip), part(en, same)),
        "completion_removed_over_same_order": _ratio(part(en, "completion_removed"), part(en, same))
        if forward
        else np.nan,
        "flipped_relation_removed_over_flipped": _ratio(part(en, "flipped_relation_removed"), part(en, flip))
        if forward
        else np.nan,
        "cross_lingual_flipped_over_same_order": _ratio(part(cross, flip), part(cross, same)),
    }
    for lang in sorted(set(cross["language"])):
        c = cross[cross["language"] == lang]
        out[f"cross_lingual_flipped_over_same_order_{lang}"] = _ratio(part(c, flip), part(c, same))
    return out


def ratio_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per scale point and query: flipped/same order, completion removed/same order, names-only/flipped, cross-lingual."""
    rows = [
        {**dict(zip(POINT + QUERY, key)), **_query_ratios(g, key[len(POINT) + 1])}
        for key, g in scores.groupby(POINT + QUERY, sort=False)
    ]
    return pd.DataFrame(rows)


def word_order_summary(ratios: pd.DataFrame) -> dict:
    """Each ratio's median over forward queries and seeds, at the largest size and (suffix `_smallest`) the smallest."""
    fwd = ratios[ratios["query_order"] == "forward"]
    largest, smallest = ratios["size_order"].max(), ratios["size_order"].min()
    out = {}
    for suffix, order in (("", largest), ("_smallest", smallest)):
        at = fwd[fwd["size_order"] == order]
        for r in RATIOS:
            out[r + suffix] = float(at[r].median()) if at[r].notna().any() else float("nan")
    flipped_q = ratios[(ratios["query_order"] == "flipped") & (ratios["size_order"] == largest)]
    out["flipped_queries_flipped_over_same_order"] = (
        float(flipped_q["flipped_over_same_order"].median()) if len(flipped_q) else float("nan")
    )
    out["largest_size"] = str(ratios.loc[ratios["size_order"] == largest, "size"].iloc[0])
    out["smallest_size"] = str(ratios.loc[ratios["size_order"] == smallest, "size"].iloc[0])
    out["forward_queries"] = int(fwd["query"].nunique())
    out["seeds"] = int(ratios["seed"].nunique())
    return out


def _bar_label(partition: str, language: str, order_vs_query: str) -> str:
    lang = "" if language == "en" else f" [{language}]"
    order = {"same": "same order", "flipped": "flipped order"}.get(order_vs_query, "")
    return f"{partition.replace('_', ' ')}{lang}" + (f"\n({order})" if order else "")


def _bar_order(row) -> tuple:
    return (
        row["language"] != "en",
        row["language"],
        PARTITIONS.index(row["partition"]) if row["partition"] in PARTITIONS else 99,
    )


def partition_figure(partitions: pd.DataFrame):
    """Figs. 23–26 for one query: mean influence per partition, model sizes side by side, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    query, order = partitions["query"].iloc[0], partitions["query_order"].iloc[0]
    per_seed = partitions.groupby(["size_order", "size", "partition", "language", "order_vs_query"], sort=False)["mean"]
    bars = per_seed.agg(mean="mean", spread=lambda s: float(np.std(s))).reset_index()
    cats = bars.drop_duplicates(["partition", "language"])
    cats = cats.iloc[sorted(range(len(cats)), key=lambda i: _bar_order(cats.iloc[i]))]
    sizes = bars[["size_order", "size"]].drop_duplicates().sort_values("size_order")
    x, width = np.arange(len(cats)), 0.8 / max(len(sizes), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cats)), 3.8))
    for k, (_, s) in enumerate(sizes.iterrows()):
        b = bars[bars["size"] == s["size"]].set_index(["partition", "language"])
        idx = [(p, l) for p, l in zip(cats["partition"], cats["language"])]
        ax.bar(
            x + (k - (len(sizes) - 1) / 2) * width,
            b["mean"].reindex(idx).values,
            width,
            yerr=b["spread"].reindex(idx).values,
            capsize=2,
            label=str(s["size"]),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        [_bar_label(r["partition"], r["language"], r["order_vs_query"]) for _, r in cats.iterrows()],
        rotation=35,
        ha="right",
        fontsize=7,
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("mean influence (score units; hypothetical addition)")
    note = "" if order == "forward" else "; partitions named from the fact's side: 'flipped' = this query's own order"
    ax.set_title(f"Word order: {query} ({order} query){note}", fontsize=8)
    ax.legend(title="model (error: std over seeds)", fontsize=7, title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def partition_figures(partitions: pd.DataFrame) -> dict:
    """One Figs. 23–26 bar chart per query: {query: Figure}."""
    return {str(q): partition_figure(g) for q, g in partitions.groupby("query", sort=False)}


def ratio_figure(ratios: pd.DataFrame):
    """Fig. 27-style: flipped / same-order influence against model size, English and cross-lingual; each seed a dot,
    the line the median over seeds; forward queries solid, flipped queries dashed."""
    import matplotlib.pyplot as plt

    panels = [
        ("flipped_over_same_order", "English sequences"),
        ("cross_lingual_flipped_over_same_order", "Turkish + Korean sequences"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for ax, (col, title) in zip(axes, panels):
        for i, ((query, order), g) in enumerate(ratios.groupby(["query", "query_order"], sort=False)):
            if g[col].isna().all():
                continue
            color = f"C{i % 10}"
            ax.scatter(g["params"], g[col], s=12, color=color, alpha=0.6)
            med = g.groupby("params")[col].median()
            ax.plot(
                med.index,
                med.values,
                color=color,
                ls="-" if order == "forward" else "--",
                marker="o",
                ms=3,
                label=query,
            )
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel("non-embedding parameters (log scale)")
        ax.set_title(f"flipped / same order: {title}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ratio of mean influence")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, fontsize=6, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.12)
        )
    return fig


def answer_token_shares(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per scale point, query, partition and language: the share of the partition's summed influence on the first
    answer token and on the later ones, with a `category` label and `category_order` for the figure."""
    keys = POINT + QUERY + ["partition", "language", "order_vs_query"]
    shares = first_token_shares(tokens, keys)
    shares["category"] = [
        _bar_label(p, l, o) for p, l, o in zip(shares["partition"], shares["language"], shares["order_vs_query"])
    ]
    order = {c: i for i, c in enumerate(sorted(set(shares["category"]), key=lambda c: _category_key(shares, c)))}
    shares["category_order"] = shares["category"].map(order)
    return shares


def _category_key(shares: pd.DataFrame, category: str) -> tuple:
    return _bar_order(shares[shares["category"] == category].iloc[0])


def answer_token_summary(shares: pd.DataFrame) -> dict:
    """The later answer tokens' share of the English same-order (rewording) and flipped-order influence: each a
    median over forward queries whose answer has more than one token, and seeds, at the largest size (NaN when
    none has)."""
    fwd = shares[(shares["query_order"] == "forward") & (shares["language"] == "en")]
    multi = fwd[(fwd["size_order"] == fwd["size_order"].max()) & (fwd["answer_tokens"] > 1)]
    same, flip = same_and_flipped("forward")
    return {
        "answer_later_tokens_share_same_order": median_share(fwd[fwd["partition"] == same]),
        "answer_later_tokens_share_flipped": median_share(fwd[fwd["partition"] == flip]),
        "answer_multi_token_queries": int(multi["query"].nunique()),
    }
