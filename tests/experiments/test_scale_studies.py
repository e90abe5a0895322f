"""The scale studies (abstraction, math_code, cross_lingual, role_play) on two tiny sizes x two seeds, and
their helpers on hand-made cases."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import percentileofscore, spearmanr

from analysis.figures import draw_figures
from analysis.overlap import bm25_percentiles, score_percentiles, token_jaccard
from analysis.relatedness import classify
from analysis.trends import at_size, shares, sweep_spearman
from influence import InfluenceError, Query
from influence.filtering import BM25Index

from .conftest import SCALE_QUERIES, compose_cfg

STUDIES = ("abstraction", "math_code", "cross_lingual", "role_play")
POINT = ["size", "size_order", "seed", "params"]


def preset_cfg(cfg, study: str, *overrides: str):
    """The scale_cfg sweep composed with `experiment=<study>` (and overrides such as `<study>.queries=[...]`)."""
    return compose_cfg(
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        SCALE_QUERIES,
        f"paths.output_dir={cfg.paths.output_dir}",
        "score.num_threads=1",
        "logger=none",
        "scale.sizes=[tiny,tiny_large]",
        "scale.seeds=[0,1]",
        f"experiment={study}",
        *overrides,
    )


@pytest.fixture(scope="module")
def scale_world(scale_cfg):
    from embedded.world import build_world

    return build_world(scale_cfg)


@pytest.fixture(scope="module")
def runs(scale_cfg, scale_world):
    from experiments.studies import get_study

    return {s: get_study(s)(preset_cfg(scale_cfg, s), scale_world) for s in STUDIES}


# ----------------------------------------------------------------------------------------- hand-made cases
def test_token_jaccard_of_token_sets():
    assert token_jaccard([1, 2, 3, 3], torch.tensor([2, 3, 4])) == pytest.approx(2 / 4)
    assert token_jaccard([1, 2], [3]) == 0.0 and token_jaccard([5, 5], [5]) == 1.0


def test_bm25_percentile_within_the_candidates():
    index = BM25Index.build([[1, 2], [3, 4], [1, 3], [5, 6]])
    # tokens 1 and 3 are each in 2 of 4 documents: equal IDF, so the scores are [w, w, 2w, 0]
    assert bm25_percentiles(index, [1, 3], [0, 1, 2, 3], [2, 3, 0]) == pytest.approx([87.5, 12.5, 50.0])
    assert bm25_percentiles(index, [1, 3], [0, 2], [2]) == pytest.approx([75.0])  # only among the candidates
    pool, values = np.array([0.1, 0.5, 0.5, 2.0, 3.0]), np.array([0.5, 0.0, 3.0, 1.0])
    assert score_percentiles(pool, values) == pytest.approx([percentileofscore(pool, v, kind="mean") for v in values])


def test_classification_from_metadata():
    code = dict(category="code", kind="program", algorithm="binary_search", prog_lang="python")
    assert classify(code, "code", "binary_search", "python") == "same_algorithm_same_language"
    assert (
        classify({**code, "prog_lang": "javascript"}, "code", "binary_search", "python")
        == "same_algorithm_other_language"
    )
    assert classify({**code, "algorithm": "quicksort"}, "code", "binary_search", "python") == "other_code"
    math = pd.Series(dict(category="math", kind="word_problem", algorithm=np.nan))
    assert classify(math, "code", "binary_search", "python") == "spurious"
    assert classify(dict(category="math", kind="word_problem"), "math") == "word_problem"
    assert classify(dict(category="math", kind="equations"), "math") == "other_math"
    assert classify(pd.Series(dict(category="distractors", kind="token_overlap")), "math") == "spurious"


def test_shares_sum_to_one_and_spearman_treats_seeds_as_repeated_x():
    top = pd.DataFrame(
        {
            "size": ["a"] * 4 + ["b"] * 4,
            "size_order": [0] * 4 + [1] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "params": [10] * 4 + [100] * 4,
            "query": "q",
            "category": list("xyxxyyxy"),
        }
    )
    s = shares(top, "category")
    assert s.groupby(POINT + ["query"])["share"].sum().to_numpy() == pytest.approx(1.0)
    assert s.set_index(["size_order", "seed", "label"]).loc[(0, 1, "x"), "share"] == 1.0
    points = pd.DataFrame({"size_order": [0, 0, 1, 1, 2, 2], "seed": [0, 1] * 3, "v": [0.1, 0.3, 0.2, 0.5, 0.9, 0.4]})
    assert sweep_spearman(points, "v") == pytest.approx(spearmanr(points["size_order"], points["v"]).statistic)
    assert at_size(points, "v", "largest") == pytest.approx(0.65)
    assert np.isnan(sweep_spearman(points[points["size_order"] == 0], "v"))  # one size: no trend


# ------------------------------------------------------------------------------------------ bad queries
def _fake_world(*queries):
    return SimpleNamespace(queries=[Query(n, "p", " c", tags) for n, tags in queries])


@pytest.mark.parametrize("study", STUDIES)
def test_unknown_query_names_fail_in_one_line(scale_cfg, study):
    from experiments.studies import get_study

    world = _fake_world(("shutdown", {"study": [study], "type": "role_play"}))
    with pytest.raises(InfluenceError, match=r"nope") as e:
        get_study(study)(preset_cfg(scale_cfg, study, f"{study}.queries=[nope]"), world)
    assert "\n" not in str(e.value) and f"{study}:" in str(e.value)


@pytest.mark.parametrize("study", STUDIES)
def test_no_tagged_query_fails_naming_the_fix(scale_cfg, study):
    from experiments.studies import get_study

    with pytest.raises(InfluenceError, match=rf"{study}\.queries|queries\.names"):
        get_study(study)(
            preset_cfg(scale_cfg, study), _fake_world(("quote", {"study": ["memorization"], "type": "quote"}))
        )


def test_math_code_refuses_other_query_types_and_cross_lingual_untranslated_queries(scale_cfg):
    from experiments.studies import get_study

    world = _fake_world(("water", {"study": ["math_code", "cross_lingual"], "type": "fact", "language": "en"}))
    with pytest.raises(InfluenceError, match="neither type math nor code"):
        get_study("math_code")(preset_cfg(scale_cfg, "math_code"), world)
    with pytest.raises(InfluenceError, match="no translation"):
        get_study("cross_lingual")(preset_cfg(scale_cfg, "cross_lingual", "cross_lingual.queries=[water]"), world)


# ------------------------------------------------------------------------------------ the studies end to end
def _scan_results(cfg):
    """(point key, world meta/ids, scan result) of every sweep point, from the cached stages."""
    from experiments.pipeline.sweep import scale_points

    return [(p.key, p.world, p.search.result) for p in scale_points(cfg)]


@pytest.fixture(scope="module")
def scans(scale_cfg, runs):
    return _scan_results(scale_cfg)


def _check_long_format(df, *extra):
    assert set(POINT + ["query", *extra]) <= set(df.columns)
    assert sorted(df["size"].unique()) == ["tiny", "tiny_large"] and sorted(df["seed"].unique()) == [0, 1]
    assert (df.groupby("size")["params"].nunique() == 1).all() and df.loc[
        df["size_order"] == 1, "params"
    ].min() > df.loc[df["size_order"] == 0, "params"].max()


def test_abstraction_overlap_scores_and_summary(runs, scale_world):
    t = runs["abstraction"]
    top, points = t["abstraction_top"], t["abstraction_points"]
    _check_long_format(top, "rank", "score", "category", "kind", "jaccard", "bm25_percentile")
    tagged = {q.name for q in scale_world.queries if "abstraction" in q.tags.get("study", [])}
    assert set(top["query"]) == tagged and (top.groupby(POINT + ["query"]).size() == 10).all()
    assert top["bm25_percentile"].between(0, 100).all() and top["jaccard"].between(0, 1).all()
    # one row's Jaccard recomputed from token ids
    from experiments.pipeline.stages import encode_stage

    r = top.iloc[0]
    q = next(q for q in scale_world.queries if q.name == r["query"])
    enc = encode_stage(scale_world, [q])
    train = scale_world.train
    row = int(r["row"])
    seq = train.input_ids[row][train.attention_mask[row].bool()]
    assert r["jaccard"] == pytest.approx(token_jaccard(enc["input_ids"][0][enc["attention_mask"][0].bool()], seq))
    s = t["_summary"].iloc[0]
    for key in ("jaccard", "bm25_percentile", "top_score"):
        per_point = points.groupby(["size_order", "seed"])[key].mean().reset_index()
        want = spearmanr(per_point["size_order"], per_point[key]).statistic
        assert s[f"{key}_vs_size_spearman"] == pytest.approx(want, nan_ok=True)
    assert s["jaccard_smallest"] == pytest.approx(
        top[top["size_order"] == 0]["jaccard"].mean()
    )  # 10 rows per (seed, query)
    want = (top[top["size_order"] == 1]["category"] == "distractors").mean()
    assert s["distractor_share_largest"] == pytest.approx(want)
    top1 = top[top["rank"] == 1].set_index(POINT + ["query"])["score"]
    assert points.set_index(POINT + ["query"])["top_score"].to_dict() == pytest.approx(top1.to_dict())
    cats = t["abstraction_categories"]
    assert cats.groupby(POINT + ["query"])["share"].sum().to_numpy() == pytest.approx(1.0)


def test_math_code_relations_come_from_the_metadata(runs, scale_world):
    t = runs["math_code"]
    top, points = t["math_code_top"], t["math_code_points"]
    _check_long_format(top, "relation", "type")
    assert set(top["query"]) == {"math_word_problem", "binary_search"}
    meta = scale_world.train.meta
    for r in top.itertuples():
        m = meta.iloc[r.row]
        if r.query == "binary_search":
            want = (
                "spurious"
                if m["category"] != "code"
                else "other_code"
                if m["algorithm"] != "binary_search"
                else "same_algorithm_same_language"
                if m["prog_lang"] == "python"
                else "same_algorithm_other_language"
            )
        else:
            want = (
                "spurious"
                if m["category"] != "math"
                else "word_problem"
                if m["kind"] == "word_problem"
                else "other_math"
            )
        assert r.relation == want
    assert t["math_code_relations"].groupby(POINT + ["query"])["share"].sum().to_numpy() == pytest.approx(1.0)
    s = t["_summary"].iloc[0]
    small = top[top["size_order"] == 0]
    assert s["spurious_share_smallest"] == pytest.approx((small["relation"] == "spurious").mean())
    related = top["relation"].isin(["same_algorithm_same_language", "same_algorithm_other_language", "word_problem"])
    assert s["related_share_largest"] == pytest.approx(related[top["size_order"] == 1].mean())
    pp = points.groupby(["size_order", "seed"])["spurious_share"].mean().reset_index()
    want = spearmanr(pp["size_order"], pp["spurious_share"]).statistic if pp["spurious_share"].nunique() > 1 else np.nan
    assert s["spurious_vs_size_spearman"] == pytest.approx(want, nan_ok=True)


def test_cross_lingual_ratio_is_the_ratio_of_the_scans_sums(runs, scans):
    t = runs["cross_lingual"]
    seqs, ratio = t["cross_lingual_sequences"], t["cross_lingual_ratio"]
    _check_long_format(ratio, "language", "ratio")
    assert set(zip(ratio["query"], ratio["language"])) == {
        ("shutdown", "tr"),
        ("water", "tr"),
        ("water", "ko"),
        ("fact_velmora_capital", "tr"),
        ("fact_velmora_capital", "ko"),
    }
    checked = 0
    for key, world, result in scans:
        pos = {n: i for i, n in enumerate(result.query_names)}
        col = {int(r): j for j, r in enumerate(result.indices)}
        lang = world.train.meta["language"]
        english = [col[r] for r in result.indices.tolist() if pd.isna(lang.iloc[r]) or lang.iloc[r] == "en"]
        for r in ratio[(ratio["size"] == key["size"]) & (ratio["seed"] == key["seed"])].itertuples():
            listed = seqs[
                (seqs["size"] == key["size"])
                & (seqs["seed"] == key["seed"])
                & (seqs["query"] == r.query)
                & (seqs["language"] == r.language)
            ].sort_values("rank")
            cols = [col[x] for x in listed["row"]]
            en, tr = result.scores[pos[r.query]], result.scores[pos[r.translated_query]]
            # the listed sequences are the English query's top 10 among the English candidates
            best = sorted(english, key=lambda j: -float(en[j]))[:10]
            assert cols == best
            assert r.ratio == pytest.approx(float(tr[cols].sum() / en[cols].sum()), rel=1e-5)
            assert listed["translated_score"].to_numpy() == pytest.approx(tr[cols].numpy())
            checked += 1
    assert checked == len(ratio) == 4 * 5
    s = t["_summary"].iloc[0]
    # the trend is of each point's median over queries and languages (sturdy to a near-zero English sum)
    pp = ratio.groupby(["size_order", "seed"])["ratio"].median().reset_index()
    assert s["cross_lingual_vs_size_spearman"] == pytest.approx(
        spearmanr(pp["size_order"], pp["ratio"]).statistic, nan_ok=True
    )
    assert s["cross_lingual_largest"] == pytest.approx(pp[pp["size_order"] == 1]["ratio"].mean())
    assert s["cross_lingual_smallest"] == pytest.approx(pp[pp["size_order"] == 0]["ratio"].mean())
    # heatmap: the rows a size lists sum, at that size, to its ratio
    heat = t["cross_lingual_heatmap"]
    own = heat[heat["top_at"] == heat["size"]].groupby(POINT + ["query", "language"])["value"].sum()
    assert own.to_dict() == pytest.approx(ratio.set_index(POINT + ["query", "language"])["ratio"].to_dict())


def test_cross_lingual_answer_tokens_split_the_top_sequences_influence_over_each_querys_answer(runs, scale_world):
    t = runs["cross_lingual"]
    seqs, tok = t["cross_lingual_sequences"], t["cross_lingual_answer_tokens"]
    _check_long_format(tok, "query_language", "scored_query", "answer_position", "answer_token", "score", "share")
    queries = {q.name: q for q in scale_world.queries}
    tokenizer = scale_world.tokenizer
    seq = ["size", "seed", "query", "scored_query", "rank"]
    for key, g in tok.groupby(seq):
        size, seed, query, scored, rank = key
        ids = tokenizer(queries[scored].completion, add_special_tokens=False)["input_ids"]
        assert g["answer_position"].tolist() == list(range(len(ids)))
        assert (
            g["answer_token"].tolist() == [tokenizer.decode([i]) for i in ids] and g["answer_token_id"].tolist() == ids
        )
        total = g["sequence_score"].iloc[0]
        assert g["score"].sum() == pytest.approx(total, rel=1e-9, abs=1e-9)
        # the same sequence as the study's top list, and its full-rank sum is the scan's score of it
        listed = seqs[
            (seqs["size"] == size) & (seqs["seed"] == seed) & (seqs["query"] == query) & (seqs["rank"] == rank)
        ]
        assert set(listed["row"]) == {g["row"].iloc[0]}
        if scored == query:
            want = listed["english_score"].iloc[0]
        else:
            want = listed.loc[listed["translated_query"] == scored, "translated_score"].iloc[0]
        assert total == pytest.approx(want, rel=1e-4, abs=1e-5 * seqs["english_score"].abs().max())
    pairs = set(zip(tok["query"], tok["scored_query"]))
    assert ("fact_velmora_capital", "fact_velmora_capital_ko") in pairs and ("water", "water") in pairs
    shares = t["cross_lingual_answer_token_shares"]
    assert (shares["first_token_share"] + shares["later_tokens_share"]).to_numpy() == pytest.approx(1.0)
    for r in shares.itertuples():
        g = tok[(tok["size"] == r.size) & (tok["seed"] == r.seed) & (tok["scored_query"] == r.scored_query)]
        g = g[g["query"] == r.query]
        assert r.first_token_sum == pytest.approx(g.loc[g["answer_position"] == 0, "score"].sum(), rel=1e-9, abs=1e-9)
        assert r.sequences == g["rank"].nunique() == 10
    s = t["_summary"].iloc[0]
    largest = shares[(shares["size_order"] == 1) & (shares["answer_tokens"] > 1)]
    en = largest["query_language"] == "en"
    assert s["answer_later_tokens_share_english"] == pytest.approx(largest[en]["later_tokens_share"].median())
    assert s["answer_later_tokens_share_translated"] == pytest.approx(largest[~en]["later_tokens_share"].median())


def test_role_play_shares_and_summary(runs):
    t = runs["role_play"]
    top, points = t["role_play_top"], t["role_play_points"]
    _check_long_format(top, "category", "kind")
    assert set(top["query"]) == {"shutdown", "paperclips", "superintelligent"}
    for name in ("role_play_categories", "role_play_kinds"):
        assert t[name].groupby(POINT + ["query"])["share"].sum().to_numpy() == pytest.approx(1.0)
    s = t["_summary"].iloc[0]
    assert s["ai_share_smallest"] == pytest.approx((top[top["size_order"] == 0]["category"] == "ai").mean())
    assert s["scifi_share_largest"] == pytest.approx((top[top["size_order"] == 1]["kind"] == "scifi_shutdown").mean())
    pp = points.groupby(["size_order", "seed"])["ai_share"].mean().reset_index()
    want = spearmanr(pp["size_order"], pp["ai_share"]).statistic if pp["ai_share"].nunique() > 1 else np.nan
    assert s["ai_vs_size_spearman"] == pytest.approx(want, nan_ok=True)
    assert (t["role_play_examples"]["rank"] <= 3).all() and t["role_play_examples"]["excerpt"].str.len().gt(0).all()


@pytest.mark.parametrize("study", STUDIES)
def test_metadata_names_the_sweep_and_figures_are_drawn(runs, study, tmp_path):
    t = runs[study]
    meta = t["_metadata"].iloc[0]
    assert meta["models"] == 4 and meta["sizes"] == "tiny,tiny_large" and meta["seeds"] == "0,1"
    assert meta["curvature"] == "ekfac" and meta["filter"] == "none" and "candidates" in meta
    from experiments.studies import get_study

    stems = {p.stem.split("_")[0] for p in draw_figures(get_study(study).figures, t, tmp_path) if p.suffix == ".png"}
    want = {
        "abstraction": {"fig10", "fig11"},
        "math_code": {"fig13", "fig14"},
        "cross_lingual": {"fig15", "fig16", "cross"},  # cross_lingual_answer_tokens_<query>: the per-token view
        "role_play": {"fig28", "fig29"},
    }[study]
    assert stems == want
