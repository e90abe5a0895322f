"""Sparsity of influence (Fig. 8, Table 1): which heavy-tailed law fits the tail of each query's influences.

The tail is a query's top `n` scores (the paper's top 0.01% of 5M = 500). Every candidate law is
fitted by maximum likelihood with scipy.stats to the same points, so log-likelihoods (and AIC) compare;
laws supported on [u, ∞) get their lower end fixed at the tail threshold u. The power law is the
paper's CDF 1 − (x/x_min)^(1−α), i.e. a Pareto with shape b = α − 1 and scale x_min.
KS p-values use the fitted parameters, so they are optimistic (a rejection is meaningful, a pass less so).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

MIN_TAIL = 100

#: law name -> scipy distribution
DISTRIBUTIONS = {
    "power_law": stats.pareto,
    "exponential": stats.expon,
    "weibull": stats.weibull_min,
    "exp_weibull": stats.exponweib,
    "rayleigh": stats.rayleigh,
    "gumbel": stats.gumbel_r,
    "gev": stats.genextreme,
}

#: parameters each law fits (its lower end fixed at the threshold where it has one)
FREE_PARAMS = {"power_law": 1, "exponential": 1, "weibull": 2, "exp_weibull": 3, "rayleigh": 1, "gumbel": 2, "gev": 3}


def tail(scores: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """The top-n positive scores (sorted ascending) and the threshold u just below them (the next score, or 0)."""
    x = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    x = x[x > 0]
    top = x[-n:] if n < len(x) else x
    u = float(x[-n - 1]) if n < len(x) else 0.0
    return top, u


def fit_law(name: str, x: np.ndarray, u: float) -> tuple[tuple, float]:
    """Maximum-likelihood parameters and log-likelihood of one law on tail points x > u."""
    dist = DISTRIBUTIONS[name]
    if u >= x.min():  # ties at the threshold (float32 scores): laws starting at u need every point strictly above it
        u = float(x.min()) - 1e-9 * max(abs(float(x.min())), 1e-30)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if name == "power_law":
            xmin = float(x.min())
            params = (len(x) / np.log(x / xmin).sum(), 0.0, xmin)  # the closed-form MLE of b with scale = x_min
        elif name in ("gumbel", "gev"):
            params = dist.fit(x)
        else:
            params = dist.fit(x, floc=u)
        ll = float(np.sum(dist.logpdf(x, *params)))
    return tuple(float(p) for p in params), ll


def fit_tail(scores: np.ndarray, n: int = 500) -> pd.DataFrame:
    """One row per law: parameters, log-likelihood, AIC, KS statistic and p-value on the top-n scores."""
    if n < MIN_TAIL:
        raise ValueError(f"a tail of {n} points is too short to fit: use at least {MIN_TAIL}")
    x, u = tail(scores, n)
    if len(x) < MIN_TAIL:
        return pd.DataFrame()
    rows = []
    for name, dist in DISTRIBUTIONS.items():
        try:
            params, ll = fit_law(name, x, u)
            ks = stats.kstest(x, dist.cdf, args=params)
            ks_stat, ks_p, note = float(ks.statistic), float(ks.pvalue), ""
        except (ValueError, RuntimeError, FloatingPointError) as e:  # a law scipy cannot fit to these points
            params, ll, ks_stat, ks_p, note = (), -np.inf, np.nan, np.nan, f"fit failed: {str(e).splitlines()[0][:120]}"
        rows.append(
            {
                "distribution": name,
                "params": params,
                "loglik": ll,
                "aic": 2 * FREE_PARAMS[name] - 2 * ll,
                "ks_stat": ks_stat,
                "ks_p": ks_p,
                "n_tail": len(x),
                "x_min": float(x.min()),
                "threshold": u,
                "note": note,
            }
        )
    df = pd.DataFrame(rows)
    df.loc[~np.isfinite(df["loglik"]), "aic"] = np.inf
    return df


def sparsity_tables(scores: pd.DataFrame, n: int = 500, alpha: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From the long scores table (query, score): every fit, and a Table-1-style row per query."""
    fits, table = [], []
    for query, g in scores.groupby("query", sort=False):
        df = fit_tail(g["score"].to_numpy(), n)
        positive = int((g["score"] > 0).sum())
        if df.empty:
            table.append(
                {
                    "query": query,
                    "alpha": np.nan,
                    "n_positive": positive,
                    "n_tail": positive,
                    "best_fit": f"too few positive scores ({positive} < {MIN_TAIL})",
                }
            )
            continue
        df.insert(0, "query", query)
        fits.append(df)
        pl = df.set_index("distribution").loc["power_law"]
        best = df.loc[df["aic"].idxmin(), "distribution"]
        table.append(
            {
                "query": query,
                "alpha": pl["params"][0] + 1.0,
                "x_min": pl["x_min"],
                "n_positive": positive,
                "n_tail": int(pl["n_tail"]),
                "power_law_ks_p": pl["ks_p"],
                "power_law_rejected": bool(pl["ks_p"] < alpha),
                "best_fit": best,
                "power_law_aic_gap": float(pl["aic"] - df["aic"].min()),
            }
        )
    fits = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame()
    if not fits.empty:
        fits["params"] = fits["params"].map(lambda p: ",".join(f"{v:.6g}" for v in p))
    return fits, pd.DataFrame(table)


def ccdf_figure(scores: pd.DataFrame, fits: pd.DataFrame, table: pd.DataFrame, max_panels: int = 12):
    """Fig. 8: log–log CCDF of each query's tail with the fitted laws."""
    import matplotlib.pyplot as plt

    queries = [q for q in table["query"] if q in set(fits["query"])][:max_panels]
    cols = min(4, max(1, len(queries)))
    rows = max(1, (len(queries) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(queries) :]:
        ax.axis("off")
    for ax, q in zip(axes.flat, queries):
        f = fits[fits["query"] == q].set_index("distribution")
        n = int(f["n_tail"].iloc[0])
        x, u = tail(scores.loc[scores["query"] == q, "score"].to_numpy(), n)
        ccdf = 1.0 - np.arange(len(x)) / len(x)
        ax.loglog(x, ccdf, ".", ms=3, color="black", label="influence")
        grid = np.geomspace(x.min(), x.max(), 100)
        for name in ("power_law", "exponential", "weibull", "gev"):
            if not f.loc[name, "params"]:
                continue  # scipy could not fit this law (see the fits table's note)
            params = tuple(float(v) for v in f.loc[name, "params"].split(","))
            c0 = DISTRIBUTIONS[name].sf(x.min(), *params) or 1.0
            ax.loglog(grid, DISTRIBUTIONS[name].sf(grid, *params) / c0, lw=1, label=name)
        alpha = table.set_index("query").loc[q, "alpha"]
        ax.set_title(f"{q}\nα={alpha:.2f}, best: {table.set_index('query').loc[q, 'best_fit']}", fontsize=8)
        ax.set_xlabel("influence", fontsize=7)
        ax.set_ylabel("CCDF (tail)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig
