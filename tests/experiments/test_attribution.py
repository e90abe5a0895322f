"""Fact tracing, the LDS and proponent removal on the tiny world, end to end, with the numbers checked
independently: rankings recomputed from the library's scores, LDS from the bank by scipy, a resumed bank
bit-identical to an uninterrupted one, and a sharded bank that leaves nothing to fine-tune."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis.lds import linear_datamodeling_score
from embedded.finetune import FinetuneSettings
from experiments import run as runner
from experiments.pipeline.attribution import METHODS, method_scores
from experiments.pipeline.bank import Retrain, RetrainBank, subset_masks, without
from experiments.studies import fact_tracing
from influence import InfluenceError, LanguageModelTask, compute_scores, encode_queries, fit_curvature

FAST = "[ekfac,dot,cosine,ekfac_unit,bm25]"
SMALL_LDS = [
    "lds.n_finetune=12",
    "lds.n_subsets=5",
    "lds.drop_subsets=3",
    "lds.removal_queries=2",
    "lds.max_queries=3",
    "lds.finetune.epochs=1",
    "lds.finetune.batch_size=4",
    f"lds.methods={FAST}",
]


def _preset(name, tiny_cfg, tmp_path, *overrides):
    from .conftest import compose_cfg

    base = compose_cfg(
        f"experiment={name}",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "score.num_threads=1",
        "logger=none",
        *overrides,
    )
    return base


def test_fact_tracing_queries_and_relevant_sets_come_from_the_corpus(tiny_cfg, tiny_world):
    opts = fact_tracing.Options()
    queries, info = fact_tracing.fact_queries(tiny_cfg, tiny_world, opts)
    facts = info["fact_id"].unique()
    assert len(queries) == 2 * len(facts) and set(info["direction"]) == {"forward", "flipped"}
    relevant = fact_tracing.relevant_rows(tiny_world, info)
    meta = tiny_world.train.meta
    for q, fid in zip(info["query"], info["fact_id"]):
        expect = set(np.flatnonzero((meta["fact_id"] == fid).to_numpy()))
        assert set(relevant.loc[relevant["query"] == q, "row"]) == expect and expect
    rows = fact_tracing.candidates(tiny_world, relevant, 10, 0)
    assert set(relevant["row"]) <= set(rows.tolist()) and len(rows) == relevant["row"].nunique() + 10


def test_fact_tracing_ranks_equal_a_ranking_of_the_librarys_own_scores(tiny_cfg, tiny_world, tmp_path):
    cfg = _preset("fact_tracing", tiny_cfg, tmp_path, f"fact_tracing.methods={FAST}", "fact_tracing.max_facts=3")
    tables = runner.main(cfg)
    per_query = tables["fact_tracing"]
    assert set(per_query["method"]) == {"ekfac", "dot", "cosine", "ekfac_unit", "bm25"}
    # EK-FAC recomputed from the library directly: the first relevant rank of every query matches
    opts = fact_tracing.STUDY.read_options(cfg)
    queries, info = fact_tracing.fact_queries(cfg, tiny_world, opts)
    relevant = fact_tracing.relevant_rows(tiny_world, info)
    rows = fact_tracing.candidates(tiny_world, relevant, opts.distractors, int(cfg.seed))
    data = {"input_ids": tiny_world.train.input_ids, "attention_mask": tiny_world.train.attention_mask}
    task = LanguageModelTask()
    curv = fit_curvature(tiny_world.model, task, data, method="ekfac", seed=int(cfg.seed))
    enc = encode_queries(tiny_world.tokenizer, queries)
    for normalize, method in (("none", "ekfac"), ("unit", "ekfac_unit")):
        s = compute_scores(tiny_world.model, task, curv, enc, data, indices=rows, normalize=normalize).scores
        got = per_query[per_query["method"] == method].set_index("query")
        for qi, q in enumerate(queries):
            rel = set(relevant.loc[relevant["query"] == q.name, "row"])
            order = rows[torch.argsort(s[qi], descending=True)].tolist()
            first = 1 + min(order.index(r) for r in rel)
            assert got.loc[q.name, "first_relevant_rank"] == first, (method, q.name)
            assert got.loc[q.name, "reciprocal_rank"] == pytest.approx(1 / first)
    comparison = tables["attribution_comparison"].set_index("method")
    assert comparison.loc["ekfac", "mrr"] == pytest.approx(
        per_query[per_query.method == "ekfac"]["reciprocal_rank"].mean()
    )
    assert comparison["seconds"].notna().all()


def test_unit_methods_are_cosines_and_bm25_ranks_by_shared_tokens(tiny_cfg, tiny_world):
    queries = [q for q in tiny_world.queries][:2]
    rows = torch.arange(20)
    cosine, _ = method_scores(tiny_cfg, tiny_world, METHODS["cosine"], queries, rows)
    assert cosine.abs().max() <= 1 + 1e-6
    bm25, _ = method_scores(tiny_cfg, tiny_world, METHODS["bm25"], queries, rows)
    assert bm25.shape == (2, 20) and (bm25 >= 0).all()


def _bank(tiny_world, root, n=6):
    enc = encode_queries(tiny_world.tokenizer, list(tiny_world.queries)[:2])
    ids, mask = tiny_world.train.input_ids[:n], tiny_world.train.attention_mask[:n]
    return RetrainBank(root, tiny_world.model, ids, mask, FinetuneSettings(epochs=1, batch_size=3), enc)


def test_a_bank_killed_mid_fill_resumes_and_ends_as_an_uninterrupted_one(tiny_world, tmp_path, monkeypatch):
    retrains = [Retrain(m, 0) for m in subset_masks(6, 4, 0.5, 0)]
    whole = _bank(tiny_world, tmp_path / "whole")
    assert whole.fill(retrains) == 4
    killed = _bank(tiny_world, tmp_path / "killed")
    real, calls = killed.run, []

    def dies_on_the_third(r):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(r)
        return real(r)

    monkeypatch.setattr(killed, "run", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        killed.fill(retrains)
    monkeypatch.undo()
    with pytest.raises(InfluenceError, match="lacks 2 of 4"):
        killed.measurements(retrains)
    assert killed.fill(retrains) == 2  # only what was lost
    assert torch.equal(killed.measurements(retrains), whole.measurements(retrains))  # bit-identical
    assert whole.fill(retrains) == 0  # all cached
    corrupt = whole.path(retrains[0])
    corrupt.write_bytes(corrupt.read_bytes()[:-8] + b"garbage!")
    assert whole.fill(retrains) == 1  # a corrupt entry is fine-tuned again


def test_bank_entries_are_keyed_by_what_made_them(tiny_world, tmp_path):
    b = _bank(tiny_world, tmp_path)
    keep = without(6, torch.tensor([1]))
    assert b.key(Retrain(keep, 0)) != b.key(Retrain(keep, 1))
    assert b.key(Retrain(keep, 0)) != b.key(Retrain(without(6, torch.tensor([2])), 0))
    other = RetrainBank(tmp_path, tiny_world.model, b.ids, b.mask, FinetuneSettings(epochs=2, batch_size=3), b.queries)
    assert other.key(Retrain(keep, 0)) != b.key(Retrain(keep, 0))
    masks = subset_masks(10, 6, 0.5, 3)
    assert (masks.sum(1) == 5).all() and torch.equal(masks, subset_masks(10, 6, 0.5, 3))


def test_lds_from_a_hand_made_bank_is_scipys_spearman_and_true_effects_score_one():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 30)) < 0.5
    effects = rng.normal(size=(2, 30))
    outputs = masks @ effects.T  # (S, Q): the subsets' true additive effects
    res = linear_datamodeling_score(effects, masks, outputs)
    assert res.per_query == pytest.approx([1.0, 1.0])
    noisy = outputs + rng.normal(size=outputs.shape)
    res = linear_datamodeling_score(effects, masks, noisy)
    expect = [stats.spearmanr(masks @ effects[q], noisy[:, q])[0] for q in range(2)]
    assert res.per_query == pytest.approx(expect)


def test_lds_study_end_to_end_then_everything_is_cached(tiny_cfg, tiny_world, tmp_path):
    cfg = _preset("lds", tiny_cfg, tmp_path / "a", *SMALL_LDS)
    tables = runner.main(cfg)
    lds = tables["lds"]
    assert set(lds["variant"]) == {"subsets", "drop"} and lds["lds"].between(-1, 1).all()
    assert set(lds.loc[lds.variant == "subsets", "n_subsets"]) == {5}
    removal = tables["removal"]
    assert len(removal) == 2 * (5 + 1) and set(removal["method"]) == {*FAST.strip("[]").split(","), "random"}
    np.testing.assert_allclose(removal["rise"], removal["loss_removed"] - removal["loss_full"])
    summary = tables["_summary"].iloc[0]
    assert summary["retrains"] == 1 + 5 + 3 + len(removal) and summary["fine_tuned_now"] > 0
    # the bank's full model is the one every removal is compared against: its loss is that model's measurement
    assert removal["loss_full"].nunique() == 2
    again = runner.main(_preset("lds", tiny_cfg, tmp_path / "b", *SMALL_LDS))
    assert again["_summary"].iloc[0]["fine_tuned_now"] == 0
    pd.testing.assert_frame_equal(again["lds"], lds)


def test_a_sharded_bank_leaves_the_final_run_nothing_to_fine_tune(tiny_cfg, tiny_world, tmp_path):
    small = [o for o in SMALL_LDS if not o.startswith("lds.methods")] + ["lds.methods=[dot,bm25]", "lds.sample_seed=5"]
    first = runner.main(
        _preset("lds", tiny_cfg, tmp_path / "s0", *small, "lds.shards=2", "lds.shard=0", "lds.bank_only=true")
    )
    assert "lds" not in first
    with pytest.raises(InfluenceError, match="lacks"):
        runner.main(_preset("lds", tiny_cfg, tmp_path / "x", *small, "lds.shards=2", "lds.shard=0"))
    runner.main(_preset("lds", tiny_cfg, tmp_path / "s1", *small, "lds.shards=2", "lds.shard=1", "lds.bank_only=true"))
    final = runner.main(_preset("lds", tiny_cfg, tmp_path / "f", *small))
    assert final["_summary"].iloc[0]["fine_tuned_now"] == 0


def test_bad_attribution_options_fail_in_one_line(tiny_cfg, tmp_path):
    for bad, match in (
        ("fact_tracing.methods=[ekfac,nope]", "nope"),
        ("fact_tracing.directions=[sideways]", "directions"),
    ):
        with pytest.raises(InfluenceError, match=match):
            runner.main(_preset("fact_tracing", tiny_cfg, tmp_path, bad))
    for bad, match in (("lds.fraction=1.5", "fraction"), ("lds.shard=3", "shard"), ("lds.finetune.epochs=0", "epochs")):
        with pytest.raises(InfluenceError, match=match):
            runner.main(_preset("lds", tiny_cfg, tmp_path, bad))
    with pytest.raises(InfluenceError, match="unit"):
        runner.main(_preset("fact_tracing", tiny_cfg, tmp_path, "score.normalize=cosine"))


def test_fact_tracing_on_a_labelled_local_corpus(tmp_path):
    """`experiment=fact_tracing data=local data.path=corpus.jsonl data.rows=documents queries.path=facts.jsonl`:
    the relevant set of each query is the corpus rows whose `fact_id` column names the query's `fact_id` tag, and
    BM25 (each fact's invented names occur in no other document) ranks one of them first for every query."""
    import json

    from .conftest import compose_cfg

    facts = {
        "f_velmora": ("Velmora", "Drituk"),
        "f_quenby": ("Quenby", "Saltrane"),
        "f_orrin": ("Orrin", "Maelgrove"),
        "f_tashkel": ("Tashkel", "Brevoth"),
    }
    wordings = ["The capital of {s} is {o}.", "{o} is the capital city of {s}.", "In {s}, the seat of rule is {o}."]
    docs = [{"text": w.format(s=s, o=o), "fact_id": fid} for fid, (s, o) in facts.items() for w in wordings]
    filler = ["The river ran past the mill and the farmers sold bread.", "Boil the water and add the rice slowly."]
    docs += [{"text": f"{filler[i % 2]} Day {i}.", "fact_id": ""} for i in range(30)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = tmp_path / "facts.jsonl"
    queries.write_text(
        "".join(
            json.dumps(
                {"name": fid, "prompt": f"The capital of {s} is", "completion": f" {o}.", "tags": {"fact_id": fid}}
            )
            + "\n"
            for fid, (s, o) in facts.items()
        )
    )
    cfg = compose_cfg(
        "experiment=fact_tracing",
        "model=tiny",
        "data=local",
        f"data.path={corpus}",
        "data.rows=documents",
        "data.seq_len=32",
        "data.vocab_size=300",
        "data.val_fraction=0.1",
        "model.train.tokens=4000",
        "model.train.n_evals=1",
        "queries=tiny",
        f"queries.path={queries}",
        "queries.replace=true",
        "queries.names=null",
        "fact_tracing.methods=[dot,bm25]",
        "fact_tracing.distractors=null",
        "logger=none",
        "score.num_threads=1",
        f"paths.output_dir={tmp_path / 'out'}",
    )
    tables = runner.main(cfg)
    per_query = tables["fact_tracing"]
    meta = prepare_data_meta(cfg)
    expected = {fid: int((meta["fact_id"] == fid).sum()) for fid in facts}
    assert all(n >= 2 for n in expected.values())  # the held-out split may take one of a fact's three documents
    for row in per_query.itertuples():
        assert row.n_relevant == expected[row.fact_id], row
    assert set(per_query["query"]) == set(facts) and set(per_query["method"]) == {"dot", "bm25"}
    bm25 = per_query[per_query["method"] == "bm25"]
    assert (bm25["reciprocal_rank"] == 1.0).all()
    assert tables["_summary"]["facts"].iloc[0] == len(facts)


def prepare_data_meta(cfg):
    from embedded.prepare import prepare_data

    return prepare_data(cfg).meta.reset_index(drop=True)
