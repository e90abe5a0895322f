"""The runner end to end on the tiny world: tables written, factors cached and reused, bad config refused."""

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from experiments import run as runner
from experiments.pipeline.stages import fit_stage
from influence import InfluenceError

from .conftest import compose_cfg


def test_top_influences_job_writes_tables_and_reuses_factors(tiny_cfg, tiny_world, tiny_output_dir, capsys):
    runner.main(tiny_cfg)
    run_dir = tiny_output_dir / "runs" / "latest"
    top = pd.read_parquet(run_dir / "top_influences.parquet")
    assert list(top.columns[:7]) == ["query", "type", "rank", "sequence_id", "row", "score", "category"]
    assert set(top["query"]) == {q.name for q in tiny_world.queries}
    assert (top.groupby("query")["rank"].max() == tiny_cfg.score.top_k).all()
    # ranks are by descending score, and the table's text is the scored sequence's
    for _, g in top.groupby("query"):
        assert g["score"].is_monotonic_decreasing
    r = top.iloc[0]
    assert r["text"] == tiny_world.train.texts[r["row"]]
    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert len(scores) == len(tiny_world.queries) * tiny_world.train.input_ids.shape[0]
    assert "scale_convention" in (run_dir / "metadata.json").read_text()
    assert "query_memory_mb" in (run_dir / "metadata.json").read_text()
    from influence.storage import load_tensors

    tensors, tmeta = load_tensors(run_dir / "top_token_scores.safetensors")
    first = top[top["query"] == "quote_hamlet"]
    tok = tensors["quote_hamlet/token_scores"]
    assert tok.shape[0] == tiny_cfg.score.top_k and "scale_convention" in tmeta
    rows = tensors["quote_hamlet/rows"].tolist()
    for _, r in first.iterrows():  # the token-wise breakdown sums to the listed full-rank score
        assert abs(float(tok[rows.index(r["row"])].sum()) - r["score"]) <= 1e-3 * abs(r["score"]) + 1e-6
    printed = capsys.readouterr().out
    assert "== quote_hamlet" in printed
    # a memorised quote's top sequence is one of its copies (exact passage among the top)
    hamlet = top[top["query"] == "quote_hamlet"].iloc[0]
    assert "To be, or not to be" in hamlet["text"]
    factors = list((tiny_output_dir / "factors" / tiny_world.name).glob("ekfac-*.safetensors"))  # this model's own
    assert len(factors) == 1
    mtime = factors[0].stat().st_mtime_ns
    fit_stage(tiny_cfg, tiny_world)  # reused, not refitted
    assert factors[0].stat().st_mtime_ns == mtime


def test_curvature_choices_compose_and_unknown_ones_fail(tiny_cfg, tiny_world):
    for name in ("ekfac", "kfac", "lissa", "identity"):
        cfg = compose_cfg(f"curvature={name}")
        assert cfg.curvature.name == name
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.curvature.name = "ekfca"
    with pytest.raises(InfluenceError, match="unknown curvature 'ekfca'"):
        fit_stage(cfg, tiny_world)
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.curvature.dampnig = 0.3
    with pytest.raises(InfluenceError, match="no option"):
        fit_stage(cfg, tiny_world)


def test_query_rank_study_writes_fig3_table_and_figure(tiny_cfg, tiny_world, tiny_output_dir):
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.study = "query_rank"
        cfg.query_rank = {"ranks": [2, 8, 32]}
        cfg.score.max_sequences = 64
    tables = runner.main(cfg)
    t = tables["query_rank"]
    assert set(t["rank"]) == {2, 8, 32} and set(t["query"]) == {q.name for q in tiny_world.queries}
    assert t["pearson"].between(-1, 1).all()
    # correlation with full rank does not fall as the rank grows (best rank-r approximations are nested)
    mean = t.groupby("rank")["pearson"].mean()
    assert mean[32] >= mean[2] - 1e-6 and mean[32] > 0.9
    run_dir = tiny_output_dir / "runs" / "latest"
    assert (run_dir / "figures" / "fig3_query_rank.png").stat().st_size > 1000 and (
        run_dir / "figures" / "fig3_query_rank.pdf"
    ).exists()


def test_tfidf_filter_scores_each_query_on_its_own_candidates(tiny_cfg, tiny_world):
    from experiments.pipeline.stages import encode_stage, scan_stage
    from influence.filtering import BM25Index

    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.filter = compose_cfg("filter=tfidf", "filter.top_k=20").filter
    curvature = fit_stage(cfg, tiny_world)
    result = scan_stage(cfg, tiny_world, curvature)
    enc = encode_stage(tiny_world)
    index = BM25Index.build(
        tiny_world.train.input_ids, vocab_size=len(tiny_world.tokenizer), attention_mask=tiny_world.train.attention_mask
    )
    for qi, q in enumerate(tiny_world.queries):
        expected = set(index.top_k(enc["input_ids"][qi][enc["attention_mask"][qi].bool()], 20).indices.tolist())
        scored = set(result.indices[result.scores[qi].isfinite()].tolist())
        assert scored == expected
    _, rows = result.top_k(5)
    for qi in range(len(tiny_world.queries)):
        assert torch.isfinite(result.scores[qi, [list(result.indices).index(r) for r in rows[qi].tolist()]]).all()
    assert result.metadata["filter"].startswith("tfidf")


def test_tfidf_vs_unfiltered_study(tiny_cfg, tiny_world):
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.study = "tfidf_vs_unfiltered"
        cfg.filter = compose_cfg("filter=tfidf", "filter.top_k=30").filter  # mode and k1 take their defaults
        cfg.tfidf_vs_unfiltered = {"tail": 100}
    t = runner.main(cfg)["tfidf_vs_unfiltered"]
    assert set(t["query"]) == {q.name for q in tiny_world.queries}
    assert t["overlap_at_k"].between(0, 1).all() and (t["candidates"] == 30).all()
    assert (t["scanned"] == tiny_world.train.input_ids.shape[0]).all()
    # the unfiltered scan contains every TF-IDF candidate, so its 10th best is at least TF-IDF's
    assert (t["unfiltered_10th_score"] >= t["tfidf_10th_score"] - 1e-6).all()
