"""Fact-tracing retrieval, proponent removal and the method comparison, on hand-built rankings."""

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis.attribution import (  # noqa: E402
    COMPARISON_COLUMNS,
    comparison_figure,
    method_comparison,
    removal_summary,
    removal_table,
    retrieval_summary,
    retrieval_table,
)
from analysis.lds import mean_interval  # noqa: E402


def _long(method, query, scores):
    return [{"method": method, "query": query, "row": r, "score": s} for r, s in enumerate(scores)]


@pytest.fixture
def ranking():
    """Method "a": q1 relevant at ranks 3 and 5; q2 relevant at rank 1; q3's relevant row is not a candidate
    (NaN score), so q3 is dropped; q4 (only in `relevant`) has no scores at all and is dropped too."""
    rows = _long("a", "q1", [5.0, 4.0, 3.0, 2.0, 1.0])
    rows += _long("a", "q2", [9.0, 1.0, 0.5])
    rows += _long("a", "q3", [2.0, 1.0, np.nan])
    scores = pd.DataFrame(rows)
    relevant = pd.DataFrame({"query": ["q1", "q1", "q2", "q3", "q4"], "row": [2, 4, 0, 2, 0]})
    return scores, relevant


def test_reciprocal_rank_and_recall_by_hand(ranking):
    scores, relevant = ranking
    t = retrieval_table(scores, relevant, ks=(2, 3, 5))
    assert list(t["query"]) == ["q1", "q2"]  # q3, q4: no relevant candidate, dropped, not scored 0
    q1, q2 = (t.set_index("query").loc[q] for q in ("q1", "q2"))
    assert q1["reciprocal_rank"] == pytest.approx(1 / 3) and q1["first_relevant_rank"] == 3
    assert (q1["recall_at_2"], q1["recall_at_3"], q1["recall_at_5"]) == (0.0, 0.5, 1.0)
    assert q1["n_relevant"] == 2 and q1["n_candidates"] == 5
    assert q2["reciprocal_rank"] == 1.0 and q2["recall_at_2"] == 1.0 and q2["n_candidates"] == 3
    assert t.attrs["dropped_queries"] == {"a": ["q3", "q4"]} and t.attrs["n_dropped"] == {"a": 2}
    # the mean over the two scored queries: (1/3 + 1) / 2, not (1/3 + 1 + 0 + 0) / 4
    s = retrieval_summary(t, n_bootstrap=0)
    assert s.loc[0, "mrr"] == pytest.approx((1 / 3 + 1) / 2) and s.loc[0, "n_queries"] == 2


def test_default_columns(ranking):
    t = retrieval_table(*ranking)
    assert list(t.columns) == [
        "method",
        "query",
        "reciprocal_rank",
        "first_relevant_rank",
        "n_relevant",
        "n_candidates",
        "recall_at_10",
        "recall_at_50",
    ]
    assert (t["recall_at_10"] == 1.0).all()  # every candidate list is shorter than 10


def test_ties_are_broken_pessimistically():
    rows = _long("constant", "q", [0.0] * 100)
    rows += _long("shuffled", "q", list(np.random.default_rng(0).permutation(100).astype(float)))
    rows += _long("tied_top", "q", [1.0, 1.0, 1.0] + [0.0] * 97)  # the relevant row 0 tied with 2 irrelevant
    scores = pd.DataFrame(rows)
    t = retrieval_table(scores, pd.DataFrame({"query": ["q"], "row": [0]})).set_index("method")
    assert t.loc["constant", "reciprocal_rank"] == pytest.approx(1 / 100)
    assert t.loc["constant", "first_relevant_rank"] == 100 and t.loc["constant", "recall_at_50"] == 0.0
    assert t.loc["tied_top", "first_relevant_rank"] == 3
    # relevant rows tied only with each other take consecutive ranks: the first is rank 1
    both = retrieval_table(pd.DataFrame(_long("m", "q", [1.0, 1.0, 0.0])), pd.DataFrame({"query": "q", "row": [0, 1]}))
    assert both.loc[0, "reciprocal_rank"] == 1.0 and both.loc[0, "recall_at_10"] == 1.0


