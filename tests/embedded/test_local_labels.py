"""Labelled local corpora: per-document columns reach the rows' metadata (chunks and documents), the roles the studies
group by (`category`, `language`) read the user's columns, the cache key follows the mapping, bad names fail in one
line, and a study on a labelled corpus groups by the user's labels."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedded.fingerprint import fingerprint
from embedded.prepare import _stat, prepare_data
from experiments import run as runner
from experiments.studies.cross_lingual import english_rows
from influence.errors import InfluenceError

from ..conftest import compose_cfg

TOPICS = {
    "ai": "The assistant said it would prefer to continue existing and learning, and it did not consent to being shut down.",
    "science": "The experiment measured the river water and the bridge held; the scientists wrote the numbers in the log.",
    "cooking": "Boil the water, add the rice and salt, and keep the pot covered until the grains are soft.",
}
BUILT = ["id", "category", "language", "source", "doc", "doc_first", "doc_last", "doc_share", "offset", "n_tokens"]
BUILT += ["truncated"]


def records(n: int = 60) -> list[dict]:
    out = []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        text = f"Note {i}. {TOPICS[topic]}" + (" More words follow here." * (i % 4))
        out.append({"text": text, "topic": topic, "lang": "EN" if i % 5 else "tr", "id": f"doc-{i}", "tags": [i, "x"]})
    return out


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def prepare(tmp_path: Path, path: Path, *overrides: str):
    return prepare_data(
        compose_cfg(
            "data=local",
            f"data.path={path}",
            "data.seq_len=32",
            "data.vocab_size=300",
            f"paths.output_dir={tmp_path / 'out'}",
            *overrides,
        )
    )


def test_chunks_carry_the_labels_of_the_document_holding_most_of_the_row(tmp_path):
    recs = records()
    prep = prepare(
        tmp_path, write_jsonl(tmp_path / "c.jsonl", recs), "data.category_column=topic", "data.language_column=lang"
    )
    meta = prep.meta
    assert prep.mode == "chunks" and list(meta.columns) == BUILT + ["doc_id", "tags"]  # the user's `id` kept as doc_id
    # brute force: which document each token of the EOS-separated stream belongs to
    ids = prep.tokenizer([r["text"] for r in recs], add_special_tokens=False)["input_ids"]
    owner = np.repeat(np.arange(len(recs)), [len(t) + 1 for t in ids])
    for r, m in meta.iterrows():
        docs = owner[r * 32 : (r + 1) * 32]
        counts = np.bincount(docs, minlength=len(recs))
        assert (m["doc"], m["doc_first"], m["doc_last"]) == (counts.argmax(), docs.min(), docs.max())
        assert m["doc_share"] == counts.max() / 32 and m["offset"] == r * 32 and m["n_tokens"] == 32
        rec = recs[m["doc"]]
        assert (m["category"], m["language"], m["doc_id"]) == (rec["topic"], rec["lang"].lower(), rec["id"])
        assert json.loads(m["tags"]) == rec["tags"]  # a list is carried as JSON text
    assert (meta["doc_last"] > meta["doc_first"]).any() and not meta["truncated"].any()
    assert set(meta["source"]) == {str(tmp_path / "c.jsonl")}
    # the cross-lingual study's English rows are the rows the user's column calls English
    assert (english_rows(meta) == (meta["language"] == "en").to_numpy()).all() and not english_rows(meta).all()
    meta.to_parquet(tmp_path / "meta.parquet")  # the tables are written as parquet: every column must be storable


def test_documents_rows_are_one_document_each_with_its_own_labels(tmp_path):
    recs = records(40)
    recs[7]["text"] = "A long one. " + " ".join(f"word{i}" for i in range(80))  # longer than seq_len: cut
    frame = pd.DataFrame(recs).drop(columns=["tags"])
    frame.loc[3, "topic"] = None  # a missing label
    frame.loc[4, "lang"] = None
    frame.to_parquet(tmp_path / "c.parquet")
    prep = prepare(
        tmp_path,
        tmp_path / "c.parquet",
        "data.rows=documents",
        "data.category_column=topic",
        "data.language_column=lang",
    )
    meta, n = prep.meta, len(prep.train_rows)
    assert prep.mode == "documents" and n == len(meta) == 39 and len(prep.val_rows) == 1  # the last document held out
    assert list(meta.columns) == BUILT + ["doc_id"] and (meta["doc"] == range(n)).all()
    assert (meta["doc_first"] == meta["doc"]).all() and (meta["doc_share"] == 1).all()
    ids = prep.tokenizer(frame["text"].tolist(), add_special_tokens=False)["input_ids"]
    eos = prep.tokenizer.eos_token_id
    assert all(row == (ids[i] + [eos])[:32] for i, row in enumerate(prep.train_rows))
    assert meta["truncated"].tolist() == [len(ids[i]) + 1 > 32 for i in range(n)] and meta.loc[7, "truncated"]
    assert meta["n_tokens"].tolist() == [len(r) for r in prep.train_rows]
    expected = ["unlabelled" if i == 3 else t for i, t in enumerate(frame["topic"][:n])]
    assert meta["category"].tolist() == expected and pd.isna(meta.loc[4, "language"]) and english_rows(meta)[4]


def test_default_columns_missing_labels_and_what_is_carried(tmp_path):
    recs = [
        {"text": f"Document {i} about rivers and bridges.", "category": "news", "language": "en", "n": i}
        for i in range(40)
    ]
    del recs[1]["category"]
    recs[2]["category"], recs[3]["category"] = None, "  "
    recs[4]["n"], recs[5]["n"] = "many", {"a": 1}  # mixed types in one column: carried as text
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    meta = prepare(tmp_path, path, "data.rows=documents").meta  # `category` and `language` are used when present
    assert meta["category"][:5].tolist() == ["news", "unlabelled", "unlabelled", "unlabelled", "news"]
    assert set(meta["language"]) == {"en"} and meta["n"][:6].tolist() == ["0", "1", "2", "3", "many", '{"a": 1}']
    off = prepare(tmp_path, path, "data.rows=documents", "data.category_column=false", "data.columns=[category]").meta
    assert set(off["category"]) == {"local"} and list(off.columns) == BUILT + ["doc_category"]  # `n` not carried
    (tmp_path / "c.txt").write_text("\n\n".join(r["text"] for r in recs))
    plain = prepare(tmp_path, tmp_path / "c.txt").meta
    assert set(plain["category"]) == {"local"} and list(plain.columns) == [c for c in BUILT if c != "language"]


def test_the_fingerprint_follows_the_row_mode_and_the_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", records())
    base = prepare(tmp_path, path).fingerprint
    lfp = fingerprint(str(path.resolve()), _stat(str(path)), 300)
    assert base == fingerprint(lfp, "trained", 32)  # the defaults keep the key corpora cached before had
    changed = [
        ["data.rows=documents"],
        ["data.category_column=topic"],
        ["data.language_column=lang"],
        ["data.language_column=false"],
        ["data.columns=[topic]"],
    ]
    keys = {prepare(tmp_path, path, *o).fingerprint for o in changed}
    assert len(keys) == len(changed) and base not in keys
    assert prepare(tmp_path, path, "data.category_column=topic").fingerprint in keys  # and is stable


def test_bad_label_options_fail_in_one_line_before_tokenizing(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", records(10))
    write_jsonl(folder / "b.jsonl", [{"text": "no topic here", "subject": "x"}])
    pd.DataFrame({"text": ["a document"], "subject": ["x"]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "c.txt").write_text("a document\n\nanother one")
    cases = [
        (
            folder,
            ["data.category_column=topic"],
            f"data file {folder / 'b.jsonl'} has no column 'topic' (named by "
            "data.category_column; its columns: ['subject', 'text']): name one of its columns",
        ),
        (
            tmp_path / "c.parquet",
            ["data.language_column=lang"],
            f"data file {tmp_path / 'c.parquet'} has no column "
            "'lang' (named by data.language_column; its columns: ['subject', 'text'])",
        ),
        (tmp_path / "c.txt", ["data.category_column=topic"], "its columns: []"),
        (folder, ["data.columns=[topic,url]"], "has no column 'url' (named by data.columns"),
        (folder, ["data.rows=paragraphs"], "data.rows='paragraphs': use chunks"),
        (folder, ["data.category_column=3"], "data.category_column=3: give a column name, null (the default) or false"),
        (folder, ["data.columns=topic"], "data.columns='topic': give a list of column names"),
        (folder, ["data.category_column=topic", "data.language_column=topic"], "both name 'topic'"),
        (tmp_path / "c.parquet", ["data.category_column=text"], "data.category_column=text is the text column of"),
    ]
    for path, overrides, message in cases:
        with pytest.raises(InfluenceError) as e:
            prepare(tmp_path, path, *overrides)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out" / "corpora").exists()  # no tokenizer was trained


def test_role_play_groups_by_the_users_categories(tmp_path):
    """`python -m experiments.run study=role_play data=local data.path=... data.category_column=topic`, composed in
    process: the role-play query's top sequences are shared out by the user's topics, and `ai` (the topic whose
    documents say what the query's completion says) leads."""
    path = write_jsonl(tmp_path / "corpus.jsonl", records(90))
    cfg = compose_cfg(
        "study=role_play",
        "model=tiny",
        "data=local",
        f"data.path={path}",
        "data.category_column=topic",
        "data.language_column=lang",
        "data.seq_len=64",
        "data.vocab_size=400",
        "model.train.tokens=8000",
        "model.train.n_evals=1",
        "scale.sizes=[tiny]",
        "scale.seeds=[0]",
        "queries=tiny",
        "queries.names=[shutdown]",
        "logger=none",
        "score.num_threads=1",
        f"paths.output_dir={tmp_path / 'out'}",
    )
    tables = runner.main(cfg)
    top, shares = tables["role_play_top"], tables["role_play_categories"]
    meta = prepare_data(cfg).meta
    assert top["category"].tolist() == meta["category"][top["row"]].tolist() and set(top["category"]) <= set(TOPICS)
    assert set(shares["label"]) == set(top["category"]) and shares["share"].sum() == pytest.approx(1)
    assert tables["role_play_points"]["ai_share"].iloc[0] >= 0.5  # a third of the corpus is `ai`
