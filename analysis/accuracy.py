"""Figs. 6–7 from the accuracy study's summary table: correlation with the PBRF per method and task,
and correlation against wall-clock (curvature fitting included)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {"ekfac": "EK-FAC", "kfac": "K-FAC", "lissa": "LiSSA", "identity": "Dot product"}
COLORS = {"ekfac": "tab:blue", "kfac": "tab:cyan", "lissa": "tab:orange", "identity": "tab:gray"}


def summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over test points, per task and method; seconds include curvature fitting."""

    def sem(x):
        x = x.dropna()
        return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan

    g = long.groupby(["task", "method"], sort=False)
    return pd.DataFrame(
        {
            "pearson_mean": g["pearson"].mean(),
            "pearson_sem": g["pearson"].agg(sem),
            "spearman_mean": g["spearman"].mean(),
            "spearman_sem": g["spearman"].agg(sem),
            "seconds": g["seconds"].first(),
            "n_test_points": g["pearson"].size(),
            "n_train_points": g["n_train_points"].first(),
            **{
                c: g[c].first()
                for c in (
                    "pbrf_seconds",
                    "pbrf_converged",
                    "pbrf_linear",
                    "pbrf_grad_ratio_max",
                    "pbrf_eps_half_rel_diff",
                )
                if c in long
            },
        }
    ).reset_index()


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accept the summary table or the long one (one row per test point)."""
    if "pearson_mean" in table:
        return table
    return summary_table(table)


def _task_labels(s: pd.DataFrame, tasks: list[str]) -> dict[str, str]:
    """Task names, marked where the PBRF ground truth failed its convergence or ε vs ε/2 check."""
    out = {}
    for t in tasks:
        g = s[s["task"] == t]
        ok = all(bool(g[c].all()) for c in ("pbrf_converged", "pbrf_linear") if c in g)
        out[t] = t if ok else f"{t}\n(PBRF unverified)"
    return out


def correlation_bars(table: pd.DataFrame, metric: str = "pearson") -> plt.Figure:
    """Fig. 6: mean correlation with the PBRF per task (groups) and method (bars), ± one standard error."""
    s = _summary(table)
    tasks = list(dict.fromkeys(s["task"]))
    methods = list(dict.fromkeys(s["method"]))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.2))
    x = np.arange(len(tasks))
    for i, m in enumerate(methods):
        g = s[s["method"] == m].set_index("task").reindex(tasks)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            g[f"{metric}_mean"],
            width,
            yerr=g[f"{metric}_sem"],
            capsize=2,
            label=LABELS.get(m, m),
            color=COLORS.get(m),
        )
    labels = _task_labels(s, tasks)
    ax.set_xticks(x, [labels[t] for t in tasks])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(f"{metric.capitalize()} r with the PBRF")
    ax.set_title("Influence estimators vs the PBRF", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return fig


def correlation_vs_time(table: pd.DataFrame, metric: str = "pearson") -> plt.Figure:
    """Fig. 7: mean correlation against wall-clock seconds (log scale), one panel per task."""
    s = _summary(table)
    tasks = list(dict.fromkeys(s["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.0), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        g = s[s["task"] == t]
        for _, r in g.iterrows():
            ax.errorbar(
                r["seconds"],
                r[f"{metric}_mean"],
                yerr=r[f"{metric}_sem"],
                fmt="o",
                capsize=2,
                color=COLORS.get(r["method"]),
                label=LABELS.get(r["method"], r["method"]),
            )
        ax.set_xscale("log")
        ax.set_xlabel("wall-clock (s), fitting included")
        ax.set_title(_task_labels(s, [t])[t].replace("\n", " "), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric.capitalize()} r with the PBRF")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
