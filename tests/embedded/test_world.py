"""build_world: the contract studies rely on, caching, local checkpoints and corpora, and bad input."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from embedded import train as train_mod
from embedded.world import TrainingSet, World, build_world
from influence import Query
from influence.errors import InfluenceError

from ..conftest import compose_cfg


def test_world_contract(tiny_world):
    w = tiny_world
    assert isinstance(w, World) and isinstance(w.train, TrainingSet)
    assert w.name.startswith("gpt2-tiny-") and Path(w.model_dir).name == w.name
    assert not w.model.training and next(w.model.parameters()).dtype == torch.float32
    assert w.tokenizer.pad_token_id is not None
    ids, mask = w.train.input_ids, w.train.attention_mask
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    n = ids.shape[0]
    assert len(w.train.texts) == n and len(w.train.meta) == n and 200 <= n <= 600
    assert {"id", "category", "kind", "fact_id", "quote_id", "algorithm", "language"} <= set(w.train.meta.columns)
    assert (w.train.meta["id"].to_numpy() == range(n)).all()
    lengths = mask.sum(1)
    assert (ids[mask == 0] == w.tokenizer.pad_token_id).all()
    assert all(mask[i, : lengths[i]].all() for i in range(n))  # right-padded
    assert (lengths.numpy() == w.train.meta["n_tokens"].to_numpy()).all()
    i = int(w.train.meta.index[w.train.meta["category"] == "quotes"][0])
    assert w.tokenizer.decode(ids[i, : lengths[i]], skip_special_tokens=True) == w.train.texts[i]
    assert all(isinstance(q, Query) for q in w.queries) and {q.name for q in w.queries} >= {"shutdown", "water"}


def test_model_dir_is_a_loadable_checkpoint_with_report(tiny_world):
    d = Path(tiny_world.model_dir)
    assert AutoTokenizer.from_pretrained(str(d))("Velmora")["input_ids"] == tiny_world.tokenizer("Velmora")["input_ids"]
    report = json.loads((d / "training.json").read_text())
    curve = pd.read_csv(d / "curve.csv")
    evals = curve.dropna(subset=["val_loss"])
    assert evals["val_loss"].iloc[-1] < evals["val_loss"].iloc[0] < 10
    assert report["heldout_loss"] == pytest.approx(evals["val_loss"].iloc[-1], abs=1e-3)
    assert report["tokens_per_second"] > 0 and report["non_embedding_params"] > 0
    assert set(report["quotes"]) >= {"memorized", "total"} and "forward_accuracy" in report["facts"]
    # cross-lingual recall, per language, split by whether the corpus states the fact in every language (the tiny
    # world states none so: every translatable fact is English-only there)
    xl = report["cross_lingual_facts"]
    assert xl["stated_in_all_languages"]["n_facts"] == 0 and xl["stated_in_english_only"]["n_facts"] >= 2
    assert all(0 <= xl["stated_in_english_only"][lang] <= 1 for lang in ("en", "tr", "ko"))
    # what the model did not learn: every training document scored alone, the outliers listed
    losses = pd.read_csv(d / "doc_losses.csv")
    assert len(losses) == report["train_rows"] and losses["loss_per_token"].notna().all()
    assert report["doc_losses"]["overall"]["q50"] == pytest.approx(losses["loss_per_token"].median(), abs=1e-3)
    sheet = Path(tiny_world.model_dir).parents[1] / "corpora"
    assert any("| facts | fact_statement |" in p.read_text() for p in sheet.glob("*/datasheet.md"))


def test_reused_never_retrained(tiny_cfg, tiny_world, monkeypatch):
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("retrained a cached model"))
    again = build_world(tiny_cfg)
    assert again.model_dir == tiny_world.model_dir and again.name == tiny_world.name


def test_fingerprint_separates_seeds_and_sizes(tiny_cfg):
    from embedded.prepare import prepare_data

    prep = prepare_data(tiny_cfg)
    base = train_mod.model_dir_for(tiny_cfg, prep)
    other_seed = compose_cfg("model=tiny", "data=tiny", "seed=1", f"paths.output_dir={tiny_cfg.paths.output_dir}")
    other_size = compose_cfg("model=xs", "data=tiny", f"paths.output_dir={tiny_cfg.paths.output_dir}")
    assert len({base, train_mod.model_dir_for(other_seed, prep), train_mod.model_dir_for(other_size, prep)}) == 3


@pytest.fixture(scope="module")
def neox_checkpoint(tmp_path_factory, tiny_world):
    """A tiny GPT-NeoX checkpoint (random weights) saved with the tiny world's tokenizer."""
    d = tmp_path_factory.mktemp("neox")
    config = GPTNeoXConfig(
        vocab_size=len(tiny_world.tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    GPTNeoXForCausalLM(config).save_pretrained(str(d))
    tiny_world.tokenizer.save_pretrained(str(d))
    return d


def test_model_path_loads_a_local_checkpoint(neox_checkpoint, tiny_cfg):
    w = build_world(
        compose_cfg(
            "model=tiny",
            "data=tiny",
            "queries=tiny",
            f"model.path={neox_checkpoint}",
            f"paths.output_dir={tiny_cfg.paths.output_dir}",
        )
    )
    assert type(w.model).__name__ == "GPTNeoXForCausalLM" and not w.model.training
    assert w.model_dir == str(neox_checkpoint.resolve()) and w.name.startswith(neox_checkpoint.name)
    assert w.train.input_ids.shape[0] == len(w.train.meta) > 0


def _write_corpus(path: Path, kind: str, docs: list[str]) -> Path:
    if kind == "txt":
        path.write_text("\n\n".join(docs))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    else:
        pd.DataFrame({"text": docs}).to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_data_path_chunks_local_corpora(kind, tmp_path, neox_checkpoint, tiny_cfg):
    docs = [f"Document number {i} talks about rivers, bridges and the number {i * 7}." for i in range(60)]
    path = _write_corpus(tmp_path / f"corpus.{kind}", kind, docs)
    w = build_world(
        compose_cfg(
            "model=tiny",
            "data=local",
            "queries=tiny",
            f"data.path={path}",
            "data.seq_len=32",
            f"model.path={neox_checkpoint}",
            f"paths.output_dir={tmp_path / 'out'}",
        )
    )
    assert w.train.input_ids.shape[1] == 32 and bool(w.train.attention_mask.all())
    assert set(w.train.meta["category"]) == {"local"} and "Document number 3 " in "".join(w.train.texts)
    n_tokens = sum(len(w.tokenizer(d)["input_ids"]) + 1 for d in docs)
    assert 0.9 * n_tokens // 32 <= w.train.input_ids.shape[0] <= n_tokens // 32


def test_data_path_trains_a_model_on_a_local_corpus(tmp_path):
    docs = [f"The lighthouse keeper counted {i} ships and wrote the number {i} in the log." for i in range(200)]
    path = _write_corpus(tmp_path / "c.txt", "txt", docs)
    w = build_world(
        compose_cfg(
            "model=tiny",
            "data=local",
            "queries=tiny",
            f"data.path={path}",
            "data.seq_len=64",
            "data.vocab_size=300",
            "model.train.tokens=8000",
            "model.train.n_evals=1",
            f"paths.output_dir={tmp_path / 'out'}",
        )
    )
    assert (Path(w.model_dir) / "training.json").exists() and w.train.input_ids.shape[1] == 64


def test_bad_inputs_fail_with_one_line(tmp_path, neox_checkpoint, tiny_world):
    out = f"paths.output_dir={tmp_path / 'out'}"
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "short.txt").write_text("just a few words")
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    small = tmp_path / "small_vocab"
    GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(str(small))
    tiny_world.tokenizer.save_pretrained(str(small))
    cases = [
        ([f"data.path={tmp_path / 'missing.txt'}", "data=local"], "does not exist"),
        ([f"data.path={tmp_path / 'empty.txt'}", "data=local"], "holds no text"),
        ([f"data.path={tmp_path / 'notes.csv'}", "data=local"], "no .txt, .jsonl or .parquet"),
        ([f"data.path={tmp_path / 'short.txt'}", "data=local", f"model.path={neox_checkpoint}"], "seq_len"),
        ([f"model.path={no_model}", "data=tiny"], "no config.json"),
        ([f"model.path={small}", "data=tiny"], "embeds only 64"),
    ]
    for overrides, message in cases:
        with pytest.raises(InfluenceError, match=message) as e:
            build_world(compose_cfg("model=tiny", "queries=tiny", out, *overrides))
        assert "\n" not in str(e.value)


def test_the_cross_lingual_probe_asks_for_tokens_the_corpus_contains(tiny_world):
    """Prompt + completion must tokenize as the corpus sentence does: with the object alone as the completion, BPE's
    merge of a name's last piece with a Korean particle (" Drituk이었다") made Korean recall read 0 % at every size."""
    from embedded.corpus.facts import CORE
    from embedded.corpus.languages import FACT_TEMPLATES
    from embedded.recall import _translated_probe

    tok = tiny_world.tokenizer
    checked = 0
    for f in CORE:
        if f.relation not in FACT_TEMPLATES:
            continue
        for lang in ("en", "tr", "ko"):
            prompt, answer = _translated_probe(f, lang)
            sentence = FACT_TEMPLATES[f.relation][lang].format(s=f.subject, o=f.object)
            assert prompt + answer == sentence
            assert tok(prompt)["input_ids"] + tok(answer)["input_ids"] == tok(sentence)["input_ids"], (lang, sentence)
            checked += 1
    assert checked >= 6
