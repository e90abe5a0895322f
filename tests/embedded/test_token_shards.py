"""data=shards: Megatron .bin/.idx shards (written here, read in place), .npy and Arrow/parquet token corpora, the
streamed training set they become, and bad input failing in one line before any work."""

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from embedded.megatron_shards import HEADER_BYTES, MAGIC, MegatronShard, ShardWriter, write_shard
from embedded.prepare import prepare_data
from embedded.shards import check_shards, open_stream
from embedded.token_rows import LazyTexts, PackedRows
from embedded.tokenizer import train_tokenizer
from embedded.world import TrainingSet, build_world, training_set
from experiments import run as runner
from influence import LanguageModelTask, encode_queries, find_tracked_layers, fit_curvature
from influence.batching import iter_batches, rows_fingerprint
from influence.errors import InfluenceError
from influence.fingerprint import tensors_fingerprint
from influence.scan import scan

from ..conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    f"Document {i}: the {w} of Velmora is {c}, and water boils at {100 + i} degrees."
    for i, (w, c) in enumerate([("capital", "Orin"), ("river", "Sel"), ("king", "Adan"), ("queen", "Mira")] * 15)
]
SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 320)


@pytest.fixture(scope="module")
def documents(tokenizer):
    """Each text's token ids followed by EOS, as GPT-NeoX's preprocessing (`--append-eod`) writes them."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]


@pytest.fixture(scope="module")
def shard(tmp_path_factory, documents, tokenizer):
    return write_shard(tmp_path_factory.mktemp("pile") / "pile_00_text_document", documents, len(tokenizer))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny GPT-NeoX checkpoint (random weights) with the shard's tokenizer, saved as a hub download would be."""
    d = tmp_path_factory.mktemp("neox")
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,  # the default queries fit
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d


def shards_cfg(tmp_path, path, checkpoint, *extra):
    return compose_cfg(
        "data=shards",
        f"data.path={path}",
        f"data.seq_len={SEQ_LEN}",
        f"model.path={checkpoint}",
        "queries.names=[shutdown,water]",
        f"paths.output_dir={tmp_path}",
        "score.num_threads=1",
        "logger=none",
        *extra,
    )


def test_shard_written_in_the_megatron_layout_and_read_in_place(shard, documents):
    flat = np.concatenate([np.asarray(d) for d in documents])
    raw = Path(f"{shard}.idx").read_bytes()  # the layout, read here independently of the reader
    assert raw[:9] == MAGIC == b"MMIDIDX\x00\x00"
    version, code, seqs, docs = struct.unpack("<QBQQ", raw[9:HEADER_BYTES])
    assert (version, code, seqs, docs) == (1, 8, len(documents), len(documents) + 1)  # 8: uint16
    sizes = np.frombuffer(raw, np.int32, seqs, HEADER_BYTES)
    pointers = np.frombuffer(raw, np.int64, seqs, HEADER_BYTES + 4 * seqs)
    doc_index = np.frombuffer(raw, np.int64, docs, HEADER_BYTES + 12 * seqs)
    assert sizes.tolist() == [len(d) for d in documents] and len(raw) == HEADER_BYTES + 12 * seqs + 8 * docs
    assert (pointers == 2 * np.concatenate([[0], np.cumsum(sizes)[:-1]])).all() and doc_index.tolist() == list(
        range(docs)
    )
    assert (np.fromfile(f"{shard}.bin", np.uint16) == flat).all()

    s = MegatronShard(f"{shard}.bin")  # either file names the shard
    assert isinstance(s.tokens, np.memmap) and s.dtype == np.uint16 and s.n_tokens == len(flat)
    assert (np.asarray(s.tokens) == flat).all() and s.documents == len(documents)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    offsets = np.array([0, 1, starts[3], starts[3] - 1, len(flat) - 1])
    assert s.document_of(offsets).tolist() == (np.searchsorted(starts, offsets, side="right") - 1).tolist()


def test_writer_streams_batches_and_wide_vocabularies(tmp_path):
    with ShardWriter(tmp_path / "wide", np.int32) as w:
        w.add(np.array([70000, 1, 2, 3, 4]), lengths=[2, 3])  # two documents in one call
        w.add([5])
    s = MegatronShard(tmp_path / "wide")
    assert s.dtype == np.int32 and s.sequences == 3 and s.tokens.tolist() == [70000, 1, 2, 3, 4, 5]
    with pytest.raises(InfluenceError, match="do not fit uint16"):
        with ShardWriter(tmp_path / "narrow", np.uint16) as w:
            w.add([70000])
    assert not list(tmp_path.glob("narrow*"))  # a failed write leaves nothing behind


