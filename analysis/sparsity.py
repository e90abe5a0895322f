"""Sparsity of influence (Fig. 8, Table 1): which heavy-tailed law fits the tail of each query's influences.

The tail is a query's top `n` scores (the paper's top 0.01% of 5M = 500). Every candidate law is
fitted by maximum likelihood with scipy.stats to the same points, so log-likelihoods (and AIC) compare;
laws supported on [u, ∞) get their lower end fixed at the tail threshold u. The power law is the
paper's CDF 1 − (x/x_min)^(1−α), i.e. a Pareto with shape b = α − 1 and scale x_min.
KS p-values use the fitted parameters, so they are optimistic (a rejection is meaningful, a pass less so).

A law that nests another (GEV nests Gumbel at shape 0, the exponentiated Weibull nests the Weibull at a = 1)
can never fit worse at its optimum; scipy's default start often lands it in a far worse local optimum. Such a
law is refitted from its nested law's fit and a few shapes, the best start kept; a fit still below its nested
law's log-likelihood, or whose optimizer did not converge, is marked `fit_ok = False` and not drawn.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

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

#: law -> (the law it nests, its parameters at the nested law's fit, the extra shapes tried as starts)
NESTS = {
    "gev": ("gumbel", lambda p: (0.0, *p), (-0.5, -0.2, 0.2, 0.5)),
    "exp_weibull": ("weibull", lambda p: (1.0, *p), (0.5, 2.0)),
}

#: relative log-likelihood slack before a nesting law counts as worse than the law it nests
NEST_TOLERANCE = 1e-6


def tail(scores: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """The top-n positive scores (sorted ascending) and the threshold u just below them (the next score, or 0)."""
    x = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    x = x[x > 0]
    top = x[-n:] if n < len(x) else x
    u = float(x[-n - 1]) if n < len(x) else 0.0
    return top, u


def _fmin(status: list):
    """scipy.optimize.fmin as a `fit` optimizer that records its warnflag (0: converged) in `status`."""

    def run(func, x0, args=(), disp=0):
        xopt, _, _, _, flag = optimize.fmin(func, x0, args=args, disp=0, full_output=True)
        status.append(int(flag))
        return xopt

    return run


def _fit_from(dist, x: np.ndarray, start: tuple | None, fixed: dict) -> tuple[tuple, float, bool]:
    """One maximum-likelihood fit from `start` (shapes, loc, scale; None: scipy's own): params, ll, converged."""
    status: list[int] = []
    kw = dict(fixed)
    if start is None:
        params = dist.fit(x, optimizer=_fmin(status), **kw)
    else:
        *shapes, loc, scale = start
        if "floc" not in kw:
            kw["loc"] = loc
        params = dist.fit(x, *shapes, scale=scale, optimizer=_fmin(status), **kw)
    ll = float(np.sum(dist.logpdf(x, *params)))
    converged = not status or status[-1] == 0  # no optimizer call: scipy's closed-form or root-finding fit
    return tuple(float(p) for p in params), ll if np.isfinite(ll) else -np.inf, converged


def fit_law(name: str, x: np.ndarray, u: float, nested: tuple | None = None) -> tuple[tuple, float, bool]:
    """Maximum-likelihood parameters, log-likelihood and optimizer convergence of one law on tail points x > u.

    `nested`: the fitted parameters of the law `name` nests (NESTS); the fit then also starts there and at a
    few shapes around it, and the start with the highest log-likelihood is kept.
    """
    dist = DISTRIBUTIONS[name]
    if u >= x.min():  # ties at the threshold (float32 scores): laws starting at u need every point strictly above it
        u = float(x.min()) - 1e-9 * max(abs(float(x.min())), 1e-30)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if name == "power_law":
            xmin = float(x.min())
            params = (len(x) / np.log(x / xmin).sum(), 0.0, xmin)  # the closed-form MLE of b with scale = x_min
            return params, float(np.sum(dist.logpdf(x, *params))), True
        fixed = {} if name in ("gumbel", "gev") else {"floc": u}
        starts: list = [None]
        if name in NESTS and nested:
            at, shapes = NESTS[name][1](nested), NESTS[name][2]
            starts += [at] + [(s, *at[1:]) for s in shapes]
        best = None
        for start in starts:
            try:
                fit = _fit_from(dist, x, start, fixed)
            except (ValueError, RuntimeError, FloatingPointError):
                if start is None and len(starts) == 1:
                    raise
                continue
            if best is None or fit[1] > best[1]:
                best = fit
        if best is None:
            raise RuntimeError(f"no start of {name} could be fitted")
    return best


def dominated(ll: float, nested_ll: float) -> bool:
    """A nesting law's fit below the law it nests (beyond a relative tolerance): not its optimum."""
    return bool(np.isfinite(nested_ll) and ll < nested_ll - NEST_TOLERANCE * max(1.0, abs(nested_ll)))


def fit_tail(scores: np.ndarray, n: int = 500) -> pd.DataFrame:
    """One row per law: parameters, log-likelihood, AIC, KS statistic and p-value on the top-n scores."""
    if n < MIN_TAIL:
        raise ValueError(f"a tail of {n} points is too short to fit: use at least {MIN_TAIL}")
    x, u = tail(scores, n)
    if len(x) < MIN_TAIL:
        return pd.DataFrame()
    rows, fitted = [], {}
    for name, dist in DISTRIBUTIONS.items():
        nested_name = NESTS[name][0] if name in NESTS else None
        nested_params, nested_ll = fitted.get(nested_name, ((), -np.inf))
        try:
            params, ll, converged = fit_law(name, x, u, nested_params or None)
            ks = stats.kstest(x, dist.cdf, args=params)
            ks_stat, ks_p, note = float(ks.statistic), float(ks.pvalue), ""
        except (ValueError, RuntimeError, FloatingPointError) as e:  # a law scipy cannot fit to these points
            params, ll, converged, ks_stat, ks_p = (), -np.inf, False, np.nan, np.nan
            note = f"fit failed: {str(e).splitlines()[0][:120]}"
        fitted[name] = (params, ll)
        ok = bool(np.isfinite(ll)) and converged
        if params and nested_name and dominated(ll, nested_ll):
            ok, note = False, f"fit failed: log-likelihood {ll:.6g} below the nested {nested_name}'s {nested_ll:.6g}"
        elif params and not converged:
            note = "fit failed: the optimizer did not converge"
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
                "converged": converged,
                "fit_ok": ok,
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
        ok = df[df["fit_ok"]]
        best = ok.loc[ok["aic"].idxmin(), "distribution"]
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
                "power_law_aic_gap": float(pl["aic"] - ok["aic"].min()),
                "failed_fits": ",".join(df.loc[~df["fit_ok"], "distribution"]),
            }
        )
    fits = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame()
    if not fits.empty:
        fits["params"] = fits["params"].map(lambda p: ",".join(f"{v:.6g}" for v in p))
    return fits, pd.DataFrame(table)


