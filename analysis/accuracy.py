"""Figs. 6–7 from the accuracy study's summary table: correlation with each reference (the PBRF, the exact damped
Gauss–Newton) per method and task, correlation against wall-clock (curvature fitting included), correlation against
the damping factor, and the comparison with the paper's "EK-FAC ≈ LiSSA ≫ dot product" computed from them.

A table without `reference`, `damping_factor` or `main_damping` columns (one reference, one damping) is read as
against the PBRF at the main damping."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

LABELS = {
    "ekfac": "EK-FAC",
    "kfac": "K-FAC",
    "lissa": "LiSSA",
    "identity": "Dot product",
    "pbrf": "PBRF",
    "exact_gn": "Exact GN",
}
COLORS = {
    "ekfac": "tab:blue",
    "kfac": "tab:cyan",
    "lissa": "tab:orange",
    "identity": "tab:gray",
    "pbrf": "tab:red",
    "exact_gn": "black",
}
REFERENCE_TITLES = {"pbrf": "the PBRF", "exact_gn": "the exact damped GN"}
#: columns that describe a (task, damping, reference, method) group, not a test point: carried into the summary
GROUP_COLUMNS = (
    "main_damping",
    "reference_verified",
    "reference_seconds",
    "exact_relative_residual",
    "exact_iterations",
    "lissa_relative_residual",
    "pbrf_seconds",
    "pbrf_converged",
    "pbrf_linear",
    "pbrf_grad_ratio_max",
    "pbrf_eps_half_rel_diff",
)


def summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over test points, per task, damping factor, reference and method (those of the
    four the table has); seconds include curvature fitting."""

    def sem(x):
        x = x.dropna()
        return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan

    keys = [c for c in ("task", "damping_factor", "reference", "method") if c in long]
    g = long.groupby(keys, sort=False)
    return pd.DataFrame(
        {
            "pearson_mean": g["pearson"].mean(),
            "pearson_sem": g["pearson"].agg(sem),
            "spearman_mean": g["spearman"].mean(),
            "spearman_sem": g["spearman"].agg(sem),
            "seconds": g["seconds"].first(),
            "n_test_points": g["pearson"].size(),
            "n_train_points": g["n_train_points"].first(),
            **{c: g[c].first() for c in GROUP_COLUMNS if c in long},
        }
    ).reset_index()


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accept the summary table or the long one (one row per test point)."""
    if "pearson_mean" in table:
        return table
    return summary_table(table)


def _main(s: pd.DataFrame) -> pd.DataFrame:
    """The main damping's rows (all rows of a table without a sweep)."""
    return s[s["main_damping"].astype(bool)] if "main_damping" in s else s


def _references(s: pd.DataFrame) -> list[str]:
    """The references present, PBRF first (a table without a `reference` column is against the PBRF)."""
    return [r for r in REFERENCE_TITLES if r in set(s["reference"])] if "reference" in s else ["pbrf"]


def _of(s: pd.DataFrame, reference: str) -> pd.DataFrame:
    return s[s["reference"] == reference] if "reference" in s else s


def _verified(g: pd.DataFrame, reference: str = "pbrf") -> bool:
    """Whether a task's reference passed its checks (the PBRF: converged and linear; the exact GN: its residual)."""
    if reference == "pbrf":
        return all(bool(g[c].all()) for c in ("pbrf_converged", "pbrf_linear") if c in g)
    return bool(g["reference_verified"].all()) if "reference_verified" in g else True


def _task_labels(s: pd.DataFrame, tasks: list[str], reference: str = "pbrf") -> dict[str, str]:
    """Task names, marked where the reference failed its checks (PBRF: convergence or ε vs ε/2; exact: residual)."""
    name = {"pbrf": "PBRF", "exact_gn": "exact GN"}.get(reference, reference)
    out = {}
    for t in tasks:
        g = s[s["task"] == t]
        out[t] = t if _verified(g, reference) else f"{t}\n({name} unverified)"
    return out


def correlation_bars(table: pd.DataFrame, metric: str = "pearson") -> plt.Figure:
    """Fig. 6: mean correlation with each reference (a panel each: the PBRF, the exact damped GN) per task (groups)
    and method (bars), ± one standard error, at the main damping. Against the exact GN the PBRF is a bar too."""
    s = _main(_summary(table))
    refs = _references(s)
    tasks = list(dict.fromkeys(s["task"]))
    fig, axes = plt.subplots(1, len(refs), figsize=((1.6 + 1.4 * len(tasks)) * len(refs), 3.2), squeeze=False)
    for ax, ref in zip(axes[0], refs):
        r = _of(s, ref)
        methods = list(dict.fromkeys(r["method"]))
        width = 0.8 / max(len(methods), 1)
        x = np.arange(len(tasks))
        for i, m in enumerate(methods):
            g = r[r["method"] == m].set_index("task").reindex(tasks)
            ax.bar(
                x + (i - (len(methods) - 1) / 2) * width,
                g[f"{metric}_mean"],
                width,
                yerr=g[f"{metric}_sem"],
                capsize=2,
                label=LABELS.get(m, m),
                color=COLORS.get(m),
            )
        labels = _task_labels(r, tasks, ref)
        ax.set_xticks(x, [labels[t] for t in tasks])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel(f"{metric.capitalize()} r with {REFERENCE_TITLES[ref]}")
        ax.set_title(f"Influence estimators vs {REFERENCE_TITLES[ref]}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def correlation_vs_time(table: pd.DataFrame, metric: str = "pearson") -> plt.Figure:
    """Fig. 7: mean correlation against wall-clock seconds (log scale) at the main damping, one panel per task and
    reference (rows: the PBRF, the exact damped GN)."""
    s = _main(_summary(table))
    refs = _references(s)
    tasks = list(dict.fromkeys(s["task"]))
    fig, axes = plt.subplots(len(refs), len(tasks), figsize=(3.0 * len(tasks), 3.0 * len(refs)), squeeze=False)
    for row, ref in zip(axes, refs):
        r = _of(s, ref)
        for ax, t in zip(row, tasks):
            g = r[r["task"] == t]
            for _, m in g.iterrows():
                ax.errorbar(
                    m["seconds"],
                    m[f"{metric}_mean"],
                    yerr=m[f"{metric}_sem"],
                    fmt="o",
                    capsize=2,
                    color=COLORS.get(m["method"]),
                    label=LABELS.get(m["method"], m["method"]),
                )
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow range would label every minor tick
            ax.set_xlabel("wall-clock (s), fitting included")
            ax.set_title(_task_labels(g, [t], ref)[t].replace("\n", " "), fontsize=9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{metric.capitalize()} r with {REFERENCE_TITLES[ref]}")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def correlation_vs_damping(table: pd.DataFrame, metric: str = "pearson") -> plt.Figure:
    """Correlation against the damping factor (log scale), one panel per task: each method against the exact damped
    GN at every factor of the sweep (lines), and against the PBRF at the main damping (open markers; dotted line)."""
    s = _summary(table)
    tasks = list(dict.fromkeys(s["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.0), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        g = s[s["task"] == t]
        ex = _of(g, "exact_gn") if "reference" in g else g.iloc[:0]
        for m, d in ex.groupby("method", sort=False):
            d = d.sort_values("damping_factor")
            ax.errorbar(
                d["damping_factor"],
                d[f"{metric}_mean"],
                yerr=d[f"{metric}_sem"],
                fmt="o-",
                ms=4,
                capsize=2,
                color=COLORS.get(m),
                label=f"{LABELS.get(m, m)} vs exact GN",
            )
        pb = _main(_of(g, "pbrf"))
        for _, r in pb.iterrows():
            ax.errorbar(
                r["damping_factor"] if "damping_factor" in r else 0.1,
                r[f"{metric}_mean"],
                yerr=r[f"{metric}_sem"],
                fmt="s",
                mfc="none",
                capsize=2,
                color=COLORS.get(r["method"]),
                label=f"{LABELS.get(r['method'], r['method'])} vs PBRF",
            )
        if len(pb) and "damping_factor" in pb:
            ax.axvline(float(pb["damping_factor"].iloc[0]), color="gray", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("damping factor (× mean eigenvalue of G_ℓ)")
        unverified = not _verified(ex, "exact_gn") if len(ex) else False
        ax.set_title(t + (" (exact GN unverified)" if unverified else ""), fontsize=9)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric.capitalize()} r")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def lds_bars(table: pd.DataFrame) -> plt.Figure:
    """The linear datamodeling score per method, one panel per tabular task (from `accuracy_lds_summary`): the mean
    Spearman r over test points between each method's subset sums and the retrained models' measured f, with its
    bootstrap interval; the retraining reference beside the PBRF's Figs. 6-7."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.6 + 2.6 * len(tasks), 3.0), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        g = table[table["task"] == t].reset_index(drop=True)
        x = np.arange(len(g))
        err = np.vstack([g["lds_mean"] - g["lds_ci_low"], g["lds_ci_high"] - g["lds_mean"]]).clip(min=0)
        ax.bar(
            x,
            g["lds_mean"],
            yerr=np.nan_to_num(err),
            capsize=3,
            color=[COLORS.get(m, "tab:green") for m in g["method"]],
        )
        ax.set_xticks(x, [LABELS.get(m, m) for m in g["method"]], rotation=30, ha="right", fontsize=7)
        n = int(g["n_subsets"].iloc[0]) if "n_subsets" in g else 0
        ax.set_title(f"{t} ({n} retrained subsets)", fontsize=9)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(min(-0.1, float(g["lds_ci_low"].min()) - 0.05), 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("LDS (Spearman r, mean over test points)")
    fig.tight_layout()
    return fig


def _holds(r: pd.Series) -> tuple[bool, str] | None:
    """The paper's "EK-FAC ≈ LiSSA ≫ dot product" on one task's mean Pearson r per method (the scorecard's criterion:
    |EK-FAC − LiSSA| ≤ 0.1 and EK-FAC − dot ≥ 0.1): (holds, the numbers and what fails)."""
    if not {"ekfac", "lissa", "identity"} <= set(r.index):
        return None
    e, li, d = float(r["ekfac"]), float(r["lissa"]), float(r["identity"])
    why = [f"|EK-FAC − LiSSA| = {abs(e - li):.2f}"] if not abs(e - li) <= 0.1 else []
    why += [f"EK-FAC − dot = {e - d:.2f}"] if not e - d >= 0.1 else []
    return not why, f"EK-FAC {e:.2f}, LiSSA {li:.2f}, dot {d:.2f}" + (f" [{', '.join(why)}]" if why else "")


def paper_comparison(table: pd.DataFrame) -> dict[str, Any]:
    """The paper's "EK-FAC ≈ LiSSA ≫ dot product" judged per reference and task from the main damping's mean
    Pearson r: {"finding": one sentence, "holds_vs_<reference>": "k of n tasks"}."""
    s = _main(_summary(table))
    out, parts = {}, []
    for ref in _references(s):
        r = _of(s, ref)
        judged = []
        for t, g in r.groupby("task", sort=False):
            h = _holds(g.set_index("method")["pearson_mean"])
            if h is not None:
                judged.append((t, *h, _verified(g, ref)))
        if not judged:
            continue
        k = sum(ok for _, ok, _, _ in judged)
        out[f"holds_vs_{ref}"] = f"{k} of {len(judged)} tasks"
        tasks = "; ".join(
            f"{t}: {shown}, {'holds' if ok else 'does not hold'}" + ("" if v else " (reference unverified)")
            for t, ok, shown, v in judged
        )
        parts.append(f"against {REFERENCE_TITLES[ref]} it holds on {k} of {len(judged)} tasks ({tasks})")
    out["finding"] = (
        "The paper's EK-FAC ≈ LiSSA ≫ dot product (mean Pearson r at the main damping; holds: |EK-FAC − LiSSA| ≤ 0.1 "
        "and EK-FAC − dot ≥ 0.1): " + ("; ".join(parts) if parts else "no data (needs ekfac, lissa and identity)") + "."
    )
    return out
