"""A bad `model.path` checkpoint or local corpus fails at load in one line naming the file, never loads as
something else (an empty tokenizer, a masked LM, randomly initialised weights)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPTNeoXConfig, GPTNeoXForCausalLM

from embedded.local_data import load_local_texts
from embedded.models import load_checkpoint, meta_model
from embedded.tokenizer import load_tokenizer, train_tokenizer
from experiments.pipeline.options import check
from influence.errors import InfluenceError

from ..conftest import compose_cfg

DOCS = [f"The lighthouse keeper counted {i} ships and wrote the number {i} in the log." for i in range(50)]


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS, 300)


@pytest.fixture(scope="module")
def good(tmp_path_factory, tokenizer) -> Path:
    """A tiny GPT-NeoX causal LM (random weights) saved with its tokenizer."""
    d = tmp_path_factory.mktemp("good")
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    GPTNeoXForCausalLM(config).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d


def variant(good: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(good, tmp_path / name))


def edit_config(d: Path, **changes) -> None:
    c = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    (d / "config.json").write_text(json.dumps(c))


def test_a_good_checkpoint_loads(good):
    model, tok = load_checkpoint(str(good))
    assert type(model).__name__ == "GPTNeoXForCausalLM" and not model.training and len(tok) > 2


def test_no_tokenizer_files_fails_naming_the_directory(good, tmp_path):
    """It used to load as an empty tokenizer built from config.json (every text encoded to nothing)."""
    d = variant(good, tmp_path)
    for f in d.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert one_line(e).startswith(f"model.path={d} has no tokenizer files") and "save_pretrained" in one_line(e)
    with pytest.raises(InfluenceError, match="has no tokenizer files"):
        load_tokenizer(str(d))
    with pytest.raises(InfluenceError, match="has no tokenizer files"):  # the run's option check, before any work
        check(compose_cfg("model=tiny", f"model.path={d}"))


def test_a_garbage_tokenizer_json_is_named(good, tmp_path):
    d = variant(good, tmp_path)
    (d / "tokenizer.json").write_text("{garbage")
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert f"{d / 'tokenizer.json'} is not valid JSON" in one_line(e)


def test_a_masked_lm_is_refused(tmp_path, tokenizer):
    """AutoModelForCausalLM used to load a BertForMaskedLM as a BertLMHeadModel (attending both ways)."""
    d = tmp_path / "bert"
    torch.manual_seed(0)  # the weights (and so how much a later token moves a logit) no longer hang on test order
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertForMaskedLM(config).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert "holds a BertForMaskedLM (config.json architectures), not a causal LM" in one_line(e)
    edit_config(d, architectures=None)  # no architectures: the forward check catches the two-way attention
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert "its predictions depend on later tokens, so it is not a causal LM" in one_line(e)
    edit_config(d, model_type="vit")  # a model type with no causal LM at all
    with pytest.raises(InfluenceError, match="not a config transformers can read|has no causal LM"):
        load_checkpoint(str(d))


def test_a_garbage_config_is_named(good, tmp_path):
    d = variant(good, tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert f"{d / 'config.json'} is not valid JSON" in one_line(e)
    with pytest.raises(InfluenceError, match="is not valid JSON"):
        meta_model(compose_cfg("model=tiny", f"model.path={d}"))


def test_truncated_or_missing_weights_are_named(good, tmp_path):
    d = variant(good, tmp_path)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert f"{weights} is truncated or corrupt" in one_line(e)
    with pytest.raises(InfluenceError, match="is truncated or corrupt"):
        check(compose_cfg("model=tiny", f"model.path={d}"))
    weights.unlink()
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert one_line(e).startswith(f"model.path={d} has no weights")


def test_weights_that_do_not_cover_the_config_are_refused(good, tmp_path):
    """transformers initialises the missing layer at random with only a warning."""
    d = variant(good, tmp_path)
    edit_config(d, num_hidden_layers=2)
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(d))
    assert "its weights lack 12 parameter(s) its config.json needs (gpt_neox.layers.1." in one_line(e)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(InfluenceError) as e:
        load_checkpoint(str(tmp_path / "nowhere"))
    assert one_line(e) == (
        f"model.path={tmp_path / 'nowhere'} has no config.json (the directory does not exist): "
        "point it at a saved Hugging Face causal LM directory"
    )


def test_bad_corpus_files_are_named(tmp_path):
    """The `datasets` loaders said "An error occurred while generating the dataset" or "StopIteration"."""
    good = tmp_path / "corpus.parquet"
    pd.DataFrame({"text": DOCS}).to_parquet(good)
    assert load_local_texts(str(good)) == DOCS
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:100])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 not a parquet file")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    for f in (truncated, garbage, empty):
        with pytest.raises(InfluenceError) as e:
            load_local_texts(str(f))
        assert one_line(e).startswith(f"data file {f} is not a readable parquet file")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(good, folder / "a.parquet")
    shutil.copy(truncated, folder / "b.parquet")
    with pytest.raises(InfluenceError, match=f"data file {folder / 'b.parquet'} is not a readable parquet"):
        load_local_texts(str(folder))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(InfluenceError) as e:
        load_local_texts(str(tmp_path / "bad.jsonl"))
    assert one_line(e).startswith(f"data file {tmp_path / 'bad.jsonl'} line 2 is not JSON")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InfluenceError) as e:
        load_local_texts(str(tmp_path / "empty.txt"))
    assert one_line(e) == f"data.path={tmp_path / 'empty.txt'} holds no text: add documents to it"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n\nmore".encode("latin-1"))
    with pytest.raises(InfluenceError, match="is not UTF-8 text"):
        load_local_texts(str(tmp_path / "latin1.txt"))


def test_local_texts_read_as_before(tmp_path):
    """Paragraphs of a .txt (blank-line separated), the text column of JSON Lines and of a .json array."""
    (tmp_path / "c.txt").write_text("one\nline two\n\n\n\nthree\n\n  \n\nfour\n")
    assert load_local_texts(str(tmp_path / "c.txt")) == ["one\nline two", "three", "four\n"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d, "n": 1}) + "\n" for d in DOCS[:3]) + "\n")
    assert load_local_texts(str(tmp_path / "c.jsonl")) == DOCS[:3]
    (tmp_path / "c.json").write_text(json.dumps([{"content": "x"}, {"content": None}, {"content": "y"}]))
    assert load_local_texts(str(tmp_path / "c.json")) == ["x", "y"]
    with pytest.raises(InfluenceError, match=r"has no text column \(columns: \['content'\]\): set data.text_column"):
        load_local_texts(str(tmp_path / "c.json"), text_column="txt")
