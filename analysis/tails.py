"""Power-law tails of influence distributions (paper §5.2.2, Fig. 8) with scipy.stats."""

from __future__ import annotations

import numpy as np
from scipy import stats


def fit_power_law_tail(scores: np.ndarray, tail: int) -> tuple[float, float, float]:
    """MLE Pareto fit to the `tail` largest positive scores: (alpha, x_min, tail fraction of all scores).

    CCDF above x_min is (x/x_min)^(−α+1): scipy's `pareto` with shape b = α − 1 and scale x_min.
    """
    s = np.sort(scores[np.isfinite(scores)])[::-1]
    pos = s[s > 0]
    if len(pos) < 2:
        return float("nan"), float("nan"), 0.0
    top = pos[: min(tail, len(pos))]
    x_min = float(top[-1])
    b, _, _ = stats.pareto.fit(top, floc=0.0, fscale=x_min)
    return float(b + 1.0), x_min, len(top) / len(s)


def sequences_needed(scores: np.ndarray, threshold: float, count: int, tail: int) -> float:
    """How many sequences drawn from the scanned distribution to expect `count` scoring ≥ threshold.

    Inside the fitted tail (threshold ≥ x_min) the power law extrapolates past the largest observed score;
    below it the empirical frequency is used.
    """
    finite = scores[np.isfinite(scores)]
    alpha, x_min, frac = fit_power_law_tail(finite, tail)
    if np.isfinite(alpha) and threshold >= x_min:
        return float(count / (frac * (threshold / x_min) ** (-(alpha - 1.0))))
    above = int((finite >= threshold).sum())
    return float(count * len(finite) / above) if above else float("inf")
