"""The findings scorecard judges each finding from hand-made study tables with known answers."""

import pandas as pd
import pytest

from analysis.scorecard import Finding, key_check, scorecard_summary
from analysis.scorecard import scorecard as judge
from experiments.studies import paper_studies

#: the findings each study's descriptor lists, in the paper's order
FINDINGS = {s.name: s.findings for s in paper_studies() if s.findings}


def scorecard(results):
    return judge(results, FINDINGS)


def _row(card, study, word):
    r = card[(card["study"] == study) & card["finding"].str.contains(word)]
    assert len(r) == 1
    return r.iloc[0]


def _summary(**kw):
    return {"_summary": pd.DataFrame([kw])}


def test_concentration_and_sparsity_checks():
    conc = pd.DataFrame(
        {
            "query": ["a", "a", "b", "b", "c", "c"],
            "top_fraction": [0.01, 0.1] * 3,
            "share": [0.05, 0.5, 0.30, 0.6, 0.40, 0.7],
        }
    )
    sp = pd.DataFrame({"query": ["a", "b", "c"], "alpha": [2.0, 4.9, 5.5]})
    card = scorecard(
        {
            "concentration": {"concentration": conc},
            "sparsity": {"sparsity": sp, **_summary(fitted=3, power_law_best_fit=2)},
        }
    )
    c = _row(card, "concentration", "Top 1%")
    assert c["value"] == pytest.approx(0.30) and c["reproduced"] == "yes"
    assert _row(card, "sparsity", "best")["value"] == pytest.approx(2 / 3)
    assert _row(card, "sparsity", "best")["reproduced"] == "yes"
    alpha = _row(card, "sparsity", "exponent")
    assert alpha["value"] == pytest.approx(2 / 3) and alpha["reproduced"] == "no"  # 5.5 lies outside [1.5, 5]


def test_trends_need_the_right_sign_and_ends():
    up = _summary(cross_lingual_smallest=0.01, cross_lingual_largest=0.2, cross_lingual_vs_size_spearman=0.8)
    flat = _summary(cross_lingual_smallest=0.2, cross_lingual_largest=0.1, cross_lingual_vs_size_spearman=0.3)
    assert _row(scorecard({"cross_lingual": up}), "cross_lingual", "rises")["reproduced"] == "yes"
    assert _row(scorecard({"cross_lingual": flat}), "cross_lingual", "rises")["reproduced"] == "no"
    down = _summary(
        jaccard_smallest=0.3,
        jaccard_largest=0.1,
        jaccard_vs_size_spearman=-0.7,
        distractor_share_smallest=0.4,
        distractor_share_largest=0.5,
    )
    card = scorecard({"abstraction": {"_summary": down["_summary"].assign(top_score_vs_size_spearman=0.4)}})
    assert _row(card, "abstraction", "Token overlap")["reproduced"] == "yes"
    assert _row(card, "abstraction", "Top influence")["reproduced"] == "no"
    assert _row(card, "abstraction", "distractors")["reproduced"] == "no"


def test_accuracy_word_order_and_layer_checks():
    acc = pd.DataFrame(
        {"task": ["t"] * 3, "method": ["ekfac", "lissa", "identity"], "pearson_mean": [0.80, 0.85, 0.40]}
    )
    far = acc.assign(pearson_mean=[0.80, 0.50, 0.40])
    assert _row(scorecard({"accuracy": {"accuracy_summary": acc}}), "accuracy", "EK-FAC")["reproduced"] == "yes"
    assert _row(scorecard({"accuracy": {"accuracy_summary": far}}), "accuracy", "EK-FAC")["reproduced"] == "no"
    unverified = _row(
        scorecard({"accuracy": {"accuracy_summary": acc.assign(pbrf_converged=False, pbrf_linear=True)}}),
        "accuracy",
        "EK-FAC",
    )
    assert "t: EK-FAC 0.80, LiSSA 0.85, dot 0.40 (PBRF unverified)" in unverified.values
    wo = scorecard({"word_order": _summary(flipped_over_same_order=0.05, completion_removed_over_same_order=0.4)})
    assert _row(wo, "word_order", "Flipping")["reproduced"] == "yes"
    assert _row(wo, "word_order", "completion")["reproduced"] == "no"
    assert _row(wo, "word_order", "Cross-lingual")["reproduced"] == "no data"
    # 9 blocks: 8 is the top third, 4 the middle; 2 blocks: block 1 is the upper half
    lw = _summary(blocks=9, quote_peak_block=8, fact_peak_block=7, math_peak_block=4, code_peak_block=3)
    assert _row(scorecard({"layer_wise": lw}), "layer_wise", "Quotes")["reproduced"] == "yes"
    lw2 = _summary(blocks=2, quote_peak_block=1, fact_peak_block=0)
    assert _row(scorecard({"layer_wise": lw2}), "layer_wise", "Quotes")["reproduced"] == "no"


def test_missing_studies_and_counts():
    card = scorecard({"memorization": _summary(queries_with_passage_in_corpus=4, queries_with_passage_in_top_k=4)})
    n = sum(map(len, FINDINGS.values()))
    assert len(card) == n == 16
    counts = scorecard_summary(card)
    assert counts["findings_yes"] == 1 and counts["findings_not_run"] == n - 1
    assert set(card["reproduced"]) == {"yes", "not run"}
    assert list(card["study"].drop_duplicates()) == list(FINDINGS)  # the paper's order


def test_the_engine_takes_any_findings_and_a_broken_table_is_no_data():
    mine = {"new": [Finding("x is small", "x < 1", "x < 1", key_check("x", lambda v: v < 1))]}
    assert judge({"new": _summary(x=0.5)}, mine).iloc[0]["reproduced"] == "yes"
    assert judge({"new": _summary(y=0.5)}, mine).iloc[0]["reproduced"] == "no data"
    assert judge({}, mine).iloc[0]["reproduced"] == "not run"
    broken = {"new": [Finding("boom", "", "", lambda tables: tables["missing"])]}
    assert judge({"new": {}}, broken).iloc[0]["measured"].startswith("no data (KeyError")
