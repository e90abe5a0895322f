"""Power-law tail fits recover a known exponent; the scan-size estimate follows the fitted CCDF."""

import numpy as np
from scipy import stats

from analysis.tails import fit_power_law_tail, sequences_needed


def test_pareto_tail_exponent_is_recovered():
    rng = np.random.default_rng(0)
    x = stats.pareto.rvs(b=2.0, scale=1.0, size=200_000, random_state=rng)  # alpha = 3
    scores = np.concatenate([x, -rng.random(1000)])
    alpha, x_min, frac = fit_power_law_tail(scores, tail=5000)
    assert abs(alpha - 3.0) < 0.1
    assert abs(frac - 5000 / len(scores)) < 1e-12


def test_sequences_needed_matches_the_ccdf():
    rng = np.random.default_rng(1)
    x = stats.pareto.rvs(b=1.5, scale=1.0, size=100_000, random_state=rng)
    thr = float(np.quantile(x, 0.999)) * 3  # beyond most observed points: extrapolated by the fit
    n = sequences_needed(x, thr, 10, tail=20_000)
    expected = 10 / thr**-1.5  # true CCDF of the whole distribution (x_min = 1)
    assert 0.7 < n / expected < 1.4
    below = sequences_needed(x, 0.5, 10, tail=100)  # below the tail's x_min: empirical frequency
    assert below == 10.0