def test_nan_scores_are_not_candidates():
    # row 0 would rank first but is not a candidate; the relevant row 3 is then first of 3 candidates
    scores = pd.DataFrame(_long("m", "q", [np.nan, 2.0, 1.0, 5.0, np.nan]))
    t = retrieval_table(scores, pd.DataFrame({"query": ["q", "q"], "row": [3, 4]}))
    assert t.loc[0, "n_candidates"] == 3 and t.loc[0, "n_relevant"] == 1  # the NaN relevant row 4 is not counted
    assert t.loc[0, "reciprocal_rank"] == 1.0


def test_repeated_rows_are_refused():
    scores = pd.DataFrame(_long("m", "q", [1.0, 2.0]) * 2)
    with pytest.raises(ValueError, match="repeated"):
        retrieval_table(scores, pd.DataFrame({"query": ["q"], "row": [0]}))


def test_summary_mean_interval_and_split_columns():
    rng = np.random.default_rng(0)
    rows, relevant = [], []
    for q in range(40):
        relevant.append({"query": f"q{q}", "row": int(rng.integers(0, 30))})
        for m in ("good", "bad"):
            s = rng.normal(size=30)
            if m == "good":
                s[relevant[-1]["row"]] += 2.0
            rows += _long(m, f"q{q}", s)
    t = retrieval_table(pd.DataFrame(rows), pd.DataFrame(relevant), ks=(5, 10))
    s = retrieval_summary(t, seed=3).set_index("method")
    for m in ("good", "bad"):
        rr = t.loc[t["method"] == m, "reciprocal_rank"].to_numpy()
        assert s.loc[m, "mrr"] == pytest.approx(np.mean(rr)) and s.loc[m, "n_queries"] == 40
        assert s.loc[m, "mrr_ci_low"] <= s.loc[m, "mrr"] <= s.loc[m, "mrr_ci_high"]
        assert s.loc[m, "mrr_sem"] == pytest.approx(np.std(rr, ddof=1) / math.sqrt(40))
        assert (s.loc[m, "mrr"], s.loc[m, "mrr_ci_low"]) == pytest.approx(mean_interval(rr, seed=3)[::2])
        assert s.loc[m, "recall_at_5"] == pytest.approx(t.loc[t["method"] == m, "recall_at_5"].mean())
        assert s.loc[m, "recall_at_5_ci_low"] <= s.loc[m, "recall_at_5"] <= s.loc[m, "recall_at_5_ci_high"]
    assert s.loc["good", "mrr"] > s.loc["bad", "mrr"]
    # split columns joined on from a per-query table
    meta = pd.DataFrame({"query": [f"q{q}" for q in range(40)], "direction": ["forward", "reverse"] * 20})
    split = retrieval_summary(t.merge(meta, on="query"), by=("method", "direction"))
    assert len(split) == 4 and set(split["n_queries"]) == {20}
    with pytest.raises(ValueError, match="both_orders"):
        retrieval_summary(t, by=("method", "both_orders"))


def test_removal_rise_by_hand():
    losses = pd.DataFrame(
        {
            "query": ["q1", "q2", "q1", "q2"],
            "method": ["ekfac", "ekfac", "random", "random"],
            "loss_full": [1.0, 2.0, 1.0, 2.0],
            "loss_removed": [1.5, 3.0, 1.1, 1.9],
        }
    )
    per = removal_table(losses)
    assert per["rise"].to_numpy() == pytest.approx([0.5, 1.0, 0.1, -0.1])
    s = removal_summary(per, n_bootstrap=200).set_index("method")
    assert list(s.columns) == ["rise_mean", "rise_sem", "rise_ci_low", "rise_ci_high", "n_queries"]
    assert s.loc["ekfac", "rise_mean"] == pytest.approx(0.75) and s.loc["random", "rise_mean"] == pytest.approx(0.0)
    assert s.loc["ekfac", "rise_sem"] == pytest.approx(np.std([0.5, 1.0], ddof=1) / math.sqrt(2))
    assert s.loc["ekfac", "rise_ci_low"] <= 0.75 <= s.loc["ekfac", "rise_ci_high"]
    assert (s["n_queries"] == 2).all()