def _rewrite(src: Path, dst: Path, edit) -> Path:
    for suffix in (".bin", ".idx"):
        data = bytearray(Path(f"{src}{suffix}").read_bytes())
        Path(f"{dst}{suffix}").write_bytes(bytes(edit(suffix, data)))
    return dst


def _set(suffix, data, which, offset, value):
    if suffix == which:
        data[offset : offset + len(value)] = value
    return data


BAD = {
    "missing .idx": (lambda s, d: d, "no index .*\\.idx \\(its \\.bin is there\\).*copy it there", ".idx"),
    "truncated .idx": (lambda s, d: d[:-5] if s == ".idx" else d, "is truncated", None),
    "truncated .bin": (lambda s, d: d[:-4] if s == ".bin" else d, "is truncated .* copy the .bin and .idx again", None),
    "float dtype code": (
        lambda s, d: _set(s, d, ".idx", 17, b"\x06"),
        "dtype code 6 \\(float64, not token ids\\)",
        None,
    ),
    "unknown dtype code": (lambda s, d: _set(s, d, ".idx", 17, b"\x09"), "dtype code 9 \\(unknown\\)", None),
    "bad magic": (lambda s, d: _set(s, d, ".idx", 0, b"NOTANIDX!"), "does not start with", None),
    "version": (lambda s, d: _set(s, d, ".idx", 9, struct.pack("<Q", 2)), "version 2", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shards_fail_in_one_line(case, shard, tmp_path):
    edit, message, remove = BAD[case]
    bad = _rewrite(shard, tmp_path / "bad_text_document", edit)
    if remove:
        Path(f"{bad}{remove}").unlink()
    with pytest.raises(InfluenceError, match=message) as e:
        MegatronShard(bad)
    assert "\n" not in str(e.value)


def test_empty_shard_and_empty_writes_fail_in_one_line(tmp_path):
    Path(tmp_path / "empty.idx").write_bytes(MAGIC + struct.pack("<QBQQ", 1, 8, 0, 1) + struct.pack("<q", 0))
    Path(tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(InfluenceError, match="lists no sequence: the shard is empty"):
        MegatronShard(tmp_path / "empty")
    with pytest.raises(InfluenceError, match="no document was written"):
        write_shard(tmp_path / "none", [], vocab_size=100)


def test_streamed_training_set_is_a_view_of_the_shard(shard, checkpoint, tmp_path, tokenizer):
    prep = prepare_data(shards_cfg(tmp_path, shard, checkpoint), tokenizer=tokenizer)
    assert isinstance(prep.train_rows, PackedRows) and prep.mode == "chunks"
    train = training_set(prep)
    assert isinstance(train, TrainingSet) and isinstance(train.texts, LazyTexts)
    flat = np.fromfile(f"{shard}.bin", np.uint16)
    n = len(flat) // SEQ_LEN
    ids = train.input_ids
    assert ids.shape == (n, SEQ_LEN) and ids.dtype == torch.uint16
    mapped = prep.train_rows.stream.tokens
    assert isinstance(mapped, np.memmap) and np.shares_memory(ids.numpy(), mapped)  # the map's bytes, not a copy
    assert (ids.numpy() == flat[: n * SEQ_LEN].reshape(n, SEQ_LEN)).all()
    mask = train.attention_mask
    assert mask.shape == ids.shape and mask.stride() == (0, 0) and mask.untyped_storage().nbytes() == 8
    assert len(train.texts) == n and train.texts[3] == tokenizer.decode(flat[3 * SEQ_LEN : 4 * SEQ_LEN].tolist())
    meta = train.meta
    assert list(meta.columns) == ["id", "category", "source", "offset", "document", "n_tokens"] and len(meta) == n
    assert meta["id"].dtype == np.int32 and isinstance(meta["category"].dtype, pd.CategoricalDtype)
    assert (meta["offset"] == np.arange(n) * SEQ_LEN).all() and meta["document"].is_monotonic_increasing
    assert meta.memory_usage(deep=True).sum() < 40 * n + 2000  # a few bytes a row, not the rows' text
    _, batch = next(iter_batches({"input_ids": ids, "attention_mask": mask}, 4, torch.tensor([5, 2])))
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].tolist() == ids[[5, 2]].long().tolist()
    fewer = prepare_data(shards_cfg(tmp_path, shard, checkpoint, "data.max_rows=3"), tokenizer=tokenizer)
    assert len(fewer.train_rows) == 3 and fewer.fingerprint != prep.fingerprint


def test_rows_fingerprint_is_the_whole_tensor_fingerprint_read_in_blocks(monkeypatch):
    import influence.batching as batching

    monkeypatch.setattr(batching, "BLOCK_ROWS", 3)
    data = {
        "input_ids": torch.from_numpy(np.arange(70, dtype=np.uint16).reshape(10, 7)),
        "attention_mask": torch.ones((1, 1), dtype=torch.long).expand(10, 7),
        "x": torch.randn(10, 2, 3, dtype=torch.float64),
    }
    rows = torch.tensor([9, 0, 4, 4, 7])
    assert rows_fingerprint(data) == tensors_fingerprint(data)
    assert rows_fingerprint(data, rows) == tensors_fingerprint(
        {"indices": rows, **{k: v[rows] for k, v in data.items()}}
    )
    assert rows_fingerprint(data, rows[:0]) == tensors_fingerprint(
        {"indices": rows[:0], **{k: v[:0] for k, v in data.items()}}
    )


def test_scan_of_a_shard_equals_the_scan_of_its_rows_in_memory(shard, checkpoint, tmp_path):
    world = build_world(shards_cfg(tmp_path, shard, checkpoint))
    streamed = {"input_ids": world.train.input_ids, "attention_mask": world.train.attention_mask}
    copied = {k: v.clone().contiguous() for k, v in streamed.items()}  # the same tensors, in memory
    in_memory = {k: v.long() for k, v in copied.items()}  # as a padded world holds them
    task, layers = LanguageModelTask(), find_tracked_layers(world.model)
    queries = encode_queries(world.tokenizer, world.queries, max_length=512)
    curv = fit_curvature(world.model, task, streamed, "ekfac", layers, cache_dir=tmp_path / "factors")
    again = fit_curvature(world.model, task, copied, "ekfac", layers, cache_dir=tmp_path / "factors")
    assert len(list((tmp_path / "factors").glob("*.safetensors"))) == 1  # the same fingerprint: reused
    args = dict(indices=torch.arange(0, world.train.input_ids.shape[0], 2), batch_size=4, chunk_batches=2)
    a = scan(world.model, task, curv, queries, streamed, tmp_path / "scan_a", **args)
    b = scan(world.model, task, again, queries, in_memory, tmp_path / "scan_b", **args)
    assert torch.equal(a.scores, b.scores) and sorted(p.name for p in (tmp_path / "scan_a").iterdir()) == sorted(
        p.name for p in (tmp_path / "scan_b").iterdir()
    )  # the same resumable chunks


def test_top_influences_run_on_a_shard(shard, checkpoint, tmp_path):
    tables = runner.main(shards_cfg(tmp_path, shard, checkpoint, "score.top_k=3"))
    top = tables["top_influences"]
    assert set(top["query"]) == {"shutdown", "water"} and (top["category"] == "shard").all()
    world = build_world(shards_cfg(tmp_path, shard, checkpoint))
    r = top.iloc[0]
    assert r["text"] == world.train.texts[int(r["row"])] and r["sequence_id"] == r["row"]
    assert (tmp_path / "runs" / "latest" / "top_influences.parquet").is_file()


def test_npy_and_arrow_corpora(tmp_path, documents, tokenizer, checkpoint):
    flat = np.concatenate([np.asarray(d) for d in documents])
    width = 10
    np.save(tmp_path / "tokens.npy", flat[: len(flat) // width * width].astype(np.int32).reshape(-1, width))
    npy = open_stream(shards_cfg(tmp_path, tmp_path / "tokens.npy", checkpoint).data, len(tokenizer), tmp_path)
    assert (np.asarray(npy.tokens) == flat[: len(npy.tokens)]).all()
    assert npy.document_of(np.array([0, 9, 10, 25])).tolist() == [0, 0, 1, 2]
    pd.DataFrame({"input_ids": documents, "n": range(len(documents))}).to_parquet(tmp_path / "corpus.parquet")
    cfg = shards_cfg(tmp_path, tmp_path / "corpus.parquet", checkpoint)
    check_shards(cfg)
    stream = open_stream(cfg.data, len(tokenizer), tmp_path / "corpora")
    assert (np.asarray(stream.tokens) == flat).all() and stream.tokens.dtype == np.uint16
    assert stream.document_of(np.array([0, len(documents[0]), len(flat) - 1])).tolist() == [0, 1, len(documents) - 1]
    (packed,) = (tmp_path / "corpora").glob("shards-*")
    mtime = (packed / "tokens.bin").stat().st_mtime_ns
    assert open_stream(cfg.data, len(tokenizer), tmp_path / "corpora").key == stream.key  # packed once, reused
    assert (packed / "tokens.bin").stat().st_mtime_ns == mtime
    text = tmp_path / "text.parquet"
    pd.DataFrame({"input_ids": TEXTS}).to_parquet(text)
    with pytest.raises(InfluenceError, match="not lists of token ids \\(text: tokenize it"):
        open_stream(shards_cfg(tmp_path, text, checkpoint).data, len(tokenizer), tmp_path / "corpora")
    with pytest.raises(InfluenceError, match="has no column 'tokens'"):
        check_shards(shards_cfg(tmp_path, tmp_path / "corpus.parquet", checkpoint, "data.column=tokens"))


def test_datasets_folder(tmp_path, documents, tokenizer, checkpoint):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"input_ids": documents}).save_to_disk(str(tmp_path / "ds"))
    cfg = shards_cfg(tmp_path, tmp_path / "ds", checkpoint)
    check_shards(cfg)
    stream = open_stream(cfg.data, len(tokenizer), tmp_path / "corpora")
    assert (np.asarray(stream.tokens) == np.concatenate([np.asarray(d) for d in documents])).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.seq_len=1024"], "data.seq_len=1024 exceeds the model's context of 512"),
        (["data.seq_len=4096"], "fewer than one row of data.seq_len=4096"),
        (["model.path=null"], "set model.path=<checkpoint>"),
        (["data.max_rows=0"], "data.max_rows=0"),
    ],
)
def test_bad_options_fail_before_any_work(overrides, message, shard, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "build_world_ranked", lambda cfg: pytest.fail("built a world"))
    with pytest.raises(InfluenceError, match=message) as e:
        runner.main(shards_cfg(tmp_path, shard, checkpoint, *overrides))
    assert "\n" not in str(e.value)


