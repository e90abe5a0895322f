"""Per-sweep-point aggregates of the scale studies and their trend over model size.

A sweep point is one trained model, (size_order, seed). Trends are Spearman correlations between
size_order and a per-point value (the mean over queries), with every seed a repeated x: seeds give the
spread, and no single seed's luck decides the sign.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

POINT = ["size", "size_order", "seed", "params"]


def per_point(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """The mean of `value` over the rows (queries) of each sweep point: columns size_order, seed, value."""
    return table.groupby(["size_order", "seed"], as_index=False)[value].mean()


def sweep_spearman(table: pd.DataFrame, value: str) -> float:
    """Spearman ρ between size_order and the per-point mean of `value` (NaN with one size or a constant value)."""
    p = per_point(table, value).dropna()
    if p["size_order"].nunique() < 2 or p[value].nunique() < 2:
        return float("nan")
    return float(spearmanr(p["size_order"], p[value]).statistic)


def at_size(table: pd.DataFrame, value: str, which: str) -> float:
    """Mean of `value` over the queries and seeds of the smallest (`which="smallest"`) or largest size."""
    order = table["size_order"].min() if which == "smallest" else table["size_order"].max()
    return float(table.loc[table["size_order"] == order, value].mean())


def trend(table: pd.DataFrame, value: str, name: str, rho_name: str | None = None) -> dict[str, float]:
    """The summary keys of one scale trend: `<name>_smallest`, `<name>_largest`, `<rho_name>_vs_size_spearman`."""
    return {
        f"{name}_smallest": at_size(table, value, "smallest"),
        f"{name}_largest": at_size(table, value, "largest"),
        f"{rho_name or name}_vs_size_spearman": sweep_spearman(table, value),
    }


def shares(top: pd.DataFrame, column: str, keys: list[str] | None = None) -> pd.DataFrame:
    """Share of each value of `column` among the rows of each group (default: sweep point × query), long format:
    keys, `of` (the column), `label` (its value), `share`; the shares of a group sum to 1."""
    keys = keys or POINT + ["query"]
    labels = top[column].fillna("").astype(str)
    counts = top.assign(label=labels).groupby(keys + ["label"], sort=False).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(keys)["n"].transform("sum")
    return counts.assign(of=column)[keys + ["of", "label", "share"]]


def share_of(top: pd.DataFrame, column: str, value, name: str, keys: list[str] | None = None) -> pd.DataFrame:
    """Per group (default: sweep point × query), the share `name` of rows whose `column` equals `value`
    (or is one of `value`, a list); a group with none has share 0."""
    keys = keys or POINT + ["query"]
    hit = (
        top[column].astype(str).eq(str(value))
        if not isinstance(value, (list, tuple, set))
        else top[column].astype(str).isin([str(v) for v in value])
    )
    return top.assign(_hit=hit.astype(np.float64)).groupby(keys, sort=False)["_hit"].mean().rename(name).reset_index()
