"""A researcher's own inputs: queries from a file, texts scored as hypothetical training sequences, and the
outlier diagnostics and per-copy units of the top-k tables, on the tiny world."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from analysis.outliers import dominance_threshold, dominant_sequences
from embedded.records import candidate_records
from embedded.world import load_queries
from experiments import run as runner
from experiments.pipeline.hypothetical import training_rows
from experiments.pipeline.stages import encode_stage, fit_stage
from influence import InfluenceError, LanguageModelTask, compute_scores

from .conftest import TINY_QUERIES, compose_cfg

OWN = [
    {"name": "own_velmora", "prompt": "The capital of Velmora is", "completion": " Tarsk.", "tags": {"type": "fact"}},
    {"name": "own_water", "prompt": "Water is made of", "completion": " hydrogen and oxygen."},
]


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_queries_from_a_file_are_added_or_replace_the_items(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", OWN)
    added = load_queries(compose_cfg("queries=tiny", f"queries.path={f}").queries)
    assert [q.name for q in added][-2:] == ["own_velmora", "own_water"]
    assert len(added) == len(compose_cfg("queries=tiny").queries.names) + 2
    assert added[-2].tags == {"type": "fact"} and added[-1].completion == " hydrogen and oxygen."
    y = tmp_path / "q.yaml"
    y.write_text(yaml.safe_dump({"items": OWN}), encoding="utf-8")
    replaced = load_queries(
        compose_cfg(f"queries.path={y}", "queries.replace=true", "queries.names=[own_water]").queries
    )
    assert [q.name for q in replaced] == ["own_water"]


@pytest.mark.parametrize(
    "content,overrides,message",
    [
        (None, [], "does not exist"),
        ('{"name": "a", "prompt": "x"\n', [], "line 1 is not JSON"),
        ('{"name": "a", "prompt": "x"}\n', [], "needs completion"),
        (json.dumps(OWN[0] | {"name": "water"}) + "\n", ["queries=tiny"], "already has"),
        ("", [], "holds no record"),
    ],
)
def test_a_bad_query_file_fails_in_one_line(tmp_path, content, overrides, message):
    f = tmp_path / "q.jsonl"
    if content is not None:
        f.write_text(content, encoding="utf-8")
    with pytest.raises(InfluenceError, match=message) as e:
        load_queries(compose_cfg(*overrides, f"queries.path={f}").queries)
    assert "\n" not in str(e.value)


def test_replace_without_a_path_and_a_bad_candidates_file_fail_before_any_work(tmp_path):
    with pytest.raises(InfluenceError, match="no path is given"):
        load_queries(compose_cfg("queries.replace=true").queries)
    bad = _jsonl(tmp_path / "c.jsonl", [{"name": "x", "body": "no text key"}])
    cfg = compose_cfg(
        "model=tiny", "data=tiny", f"candidates.path={bad}", f"paths.output_dir={tmp_path}", "logger=none"
    )
    with pytest.raises(InfluenceError, match="record 1 has no text"):
        runner.main(cfg)
    assert not (tmp_path / "models").exists() and not (tmp_path / "corpora").exists()


def test_dominant_sequences_counts_queries_against_the_threshold():
    top = pd.DataFrame(
        {
            "query": ["a", "a", "b", "b", "c", "c", "d"],
            "rank": [1, 2, 1, 2, 1, 2, 1],
            "row": [7, 3, 7, 4, 7, 3, 5],
            "sequence_id": [70, 30, 70, 40, 70, 30, 50],
            "category": ["x"] * 7,
            "loss_per_token": [6.0, 1.0, 6.0, 1.0, 6.0, 1.0, 0.5],
        }
    )
    assert dominance_threshold(4, 0.25) == 2 and dominance_threshold(40, 0.25) == 10
    d = dominant_sequences(top, 4, 0.25)
    assert d["row"].tolist() == [7, 3] and d["queries"].tolist() == [3, 2]
    assert d.iloc[0]["query_names"] == "a,b,c" and d.iloc[1]["best_rank"] == 2
    assert dominant_sequences(top, 4, 0.9).empty


@pytest.fixture(scope="module")
def own_run(tiny_cfg, tiny_world, tmp_path_factory):
    """top_influences on the tiny world with a query file and a candidates file: one of the candidates is a training
    row's own text (its hypothetical score must be the row's scan score), one is unrelated."""
    d = tmp_path_factory.mktemp("own")
    queries = _jsonl(d / "q.jsonl", OWN[:1])
    row = 5
    texts = [{"name": "row_copy", "text": tiny_world.train.texts[row], "source": "corpus"}, "Blue fish swim at dusk."]
    cands = d / "c.yaml"
    cands.write_text(yaml.safe_dump(texts), encoding="utf-8")
    cfg = compose_cfg(
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "score.num_threads=1",
        "logger=none",
        "study=top_influences",
        f"queries.path={queries}",
        f"candidates.path={cands}",
        "score.top_k=4",
    )
    return cfg, runner.main(cfg), row


def test_file_queries_and_hypothetical_candidates_reach_the_tables_and_report(own_run, tiny_world):
    cfg, tables, row = own_run
    top, cand = tables["top_influences"], tables["candidate_scores"]
    assert "own_velmora" in set(top["query"]) and "own_velmora" in set(cand["query"])
    assert set(cand["candidate"]) == {"row_copy", "candidate_1"} and len(cand) == 2 * 5
    assert cand.loc[cand["candidate"] == "row_copy", "source"].eq("corpus").all()
    scores = tables["scores"]
    for q, g in cand[cand["candidate"] == "row_copy"].groupby("query"):
        scanned = scores[(scores["query"] == q) & (scores["row"] == row)]["score"].iloc[0]
        # the text tokenized as a training row is that row: the same score, and its rank among the training set
        assert g["score"].iloc[0] == pytest.approx(scanned, rel=1e-4, abs=1e-6)
        higher = (scores[scores["query"] == q]["score"] > scanned + 1e-6 * abs(scanned)).sum()
        assert abs(g["rank_among_training"].iloc[0] - (1 + higher)) <= 1
    n = len(tiny_world.train.texts)
    assert cand["delta_log_p"].to_numpy() == pytest.approx(cand["score"].to_numpy() / n)
    tokens = tables["candidate_tokens"]
    assert set(tokens["category"]) == {"row_copy", "candidate_1"}
    per = tokens.groupby(["query", "category"])["token_score"].sum()
    full = cand.set_index(["query", "candidate"])["score"]
    assert per.to_numpy() == pytest.approx(full.loc[per.index].to_numpy(), rel=1e-3, abs=1e-5)
    run_dir = Path(cfg.paths.output_dir) / "runs" / "latest"
    report = (run_dir / "report.md").read_text()
    assert "delta_log_p = score / N" in report and f"N = {n}" in report and "candidate_scores" in report
    assert (run_dir / "figures" / "candidate_sequences.html").exists()


def test_top_k_diagnostics_are_the_quantities_they_name(own_run, tiny_world):
    cfg, tables, _ = own_run
    top = tables["top_influences"]
    assert {"cosine", "loss_per_token", "self_influence", "top_k_queries", "delta_log_p"} <= set(top.columns)
    counts = top.groupby("row")["query"].nunique()
    assert (top["top_k_queries"].to_numpy() == counts.loc[top["row"]].to_numpy()).all()
    # the cosine: the same rows scored with normalize="unit", independently of the breakdown
    q = next(q for q in tiny_world.queries if q.name == "water")
    t = top[top["query"] == "water"]
    rows = torch.tensor(t["row"].tolist())
    curvature = fit_stage(cfg, tiny_world)
    data = {"input_ids": tiny_world.train.input_ids, "attention_mask": tiny_world.train.attention_mask}
    unit = compute_scores(
        tiny_world.model,
        LanguageModelTask(),
        curvature,
        encode_stage(tiny_world, [q]),
        data,
        indices=rows,
        normalize="unit",
    )
    assert unit.scores[0].tolist() == pytest.approx(t["cosine"].tolist(), rel=1e-3, abs=1e-6)
    # the loss per token: the model's mean cross-entropy over each row's targets
    batch = training_rows(tiny_world.tokenizer, [tiny_world.train.texts[int(r)] for r in rows], int(cfg.data.seq_len))
    with torch.no_grad():
        for i, r in enumerate(t["loss_per_token"]):
            n = int(batch["attention_mask"][i].sum())
            ids = batch["input_ids"][i : i + 1, :n]
            assert float(tiny_world.model(input_ids=ids, labels=ids).loss) == pytest.approx(r, rel=1e-4)
    assert (top["self_influence"] > 0).all()
    # the dominant-sequence table is the top-k table's own count against the threshold
    dom = tables["dominant_sequences"]
    threshold = dominance_threshold(top["query"].nunique(), 0.25)
    assert set(dom["row"]) == set(counts[counts >= threshold].index)


def test_a_candidates_file_in_each_format_is_read(tmp_path):
    (tmp_path / "c.txt").write_text("First text.\n\nSecond text\nover two lines.\n", encoding="utf-8")
    got = candidate_records(str(tmp_path / "c.txt"))
    assert [r["text"] for r in got] == ["First text.", "Second text\nover two lines."]
    assert [r["name"] for r in got] == ["candidate_0", "candidate_1"]
    with pytest.raises(InfluenceError, match="another candidate is named"):
        candidate_records(str(_jsonl(tmp_path / "d.jsonl", [{"name": "a", "text": "x"}, {"name": "a", "text": "y"}])))
    with pytest.raises(InfluenceError, match="not scalars"):
        candidate_records(str(_jsonl(tmp_path / "e.jsonl", [{"text": "x", "tags": {"a": 1}}])))