def test_paths_name_a_shard_or_fail_before_any_work(shard, checkpoint, tmp_path, monkeypatch):
    check_shards(shards_cfg(tmp_path, shard.parent, checkpoint))  # a folder holding one pair names it
    Path(tmp_path / "lone.bin").write_bytes(Path(f"{shard}.bin").read_bytes())
    monkeypatch.setattr(runner, "build_world_ranked", lambda cfg: pytest.fail("built a world"))
    for path in (tmp_path / "lone", tmp_path / "lone.bin"):
        with pytest.raises(InfluenceError, match="no index .*lone.idx"):
            runner.main(shards_cfg(tmp_path, path, checkpoint))
    with pytest.raises(InfluenceError, match="does not exist"):
        runner.main(shards_cfg(tmp_path, tmp_path / "nothing_here", checkpoint))
    write_shard(tmp_path / "second", [[1, 2, 3]], vocab_size=100)
    with pytest.raises(InfluenceError, match="holds 2 shards \\(lone, second"):
        runner.main(shards_cfg(tmp_path, tmp_path, checkpoint))


def test_ids_past_the_tokenizer_fail_before_the_fit(checkpoint, tmp_path, tokenizer):
    foreign = write_shard(tmp_path / "foreign", [list(range(40)) + [len(tokenizer) + 7]], vocab_size=50000)
    with pytest.raises(InfluenceError, match=f"token id {len(tokenizer) + 7} at offset 40 is outside"):
        prepare_data(shards_cfg(tmp_path, foreign, checkpoint), tokenizer=tokenizer)


@pytest.mark.slow
def test_command_line(shard, checkpoint, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "data=shards",
            f"data.path={shard}",
            f"data.seq_len={SEQ_LEN}",
            f"model.path={checkpoint}",
            "queries.names=[shutdown,water]",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "score.top_k=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "== shutdown" in out.stdout and "[shard]" in out.stdout