#: the laws drawn over each tail
DRAWN = ("power_law", "exponential", "weibull", "gev")


def ccdf_figure(scores: pd.DataFrame, fits: pd.DataFrame, table: pd.DataFrame, max_panels: int = 12):
    """Fig. 8: log–log CCDF of each query's tail with the fitted laws (failed fits, `fit_ok` False, not drawn).

    The y axis spans the data's CCDF (1/n to 1), the x axis the tail; one legend for all panels, below them.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter

    queries = [q for q in table["query"] if q in set(fits["query"])][:max_panels]
    cols = min(4, max(1, len(queries)))
    rows = max(1, (len(queries) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows + 0.5), squeeze=False)
    for ax in axes.flat[len(queries) :]:
        ax.axis("off")
    colours = dict(zip(DRAWN, plt.get_cmap("tab10").colors))
    handles = {}
    by_query = table.set_index("query")
    for ax, q in zip(axes.flat, queries):
        f = fits[fits["query"] == q].set_index("distribution")
        n = int(f["n_tail"].iloc[0])
        x, u = tail(scores.loc[scores["query"] == q, "score"].to_numpy(), n)
        ccdf = 1.0 - np.arange(len(x)) / len(x)
        (h,) = ax.loglog(x, ccdf, ".", ms=3, color="black")
        handles.setdefault("influence (data)", h)
        grid = np.geomspace(x.min(), x.max(), 100)
        failed = []
        for name in DRAWN:
            ok = bool(f.loc[name, "fit_ok"]) if "fit_ok" in f else True
            if not f.loc[name, "params"] or not ok:
                failed.append(name)
                continue  # scipy could not fit this law, or the fit is not an optimum (see the fits table's note)
            params = tuple(float(v) for v in f.loc[name, "params"].split(","))
            c0 = DISTRIBUTIONS[name].sf(x.min(), *params) or 1.0
            (h,) = ax.loglog(grid, DISTRIBUTIONS[name].sf(grid, *params) / c0, lw=1, color=colours[name])
            handles.setdefault(name, h)
        ax.set_ylim(0.5 / len(x), 1.5)  # the data's range: a fitted law's far tail must not stretch the axis
        ax.set_xlim(x.min() / 1.05, x.max() * 1.05)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10, numticks=5))
            axis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        alpha = by_query.loc[q, "alpha"]
        title = f"{q}\nα={alpha:.2f}, best: {by_query.loc[q, 'best_fit']}"
        if failed:
            title += f"\nnot drawn (failed fit): {', '.join(failed)}"
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("influence score (top-n tail)", fontsize=7)
        ax.set_ylabel("CCDF P(I ≥ x) within tail", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3, which="major")
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.3 / (2.9 * rows + 0.5), 1, 1))
    return fig