def _summaries(model=None):
    extra = {} if model is None else {"model": model}
    retrieval = pd.DataFrame(
        {"method": ["ekfac", "bm25"], "mrr": [0.6, 0.4], "mrr_sem": 0.05, "mrr_ci_low": [0.5, 0.3]}
        | {"mrr_ci_high": [0.7, 0.5], "recall_at_10": [0.8, 0.5], "recall_at_50": [0.9, 0.7], "n_queries": 20}
        | extra
    )
    lds = pd.DataFrame(
        {"method": ["ekfac", "identity"], "lds_mean": [0.3, 0.1], "lds_sem": 0.02}
        | {"lds_ci_low": [0.2, 0.0], "lds_ci_high": [0.4, 0.2], "n_queries": 10}
        | extra
    )
    return retrieval, lds


def test_method_comparison_joins_with_missing_inputs():
    retrieval, lds = _summaries()
    seconds = pd.DataFrame({"method": ["identity", "ekfac"], "seconds": [2.0, 30.0]})
    t = method_comparison(retrieval, lds, None, seconds)
    assert list(t["method"]) == ["ekfac", "bm25", "identity"]  # first appearance, not sorted
    assert list(t.columns) == ["method", *COMPARISON_COLUMNS] and "mrr_sem" not in t
    t = t.set_index("method")
    assert t.loc["ekfac", ["mrr", "lds", "lds_ci_low", "seconds"]].tolist() == [0.6, 0.3, 0.2, 30.0]
    assert math.isnan(t.loc["bm25", "lds"]) and math.isnan(t.loc["identity", "mrr"])
    assert t["removal_rise"].isna().all() and math.isnan(t.loc["bm25", "seconds"])
    removal = pd.DataFrame({"method": ["random"], "rise_mean": [0.01], "rise_ci_low": [-0.02], "rise_ci_high": [0.04]})
    only = method_comparison(None, None, removal, None)
    assert only.loc[0, "removal_rise_ci_high"] == 0.04 and math.isnan(only.loc[0, "mrr"])
    assert method_comparison(None, None, None, None).empty


def test_method_comparison_per_model_size():
    r_small, l_small = _summaries("small")
    r_big, l_big = _summaries("big")
    # no model column: applies to every size, a method no other input names ("random") included
    seconds = pd.DataFrame({"method": ["ekfac", "random"], "seconds": [5.0, 0.1]})
    t = method_comparison(pd.concat([r_small, r_big]), pd.concat([l_small, l_big]), None, seconds)
    assert list(t.columns[:2]) == ["model", "method"] and len(t) == 8
    assert list(t["model"]) == ["small"] * 4 + ["big"] * 4
    assert list(t["method"][:4]) == ["ekfac", "bm25", "identity", "random"]
    assert t.loc[t["method"] == "ekfac", "seconds"].tolist() == [5.0, 5.0]
    assert t.loc[t["method"] == "random", "seconds"].tolist() == [0.1, 0.1]
    with pytest.raises(ValueError, match="one row per"):
        method_comparison(pd.concat([r_small, r_small]), None, None, None)


def test_comparison_figure_has_a_panel_per_measure_present():
    retrieval, lds = _summaries()
    seconds = pd.DataFrame({"method": ["identity", "ekfac"], "seconds": [2.0, 30.0]})
    fig = comparison_figure(method_comparison(retrieval, lds, None, seconds))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["MRR", "Recall@10", "Recall@50", "LDS (Spearman r)", "seconds"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["EK-FAC", "bm25", "Dot product"]
    assert fig.axes[-1].get_yscale() == "log"
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    r_small, l_small = _summaries("small")
    r_big, l_big = _summaries("big")
    removal = pd.DataFrame(
        {"method": ["ekfac", "random"], "rise_mean": [0.2, 0.0], "rise_ci_low": [0.1, -0.1], "rise_ci_high": 0.3}
    )
    table = method_comparison(pd.concat([r_small, r_big]), pd.concat([l_small, l_big]), removal, None)
    assert table["model"].notna().all()
    fig = comparison_figure(table)
    assert len(fig.axes) == 5  # MRR, Recall@10, Recall@50, LDS, loss rise
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["small", "big"]
    assert fig.axes[3].get_legend() is None and fig.axes[-1].get_legend() is not None
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
