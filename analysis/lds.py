"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK", §2.2): how well attribution scores, summed over a
training subset, rank the measurements of models retrained from scratch on that subset.

For query q and training subsets S_1 … S_m (boolean masks over the N training rows) with measured outputs f_q(S_s)
(the retrained model's f on q), the datamodel's prediction is g_q(S) = Σ_{i∈S} τ_q(z_i), and

    LDS_q = Spearman( (g_q(S_s))_s , (f_q(S_s))_s ).

Sign convention: τ = the project's influence I (influence.scoring.SCALE_CONVENTION), positive when upweighting z_i
*raises* f: f(θ_ε) − f(θ) ≈ ε·I for z_i added with weight ε. Training on S with the mean loss gives weight 1/|S| to
the rows in S and 0 to the others, so to first order f_q(S) ≈ f_q(all) − (1/N)·Σ_i I_qi + (1/|S|)·Σ_{i∈S} I_qi:
increasing in g_q(S) for equal-size subsets (which `embedded.tabular.retrain_on_subsets` draws). A perfect
estimator then scores LDS → +1, a random one ≈ 0 and a negated one < 0. Scores in the opposite convention
(positive = lowers f, e.g. "helpfulness" for f = loss) must be negated first. Spearman is rank-based, so the
scale of the scores (1/N or not) does not matter.

Pure numpy/scipy/pandas: the inputs may be numpy arrays or CPU torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


def _array(x, dtype=float) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class LDSResult:
    """Per-query LDS and its spread over queries."""

    per_query: np.ndarray  # (Q,) Spearman correlation per query; nan where a side is constant
    mean: float  # over the queries with a defined correlation
    sem: float  # standard error of that mean (ddof=1); nan for fewer than 2 queries
    ci_low: float  # percentile bootstrap interval of the mean, resampling queries
    ci_high: float
    n_subsets: int
    n_queries: int  # queries with a defined correlation

    def table(self, query_names=None) -> pd.DataFrame:
        """One row per query: query, lds."""
        names = list(query_names) if query_names is not None else list(range(len(self.per_query)))
        return pd.DataFrame({"query": names, "lds": self.per_query})


def predicted_outputs(scores, masks, rows=None) -> np.ndarray:
    """(S, Q) datamodel predictions g_q(S_s) = Σ_{i ∈ S_s} scores[q, i].

    `scores` (Q, K) are the scores of training rows `rows` (K indices into the masks' N columns; default all,
    K = N). With K < N the prediction sums over the scored rows only: a partial datamodel."""
    scores, masks = _array(scores), _array(masks, dtype=bool)
    if scores.ndim != 2 or masks.ndim != 2:
        raise ValueError(f"scores must be (Q, K) and masks (S, N), got {scores.shape} and {masks.shape}")
    cols = np.arange(masks.shape[1]) if rows is None else _array(rows, dtype=np.int64)
    if scores.shape[1] != len(cols):
        raise ValueError(
            f"scores have {scores.shape[1]} training rows but {len(cols)} are named "
            f"({'the masks have N columns' if rows is None else 'rows'}): pass rows= for scores of a subset"
        )
    return masks[:, cols].astype(float) @ scores.T


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y)[0])


def linear_datamodeling_score(
    scores,
    masks,
    outputs,
    rows=None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LDSResult:
    """LDS of `scores` (Q, K; the project's sign convention, see the module docstring) against retrained models.

    `masks` (S, N) bool: the training rows of each retrained model; `outputs` (S, Q): each retrained model's
    measurement f on each query; `rows`: the training rows the scores' columns are (default all N). Returns the
    Spearman correlation over the S subsets per query, their mean, its standard error and a seeded percentile
    bootstrap interval (queries resampled with replacement)."""
    outputs = _array(outputs)
    pred = predicted_outputs(scores, masks, rows)
    if outputs.shape != pred.shape:
        raise ValueError(f"outputs must be (S, Q) = {pred.shape} (subsets × queries), got {outputs.shape}")
    if pred.shape[0] < 3:
        raise ValueError(f"the LDS needs at least 3 subsets, got {pred.shape[0]}")
    per_query = np.array([_spearman(pred[:, q], outputs[:, q]) for q in range(pred.shape[1])])
    ok = per_query[~np.isnan(per_query)]
    mean, sem, lo, hi = mean_interval(ok, n_bootstrap, confidence, seed)
    return LDSResult(per_query, mean, sem, lo, hi, n_subsets=int(pred.shape[0]), n_queries=int(len(ok)))


def mean_interval(values, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0):
    """(mean, standard error, bootstrap low, high) of per-query values, nan ignored: the percentile interval of
    the mean with the queries resampled (seeded); nan where fewer than 2 values are defined."""
    ok = _array(values)
    ok = ok[~np.isnan(ok)]
    mean = float(ok.mean()) if len(ok) else math.nan
    sem = float(ok.std(ddof=1) / math.sqrt(len(ok))) if len(ok) > 1 else math.nan
    lo = hi = math.nan
    if len(ok) > 1 and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        boot = ok[rng.integers(0, len(ok), size=(n_bootstrap, len(ok)))].mean(1)
        alpha = (1 - confidence) / 2
        lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
    return mean, sem, lo, hi


def lds_summary(per_query: pd.DataFrame, by=("task", "method"), **options) -> pd.DataFrame:
    """Mean LDS over queries per group of `by` (from per-query rows with an `lds` column): lds_mean, lds_sem,
    lds_ci_low, lds_ci_high (`mean_interval`, options passed on) and n_queries."""
    out = []
    for key, g in per_query.groupby(list(by), sort=False):
        mean, sem, lo, hi = mean_interval(g["lds"].to_numpy(), **options)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(lds_mean=mean, lds_sem=sem, lds_ci_low=lo, lds_ci_high=hi, n_queries=int(g["lds"].notna().sum()))
        if "n_subsets" in g:
            row["n_subsets"] = int(g["n_subsets"].iloc[0])
        out.append(row)
    return pd.DataFrame(out)


def lds_table(long: pd.DataFrame, masks, outputs, query_names, **options) -> pd.DataFrame:
    """LDS per method and query from a long score table (columns method, test_point, train_row, score; e.g. the
    accuracy study's `accuracy_scores` of one task): `outputs` (S, Q) columns are `query_names` in order and
    `train_row` indexes the masks' columns. One row per (method, test_point): lds, n_subsets, n_train_rows."""
    names = list(query_names)
    out = []
    for method, g in long.groupby("method", sort=False):
        wide = g.pivot(index="test_point", columns="train_row", values="score")
        missing = sorted(set(names) - set(wide.index))
        if missing:
            raise ValueError(f"method {method!r} has no scores for test point(s) {missing}")
        wide = wide.loc[names]
        res = linear_datamodeling_score(wide.to_numpy(), masks, outputs, rows=wide.columns.to_numpy(), **options)
        out += [
            {"method": method, "test_point": n, "lds": v, "n_subsets": res.n_subsets, "n_train_rows": wide.shape[1]}
            for n, v in zip(names, res.per_query)
        ]
    return pd.DataFrame(out)
