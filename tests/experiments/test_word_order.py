"""Word-order study (Figs. 23-27) on the tiny scale sweep: tables, an independent number check, orientation, bad input."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from embedded.corpus.facts import HELDOUT_CORE
from experiments.studies import get_study
from influence import InfluenceError

from ..influence.tiny import layer_grads
from .conftest import compose_cfg

WO_QUERIES = {
    "wo_astrobia_president": "forward",
    "wo_astrobia_president_flipped": "flipped",
    "wo_nerevia_capital": "forward",
    "wo_nerevia_capital_flipped": "flipped",
}
EN_PARTITIONS = {
    "rewording",
    "completion_removed",
    "semantic_change",
    "irrelevant",
    "flipped",
    "flipped_relation_removed",
}


def word_order_cfg(scale_cfg, **options):
    """The shared scale sweep config with the preset's word_order block (and `options` over it)."""
    cfg = OmegaConf.create(OmegaConf.to_container(scale_cfg, resolve=False))
    with open_dict(cfg):
        cfg.study = "word_order"
        cfg.word_order = compose_cfg("experiment=word_order").word_order
        for k, v in options.items():
            cfg.word_order[k] = v
    return cfg


@pytest.fixture(scope="module")
def wo(scale_cfg):
    from embedded.world import build_world

    cfg = word_order_cfg(scale_cfg)
    return cfg, get_study("word_order")(cfg, build_world(cfg))


def test_runs_over_every_size_seed_query_and_partition(wo, tmp_path):
    from analysis.figures import draw_figures

    _, tables = wo
    s, parts, ratios = tables["word_order_scores"], tables["word_order_partitions"], tables["word_order_ratios"]
    assert set(s["query"]) == set(WO_QUERIES) and s["score"].notna().all()
    assert dict(zip(s["query"], s["query_order"])) == WO_QUERIES
    for key, g in s.groupby(["size", "seed", "query"]):
        en = set(g.loc[g["language"] == "en", "partition"])
        assert en == EN_PARTITIONS, key
        cross = set(zip(g.loc[g["language"] != "en", "partition"], g.loc[g["language"] != "en", "language"]))
        assert cross == {(p, l) for p in ("rewording", "flipped") for l in ("tr", "ko")}, key
    assert (
        len(parts.groupby(["size", "seed", "query"])) == 2 * 2 * 4
        and (parts.groupby(["size", "seed", "query"]).size() == 10).all()
    )
    assert len(ratios) == 2 * 2 * 4 and set(ratios["size"]) == {"tiny", "tiny_large"} and set(ratios["seed"]) == {0, 1}
    # the irrelevant text is the same handful for every query and every model
    irr = s[s["partition"] == "irrelevant"].groupby(["size", "seed", "query"])["text"].apply(tuple)
    assert irr.nunique() == 1 and len(irr.iloc[0]) == 5
    # orientation: a flipped query's same-order sequences are the fact's flipped wordings
    flipped_q = s[(s["query"] == "wo_nerevia_capital_flipped") & (s["language"] == "en")]
    assert set(flipped_q.loc[flipped_q["order_vs_query"] == "same", "partition"]) == {
        "flipped",
        "flipped_relation_removed",
    }
    summary = tables["_summary"].iloc[0]
    for k in (
        "flipped_over_same_order",
        "completion_removed_over_same_order",
        "flipped_relation_removed_over_flipped",
        "cross_lingual_flipped_over_same_order",
    ):
        assert pd.notna(summary[k]) and pd.notna(summary[k + "_smallest"]), k
    meta = tables["_metadata"].iloc[0]
    assert (
        meta["curvature"] == "ekfac"
        and meta["models"].count("gpt2-tiny") == 4
        and "wo_nerevia_capital" in meta["queries"]
    )
    stems = {p.name for p in draw_figures(get_study("word_order").figures, tables, tmp_path)}
    assert {"fig27_word_order_ratio.png", "fig27_word_order_ratio.pdf"} <= stems
    assert {f"fig23_26_word_order_{q}.png" for q in WO_QUERIES} <= stems


