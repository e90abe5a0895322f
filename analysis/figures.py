"""Paper-style figures drawn from result tables only, saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .accuracy import correlation_bars, correlation_vs_time  # noqa: E402


def save(fig, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf`; return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def rank_correlation(table: pd.DataFrame, title: str = "Query batching: rank-r vs full-rank scores") -> plt.Figure:
    """Fig. 3: Pearson correlation of rank-r and full-rank scores per query, against r."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = list(table.groupby("query", sort=False))
    many = len(groups) > 10  # past ten queries a legend would hide the plot: draw them alike, labelled once
    for i, (query, g) in enumerate(groups):
        g = g.sort_values("rank")
        if many:
            ax.plot(g["rank"], g["pearson"], color="tab:blue", lw=0.8, alpha=0.35,
                    label=f"each of {len(groups)} queries" if i == 0 else None)
        else:
            ax.plot(g["rank"], g["pearson"], marker="o", lw=1, alpha=0.7, label=query)
    mean = table.groupby("rank")["pearson"].mean()
    ax.plot(mean.index, mean.values, color="black", lw=2.5, marker="s", label="mean")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["rank"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("query gradient rank r")
    ax.set_ylabel("Pearson r with full rank")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return fig


def _per_query(draw):
    """A drawing of one query's rows, made for every query of the table: {query: Figure}."""
    def each(df: pd.DataFrame) -> dict:
        return {str(q): draw(g) for q, g in df.groupby("query", sort=False)}
    return each


def _lazy(module: str, function: str):
    """A drawing function imported on first use, so that importing this registry stays cheap."""
    def draw(*tables):
        from importlib import import_module
        return getattr(import_module(f"analysis.{module}"), function)(*tables)
    return draw


#: figures drawn from each result table, by table name: (file stem, drawing function). A function returns a
#: Figure, or {suffix: Figure} for one figure per query (saved as `<stem>_<suffix>`).
FIGURES_BY_TABLE = {
    "query_rank": [("fig3_query_rank", rank_correlation)],
    "accuracy_summary": [("fig6_accuracy", correlation_bars), ("fig7_accuracy_vs_time", correlation_vs_time)],
    "concentration": [("fig9_concentration", _lazy("concentration", "concentration_figure"))],
    "layer_blocks": [("fig17_layerwise", _lazy("layers", "layer_figure"))],
    "token_heatmap": [("fig4_token_heatmap", _lazy("layers", "token_heatmap_figure"))],
    "memorization": [("fig22_memorization", _lazy("memorization", "memorization_figure"))],
    "top_tokens": [("top_sequences", _per_query(_lazy("listings", "listing_figure")))],
    "abstraction_points": [("fig10_abstraction_trends", _lazy("scale", "abstraction_trends"))],
    "abstraction_categories": [("fig11_abstraction_categories", _lazy("scale", "share_bars"))],
    "math_code_points": [("fig13_math_code_trends", _lazy("scale", "math_code_trends"))],
    "math_code_relations": [("fig14_math_code_relations", _lazy("scale", "share_bars"))],
    "cross_lingual_heatmap": [("fig15_cross_lingual", _lazy("scale", "cross_lingual_heatmap"))],
    "cross_lingual_ratio": [("fig16_cross_lingual_ratio", _lazy("scale", "cross_lingual_trend"))],
    "role_play_points": [("fig28_role_play_trends", _lazy("scale", "role_play_trends"))],
    "role_play_categories": [("fig29_role_play_categories", _lazy("scale", "share_bars"))],
    "role_play_kinds": [("fig29_role_play_kinds", _lazy("scale", "share_bars"))],
    "word_order_partitions": [("fig23_26_word_order", _lazy("word_order", "partition_figures"))],
    "word_order_ratios": [("fig27_word_order_ratio", _lazy("word_order", "ratio_figure"))],
}

#: figures that read several tables: (file stem, function, table names passed in order)
FIGURES_FROM_TABLES = [
    ("fig8_sparsity_ccdf", _lazy("sparsity", "ccdf_figure"), ("scores", "sparsity_fits", "sparsity")),
]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _save_drawn(drawn, stem: Path) -> list[Path]:
    if isinstance(drawn, dict):
        return [p for k, fig in drawn.items() for p in save(fig, stem.parent / f"{stem.name}_{_safe(k)}")]
    return save(drawn, stem)


def draw_all(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Every figure (and HTML listing) that the given tables support, saved into `out_dir/figures`."""
    out = Path(out_dir) / "figures"
    written = []
    for name, df in tables.items():
        if not isinstance(df, pd.DataFrame) or df.empty:
            continue
        for stem, draw in FIGURES_BY_TABLE.get(name, []):
            written += _save_drawn(draw(df), out / stem)
    for stem, draw, names in FIGURES_FROM_TABLES:
        if all(isinstance(tables.get(n), pd.DataFrame) and not tables[n].empty for n in names):
            written += _save_drawn(draw(*(tables[n] for n in names)), out / stem)
    if isinstance(tables.get("top_tokens"), pd.DataFrame) and not tables["top_tokens"].empty:
        from .listings import write_listings
        out.mkdir(parents=True, exist_ok=True)
        written.append(write_listings(tables["top_tokens"], out))
    return written
