"""Is the attribution right on a language model: fact tracing (retrieval of the training sequences that state a
query's fact, as in DATE-LM and TrackStar), proponent removal (the query loss after fine-tuning without a method's
top sequences) and the side-by-side comparison of methods with the LDS and their cost.

Retrieval: a method ranks each query's candidate training rows by score (higher first); the relevant rows are those
stating the fact. Per (method, query): the reciprocal rank of the best-ranked relevant row and recall@k. Ties are
broken pessimistically (among equal scores the irrelevant rows come first), so a constant or coarse score cannot
look good by luck of the row order. A query with no relevant row among a method's candidates has no defined rank;
it is dropped (not scored 0), and the dropped queries are reported in `attrs` (see `retrieval_table`).

Means and intervals over queries are `analysis.lds.mean_interval` (standard error, seeded percentile bootstrap).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from .accuracy import COLORS, LABELS  # noqa: E402
from .figures import figure  # noqa: E402
from .lds import mean_interval  # noqa: E402

KEY = ["method", "query"]
#: the comparison's panels: column, y label, whether a line at 0 is the baseline
PANELS = (
    ("mrr", "MRR", False),
    ("recall_at_10", "Recall@10", False),
    ("recall_at_50", "Recall@50", False),
    ("lds", "LDS (Spearman r)", True),
    ("removal_rise", "query loss rise\nafter removing proponents", True),
    ("seconds", "seconds", False),
)
#: the columns `method_comparison` always has (NaN when their input is absent)
COMPARISON_COLUMNS = tuple(
    c for p, _, _ in PANELS for c in ((p,) if p == "seconds" else (p, f"{p}_ci_low", f"{p}_ci_high"))
)


def _need(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; it has {list(df.columns)}")


def _ranked(scores: pd.DataFrame, relevant: pd.DataFrame) -> pd.DataFrame:
    """The candidates (non-NaN scores) with `rank` in the pessimistic order and a `relevant` flag."""
    cand = scores.loc[scores["score"].notna(), ["method", "query", "row", "score"]]
    dup = cand.duplicated(["method", "query", "row"])
    if dup.any():
        raise ValueError(
            f"scores has {int(dup.sum())} repeated (method, query, row); first: {cand[dup].iloc[0].to_dict()}"
        )
    rel = relevant[["query", "row"]].drop_duplicates()
    cand = cand.merge(rel, on=["query", "row"], how="left", indicator="relevant")
    cand["relevant"] = cand["relevant"].eq("both").to_numpy()
    # score descending; among ties the irrelevant rows first (pessimistic)
    cand = cand.sort_values(
        ["method", "query", "score", "relevant"], ascending=[True, True, False, True], kind="stable"
    )
    cand["rank"] = cand.groupby(KEY, sort=False).cumcount() + 1
    cand["n_candidates"] = cand.groupby(KEY, sort=False)["row"].transform("size")
    return cand


def _dropped(scores: pd.DataFrame, relevant: pd.DataFrame, kept: pd.DataFrame) -> dict:
    """{method: [queries without a relevant candidate]}: every query named in scores or relevant, per method."""
    queries = list(dict.fromkeys([*scores["query"], *relevant["query"]]))
    out = {}
    for m in dict.fromkeys(scores["method"]):
        have = set(kept.loc[kept["method"] == m, "query"])
        out[m] = [q for q in queries if q not in have]
    return out


def retrieval_table(scores: pd.DataFrame, relevant: pd.DataFrame, ks=(10, 50)) -> pd.DataFrame:
    """Fact-tracing retrieval per (method, query) from long `scores` (method, query, row, score; NaN: not a
    candidate) and `relevant` (query, row): reciprocal_rank, recall_at_<k> for each k (the share of the query's
    relevant candidates ranked within the top k), n_relevant (relevant candidates), n_candidates,
    first_relevant_rank.

    Ranks are pessimistic: among equal scores the irrelevant rows are ranked first, so a constant score with one
    relevant row in 100 candidates has rank 100. Relevant rows that are not candidates are not counted. A
    (method, query) without a relevant candidate (or with no candidates) is dropped rather than scored 0, since
    a filter, not the method, decided it; `attrs["dropped_queries"]` ({method: [query]}) and `attrs["n_dropped"]`
    ({method: count}) report them. Methods and queries keep their first-appearance order."""
    _need(scores, ["method", "query", "row", "score"], "retrieval_table's scores")
    _need(relevant, ["query", "row"], "retrieval_table's relevant")
    cand = _ranked(scores, relevant)
    hits = cand[cand["relevant"]].copy()
    for k in ks:
        hits[f"recall_at_{k}"] = (hits["rank"] <= k).astype(float)
    g = hits.groupby(KEY, sort=False)
    out = g.agg(
        first_relevant_rank=("rank", "min"),
        n_relevant=("rank", "size"),
        n_candidates=("n_candidates", "first"),
        **{f"recall_at_{k}": (f"recall_at_{k}", "mean") for k in ks},
    ).reset_index()
    out.insert(2, "reciprocal_rank", 1.0 / out["first_relevant_rank"])
    out = _first_appearance(out, scores)
    dropped = _dropped(scores, relevant, out)
    out.attrs["dropped_queries"] = dropped
    out.attrs["n_dropped"] = {m: len(q) for m, q in dropped.items()}
    return out


def _first_appearance(df: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """`df` sorted by method, then query, in the order they first appear in `like`."""
    order = {c: {v: i for i, v in enumerate(dict.fromkeys(like[c]))} for c in KEY}
    pos = [df[c].map(order[c]) for c in KEY]
    return df.assign(_m=pos[0], _q=pos[1]).sort_values(["_m", "_q"]).drop(columns=["_m", "_q"]).reset_index(drop=True)


def _summarize(per_query: pd.DataFrame, by, metrics: dict, mean_suffix: str, options: dict) -> pd.DataFrame:
    """Per group of `by`: for each {column: name} of `metrics`, name<mean_suffix>, name_sem, name_ci_low,
    name_ci_high (mean_interval over the group's rows), and n_queries (rows with the first metric defined)."""
    by = list(by)
    _need(per_query, by + list(metrics), "the summary")
    rows = []
    for key, g in per_query.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for col, name in metrics.items():
            mean, sem, lo, hi = mean_interval(g[col].to_numpy(dtype=float), **options)
            row.update({f"{name}{mean_suffix}": mean, f"{name}_sem": sem, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        row["n_queries"] = int(g[next(iter(metrics))].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def retrieval_summary(per_query: pd.DataFrame, by=("method",), **mean_interval_options) -> pd.DataFrame:
    """Per group of `by` (any columns of `per_query`, e.g. ("method", "direction")): mrr (mean reciprocal rank)
    and each recall_at_<k> present, with <name>_sem, <name>_ci_low, <name>_ci_high from `mean_interval`
    (options passed on), and n_queries. Dropped queries are not in `per_query`, so they count nowhere."""
    recalls = [c for c in per_query.columns if c.startswith("recall_at_")]
    metrics = {"reciprocal_rank": "mrr", **{c: c for c in recalls}}
    return _summarize(per_query, by, metrics, "", mean_interval_options)


def removal_table(losses: pd.DataFrame) -> pd.DataFrame:
    """Proponent removal per (method, query): rise = loss_removed − loss_full, the query loss after fine-tuning
    without the method's top sequences minus with all of them (positive: the removed rows did support the
    query). Every input column is kept; "random" is a method like the others (the baseline to beat)."""
    _need(losses, ["method", "query", "loss_full", "loss_removed"], "removal_table")
    return losses.assign(rise=losses["loss_removed"] - losses["loss_full"]).reset_index(drop=True)


def removal_summary(per_query: pd.DataFrame, by=("method",), **mean_interval_options) -> pd.DataFrame:
    """Per group of `by`: rise_mean, rise_sem, rise_ci_low, rise_ci_high (`mean_interval`) and n_queries."""
    return _summarize(per_query, by, {"rise": "rise"}, "_mean", mean_interval_options)


def _renamed(df: pd.DataFrame | None, names: dict) -> pd.DataFrame | None:
    """The key columns and the renamed value columns of one input, checked for one row per key."""
    if df is None:
        return None
    _need(df, ["method", *names], "method_comparison's input")
    keys = [c for c in ("model", "method") if c in df]
    dup = df.duplicated(keys)
    if dup.any():
        raise ValueError(f"method_comparison needs one row per {keys}; repeated: {df.loc[dup, keys].iloc[0].tolist()}")
    return df[keys + list(names)].rename(columns=names)


def _inputs(retrieval, lds, removal, seconds) -> list[pd.DataFrame]:
    parts = []
    if retrieval is not None:
        cols = [c for c in retrieval.columns if c.startswith(("mrr", "recall_at_")) and not c.endswith("_sem")]
        parts.append(_renamed(retrieval, {c: c for c in cols}))
    parts.append(_renamed(lds, {"lds_mean": "lds", "lds_ci_low": "lds_ci_low", "lds_ci_high": "lds_ci_high"}))
    rise = {"rise_mean": "removal_rise", "rise_ci_low": "removal_rise_ci_low", "rise_ci_high": "removal_rise_ci_high"}
    parts.append(_renamed(removal, rise))
    parts.append(_renamed(seconds, {"seconds": "seconds"}))
    return [p for p in parts if p is not None]


def _every_model(parts: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Inputs without `model` repeated for every model the others name (none: unchanged)."""
    models = list(dict.fromkeys(v for p in parts if "model" in p for v in p["model"]))
    if not models:
        return parts
    each = pd.DataFrame({"model": models})
    return [p if "model" in p else each.merge(p, how="cross") for p in parts]


def method_comparison(
    retrieval: pd.DataFrame | None,
    lds: pd.DataFrame | None,
    removal: pd.DataFrame | None,
    seconds: pd.DataFrame | None,
) -> pd.DataFrame:
    """One row per method (per model and method when an input has a `model` column: a sweep over sizes), every
    available measure side by side: mrr, recall_at_<k> (with their _ci_low/_ci_high), lds, removal_rise (each
    with _ci_low/_ci_high) and seconds. Outer-joined, so a method missing from an input has NaN there; any input
    may be None, and the columns in COMPARISON_COLUMNS are always present (NaN when their input is absent). An
    input without `model` (e.g. one timing per method) applies to every model the others name. Inputs: a `retrieval_summary`,
    an `lds_summary` (lds_mean, lds_ci_low, lds_ci_high), a `removal_summary` (rise_mean, rise_ci_low,
    rise_ci_high) and seconds (method, seconds). Order: models and methods as they first appear."""
    parts = _inputs(retrieval, lds, removal, seconds)
    if not parts:
        return pd.DataFrame(columns=["method", *COMPARISON_COLUMNS])
    parts = _every_model(parts)
    keys = [c for c in ("model", "method") if c in parts[0]]
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p, on=keys, how="outer")
    order = {c: {v: i for i, v in enumerate(dict.fromkeys(v for p in parts if c in p for v in p[c]))} for c in keys}
    out = out.assign(**{f"_{c}": out[c].map(order[c]) for c in keys}).sort_values([f"_{c}" for c in keys])
    out = out.drop(columns=[f"_{c}" for c in keys]).reset_index(drop=True)
    for c in COMPARISON_COLUMNS:
        if c not in out:
            out[c] = np.nan
    return out[keys + list(COMPARISON_COLUMNS) + [c for c in out.columns if c not in (*keys, *COMPARISON_COLUMNS)]]


def _panels(table: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The panels with at least one finite value; recall at other k than 10 and 50 after those."""
    extra = [c for c in table.columns if c.startswith("recall_at_") and c[10:].isdigit()]
    panels = list(PANELS[:3]) + [
        (c, f"Recall@{c[10:]}", False) for c in extra if c not in ("recall_at_10", "recall_at_50")
    ]
    panels += list(PANELS[3:])
    return [p for p in panels if p[0] in table and np.isfinite(table[p[0]].to_numpy(dtype=float)).any()]


def _errors(g: pd.DataFrame, col: str):
    """Asymmetric error bars from the interval columns, or None where the table has none."""
    if f"{col}_ci_low" not in g or f"{col}_ci_high" not in g or g[f"{col}_ci_low"].isna().all():
        return None
    err = np.vstack([g[col] - g[f"{col}_ci_low"], g[f"{col}_ci_high"] - g[col]]).astype(float)
    return np.nan_to_num(err.clip(min=0))


def _color(method: str, i: int) -> str:
    return COLORS.get(method, f"C{i % 10}")


def _bars(ax, table: pd.DataFrame, col: str, methods: list, models: list | None) -> None:
    """Bars per method (x: methods), or per method within each model size (x: model sizes)."""
    if models is None:
        g = table.set_index("method").reindex(methods)
        x = np.arange(len(methods))
        ax.bar(x, g[col], yerr=_errors(g, col), capsize=3, color=[_color(m, i) for i, m in enumerate(methods)])
        ax.set_xticks(x, [LABELS.get(m, m) for m in methods], rotation=30, ha="right", fontsize=7)
        return
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(models))
    for i, m in enumerate(methods):
        g = table[table["method"] == m].set_index("model").reindex(models)
        off = (i - (len(methods) - 1) / 2) * width
        ax.bar(x + off, g[col], width, yerr=_errors(g, col), capsize=2, color=_color(m, i), label=LABELS.get(m, m))
    ax.set_xticks(x, [str(s) for s in models], fontsize=7)
    ax.set_xlabel("model size", fontsize=8)


def comparison_figure(table: pd.DataFrame) -> plt.Figure:
    """The methods side by side (a `method_comparison` table): one panel per measure present (MRR, Recall@k, LDS,
    proponent-removal loss rise, seconds), a bar per method with its bootstrap interval, grouped by model size
    when the table has `model`. LDS and the loss rise have their baseline (0: no better than chance) drawn."""
    panels = _panels(table)
    methods = list(dict.fromkeys(table["method"]))
    models = list(dict.fromkeys(table["model"])) if "model" in table else None
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(0.8 + 2.6 * max(len(panels), 1), 3.2), squeeze=False)
    for ax, (col, label, zero) in zip(axes[0], panels):
        _bars(ax, table, col, methods, models)
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(label.split("\n")[0], fontsize=9)
        if zero:
            ax.axhline(0, color="black", lw=0.6)
        if col == "seconds" and (table[col].dropna() > 0).all():
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, …: labelled in a narrow range
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="y", alpha=0.3)
    if models is not None and panels:
        axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


#: the side-by-side figure of the attribution checks, drawn by fact_tracing, lds and attribution alike
COMPARISON_FIGURE = figure(
    "attribution_comparison",
    comparison_figure,
    "attribution_comparison",
    caption="Each attribution method side by side (bars: bootstrap intervals): look for which methods beat "
    "the BM25 baseline and the zero lines (no better than chance).",
)
