"""Tail fits, concentration, layer blocks and passage search on data whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from analysis.concentration import concentration_table
from analysis.layers import block_shares, layer_blocks
from analysis.memorization import find_passage, memorization_summary, memorization_table
from analysis.sparsity import fit_tail, sparsity_tables


def test_power_law_tail_recovers_its_exponent_and_is_the_best_fit():
    rng = np.random.default_rng(0)
    x = (rng.pareto(2.0, 50_000) + 1.0) * 0.01  # density ∝ x^-3: the paper's α = 3
    df = pd.DataFrame({"query": "pl", "score": np.r_[x, -x[:1000]]})  # negatives are not part of the tail
    fits, table = sparsity_tables(df, n=500)
    row = table.iloc[0]
    assert row["alpha"] == pytest.approx(3.0, abs=0.25)
    assert row["best_fit"] in ("power_law", "exp_weibull", "gev")  # GEV/exp-Weibull contain heavy tails too
    assert not row["power_law_rejected"]
    assert row["power_law_aic_gap"] < 4
    assert len(fits) == 7 and (fits["n_tail"] == 500).all()


def test_exponential_tail_rejects_the_power_law():
    x = np.random.default_rng(1).exponential(1.0, 50_000)
    fits = fit_tail(x, n=500).set_index("distribution")
    assert fits.loc["exponential", "aic"] < fits.loc["power_law", "aic"] - 10
    assert fits.loc["power_law", "ks_p"] < 0.05 < fits.loc["exponential", "ks_p"]
    with pytest.raises(ValueError, match="at least 100"):
        fit_tail(x, n=50)


def test_too_few_positive_scores_are_reported_not_fitted():
    df = pd.DataFrame({"query": "q", "score": np.r_[np.arange(1, 51), -np.arange(1, 500)].astype(float)})
    fits, table = sparsity_tables(df, n=100)
    assert fits.empty and "too few positive scores (50" in table.iloc[0]["best_fit"]


def test_concentration_shares():
    scores = pd.DataFrame({"query": "q", "score": [10.0, 5.0, 3.0, 2.0] + [0.0] * 96 + [-7.0] * 100})
    c = concentration_table(scores, fractions=(0.005, 0.01, 0.015, 1.0)).set_index("top_fraction")
    assert c.loc[0.005, "num_sequences"] == 1 and c.loc[0.005, "share"] == pytest.approx(0.5)
    assert c.loc[0.01, "num_sequences"] == 2 and c.loc[0.01, "share"] == pytest.approx(0.75)
    assert c.loc[0.015, "share"] == pytest.approx(0.9) and c.loc[1.0, "share"] == pytest.approx(1.0)


def test_layer_blocks_cover_every_layer_once_bottom_to_top():
    assert layer_blocks(4) == [[0], [1], [2], [3]]
    blocks = layer_blocks(24)
    assert len(blocks) == 9 and sum(blocks, []) == list(range(24))
    t = pd.DataFrame(
        {"query": "q", "type": "fact", "rank": [1, 1, 2, 2], "block": [0, 1, 0, 1], "influence": [3.0, 1.0, 1.0, -1.0]}
    )
    s = block_shares(t).set_index("block")["share"]
    assert s[0] == pytest.approx(4 / 4) and s[1] == pytest.approx(0.0)


def test_passage_search_ignores_whitespace_and_reports_the_offset():
    assert find_passage("To be,\n or not", "He said: To be, or   not to be") == 9
    assert find_passage("To be or not", "To be, or not") == -1
    top = pd.DataFrame(
        {
            "query": "quote",
            "rank": [1, 2],
            "sequence_id": [7, 8],
            "score": [2.0, 1.0],
            "category": "quotes",
            "text": ["x To be, or not to be y", "unrelated"],
        }
    )
    m = memorization_table(top, {"quote": "To be, or not to be"})
    assert m["contains_passage"].tolist() == [True, False] and m["char_offset"].tolist() == [2, -1]
    s = memorization_summary(m, {"quote": 3}).iloc[0]
    assert s["first_rank_with_passage"] == 1 and s["copies_in_top_k"] == 1 and s["copies_in_corpus"] == 3


def test_ties_at_the_tail_threshold_still_fit_every_law():
    """float32 scores tie: the point at the threshold must not break laws that start there (Rayleigh, Weibull)."""
    x = np.random.default_rng(2).exponential(1.0, 5000).astype(np.float32)
    x = np.r_[x, np.full(50, np.sort(x)[-300], dtype=np.float32)]
    fits = fit_tail(x, n=300)
    assert len(fits) == 7 and np.isfinite(fits["loglik"]).all(), fits[["distribution", "note"]]