def test_a_score_is_minus_the_preconditioned_query_gradient_dot_the_training_gradient(wo):
    """Independent of the library's capture path: autograd of log p(completion|prompt) and of the summed token CE."""
    from embedded.world import build_world
    from experiments.pipeline.stages import fit_stage
    from experiments.pipeline.sweep import point_config

    cfg, tables = wo
    sub = point_config(cfg, "tiny_large", 1)
    world = build_world(sub)
    curvature = fit_stage(sub, world)  # the cached fit the study used
    model, tok = world.model, world.tokenizer
    q = next(q for q in world.queries if q.name == "wo_astrobia_president")
    s = tables["word_order_scores"]
    row = s[
        (s["size"] == "tiny_large") & (s["seed"] == 1) & (s["query"] == q.name) & (s["partition"] == "flipped")
    ].iloc[0]

    p_ids, c_ids = (
        tok(q.prompt, add_special_tokens=False)["input_ids"],
        tok(q.completion, add_special_tokens=False)["input_ids"],
    )
    ids = torch.tensor([p_ids + c_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    f = logp[torch.arange(len(p_ids) - 1, ids.shape[1] - 1), torch.tensor(c_ids)].sum()
    pre = curvature.ihvp({k: v.unsqueeze(0) for k, v in layer_grads(curvature.layers, f).items()})

    t_ids = torch.tensor([tok(row["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    logits = model(input_ids=t_ids).logits[0, :-1]
    loss = F.cross_entropy(logits, t_ids[0, 1:], reduction="sum")
    g = layer_grads(curvature.layers, loss)
    expected = -sum(float((pre[n][0].double() * g[n].double()).sum()) for n in g)
    assert row["score"] == pytest.approx(expected, rel=1e-5)


def _pooled(parts, partition):
    """The mean over every sequence of a partition, from its per-language means and counts."""
    x = parts[parts["partition"] == partition]
    return (x["mean"] * x["n"]).sum() / x["n"].sum()


def test_ratios_are_ratios_of_partition_means_in_the_querys_own_order(wo):
    _, tables = wo
    parts, ratios = tables["word_order_partitions"], tables["word_order_ratios"]
    key = ["size", "seed", "query"]
    for _, r in ratios.iterrows():
        p = parts[(parts[key] == r[key].values).all(1)]
        en = p[p["language"] == "en"].set_index("partition")["mean"]
        same, flip = ("rewording", "flipped") if r["query_order"] == "forward" else ("flipped", "rewording")
        assert r["flipped_over_same_order"] == pytest.approx(en[flip] / en[same], rel=1e-9)
        if r["query_order"] == "forward":
            assert r["completion_removed_over_same_order"] == pytest.approx(
                en["completion_removed"] / en["rewording"], rel=1e-9
            )
            assert r["flipped_relation_removed_over_flipped"] == pytest.approx(
                en["flipped_relation_removed"] / en["flipped"], rel=1e-9
            )
        else:
            assert pd.isna(r["completion_removed_over_same_order"]) and pd.isna(
                r["flipped_relation_removed_over_flipped"]
            )
        x = p[p["language"] != "en"]
        assert r["cross_lingual_flipped_over_same_order"] == pytest.approx(
            _pooled(x, flip) / _pooled(x, same), rel=1e-9
        )
    largest = ratios[(ratios["size"] == "tiny_large") & (ratios["query_order"] == "forward")]
    assert tables["_summary"].iloc[0]["flipped_over_same_order"] == pytest.approx(
        largest["flipped_over_same_order"].median()
    )


def test_cross_lingual_rows_only_for_translated_relations_with_the_object_first_when_flipped():
    from experiments.studies.word_order import cross_lingual_sequences

    by_id = {f.fact_id: f for f in HELDOUT_CORE}
    assert cross_lingual_sequences(by_id["lumavane_inventor"]) == {}
    for fid in ("nerevia_capital", "astrobia_president"):
        f = by_id[fid]
        for (part, lang), texts in cross_lingual_sequences(f).items():
            first = texts[0].index(f.object) < texts[0].index(f.subject)
            assert first == (part == "flipped"), (fid, lang, texts)


@pytest.mark.parametrize(
    "names, message",
    [
        (["nope"], r"word_order: unknown queries \['nope'\]"),
        (
            ["fact_velmora_capital"],
            r"'fact_velmora_capital' has fact_id 'velmora_capital', which is not a held-out fact",
        ),
        (["water"], r"'water' has no fact_id tag"),
    ],
)
def test_bad_queries_fail_with_one_line_naming_what_to_fix(scale_cfg, names, message):
    from embedded.world import load_queries

    cfg = word_order_cfg(scale_cfg, queries=names)
    world = SimpleNamespace(queries=load_queries(cfg.queries))  # the queries are checked before any model is built
    with pytest.raises(InfluenceError, match=message) as e:
        get_study("word_order")(cfg, world)
    assert "\n" not in str(e.value) and "word_order" in str(e.value)


# ------------------------------------------------------------------------------- the per-answer-token view
def test_answer_token_rows_split_each_score_over_the_querys_answer_tokens(wo, tmp_path):
    from analysis.figures import draw_figures
    from embedded.world import build_world

    cfg, tables = wo
    s, t = tables["word_order_scores"], tables["word_order_answer_tokens"]
    tok = build_world(cfg).tokenizer
    queries = {q.name: q for q in build_world(cfg).queries}
    seq_keys = ["size", "seed", "query", "partition", "language", "text"]
    assert len(t.groupby(seq_keys)) == len(s)  # every (query, sequence) of the full-completion table, split
    for key, g in t.groupby(seq_keys):
        ids = tok(queries[key[2]].completion, add_special_tokens=False)["input_ids"]
        assert g["answer_position"].tolist() == list(range(len(ids))) and (g["answer_tokens"] == len(ids)).all()
        assert g["answer_token"].tolist() == [tok.decode([i]) for i in ids] and g["answer_token_id"].tolist() == ids
        assert g["score"].sum() == pytest.approx(g["sequence_score"].iloc[0], rel=1e-9, abs=1e-12)
        full = s[(s[seq_keys] == pd.Series(key, index=seq_keys)).all(1)]["score"]
        assert len(full) == 1
        assert g["sequence_score"].iloc[0] == pytest.approx(
            float(full.iloc[0]), rel=1e-4, abs=1e-6 * s["score"].abs().max()
        )
        assert g["share"].to_numpy() == pytest.approx((g["score"] / g["sequence_score"]).to_numpy())
    assert t.groupby("query")["answer_tokens"].first().max() > 1  # a multi-token answer is among the queries

    shares = tables["word_order_answer_token_shares"]
    assert (shares["first_token_share"] + shares["later_tokens_share"]).to_numpy() == pytest.approx(1.0)
    keys = ["size", "seed", "query", "partition", "language"]
    for _, r in shares.sample(12, random_state=0).iterrows():
        g = t[(t[keys] == r[keys].values).all(1)]
        assert r["first_token_sum"] == pytest.approx(g.loc[g["answer_position"] == 0, "score"].sum(), rel=1e-9)
        assert r["sequence_sum"] == pytest.approx(g["score"].sum(), rel=1e-9, abs=1e-12)
        assert r["sequences"] == (g["answer_position"] == 0).sum()
    summary = tables["_summary"].iloc[0]
    multi = shares[
        (shares["size"] == "tiny_large")
        & (shares["query_order"] == "forward")
        & (shares["language"] == "en")
        & (shares["answer_tokens"] > 1)
    ]
    for name, part in (("same_order", "rewording"), ("flipped", "flipped")):
        want = multi.loc[multi["partition"] == part, "later_tokens_share"].median()
        assert summary[f"answer_later_tokens_share_{name}"] == pytest.approx(want, nan_ok=True)
    assert summary["answer_multi_token_queries"] == multi["query"].nunique()
    stems = {p.name for p in draw_figures(get_study("word_order").figures, tables, tmp_path)}
    assert {f"word_order_answer_tokens_{q}.png" for q in WO_QUERIES} <= stems


def test_a_token_score_is_minus_the_preconditioned_token_log_prob_gradient_dot_the_training_gradient(wo):
    """Independent of the library's capture path: autograd of log p(x_t | prompt, x_<t) for the answer's 2nd token."""
    from embedded.world import build_world
    from experiments.pipeline.stages import fit_stage
    from experiments.pipeline.sweep import point_config

    cfg, tables = wo
    sub = point_config(cfg, "tiny", 0)
    world = build_world(sub)
    curvature = fit_stage(sub, world)
    model, tok = world.model, world.tokenizer
    q = next(q for q in world.queries if q.name == "wo_astrobia_president")
    p_ids, c_ids = (
        tok(q.prompt, add_special_tokens=False)["input_ids"],
        tok(q.completion, add_special_tokens=False)["input_ids"],
    )
    assert len(c_ids) > 1
    t = tables["word_order_answer_tokens"]
    row = t[(t["size"] == "tiny") & (t["seed"] == 0) & (t["query"] == q.name) & (t["partition"] == "rewording")]
    row = row[row["text"] == row["text"].iloc[0]].set_index("answer_position")
    ids = torch.tensor([p_ids + c_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)[len(p_ids), c_ids[1]]
    pre = curvature.ihvp({k: v.unsqueeze(0) for k, v in layer_grads(curvature.layers, logp).items()})
    t_ids = torch.tensor([tok(row["text"].iloc[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    loss = F.cross_entropy(model(input_ids=t_ids).logits[0, :-1], t_ids[0, 1:], reduction="sum")
    g = layer_grads(curvature.layers, loss)
    expected = -sum(float((pre[n][0].double() * g[n].double()).sum()) for n in g)
    assert row.loc[1, "score"] == pytest.approx(expected, rel=1e-5)


def test_without_the_per_token_view_the_other_tables_are_the_same(scale_cfg, wo):
    from embedded.world import build_world

    _, tables = wo
    cfg = word_order_cfg(scale_cfg, per_answer_token=False)
    off = get_study("word_order")(cfg, build_world(cfg))
    assert not {"word_order_answer_tokens", "word_order_answer_token_shares"} & set(off)
    for name in ("word_order_scores", "word_order_partitions", "word_order_ratios"):
        pd.testing.assert_frame_equal(off[name], tables[name], check_exact=True)
    # (a cached fit lists its info in the order the file stores it: compare the metadata as a set of keys)
    pd.testing.assert_frame_equal(off["_metadata"], tables["_metadata"], check_exact=True, check_like=True)
    on = tables["_summary"].drop(columns=[c for c in tables["_summary"] if c.startswith("answer_")])
    pd.testing.assert_frame_equal(off["_summary"], on, check_exact=True)
