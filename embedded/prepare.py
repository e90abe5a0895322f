"""Turn `cfg.data` into token rows: the embedded corpus (generated, tokenizer trained, cached with
its datasheet) or a local corpus chunked into fixed-length sequences."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from influence.errors import InfluenceError
from influence.storage import CorruptFileError, atomic_dir, check_dir

from . import corpus as corpus_mod
from .corpus import datasheet
from .corpus.facts import Fact
from .fingerprint import fingerprint
from .local_data import chunk_meta, document_meta, load_local_documents, local_options
from .sequences import chunk_stream, document_rows, encode
from .shards import open_stream
from .token_rows import PackedRows
from .tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

# data keys that change the generated corpus (seq_len does not: it only cuts rows)
CORPUS_KEYS = (
    "seed",
    "n_docs",
    "mix",
    "quote_copies",
    "val_fraction",
    "n_heldout",
    "translated_fraction",
    "fact_repeats",
)


@dataclasses.dataclass
class Prepared:
    """Tokenized training and validation rows with one metadata row per training row."""

    tokenizer: object
    train_rows: list[list[int]]
    train_texts: list[str]
    meta: pd.DataFrame
    val_rows: list[list[int]]
    fingerprint: str  # identifies corpus + tokenizer + seq_len
    mode: str  # "documents" (one document per row) or "chunks"
    corpus_dir: str | None = None  # where the datasheet and tokenizer live (embedded corpus)
    facts: list | None = None  # fictional facts stated in the corpus (embedded only)
    heldout: list | None = None  # held-out facts (embedded only)


def output_root(cfg: DictConfig) -> Path:
    out = cfg.get("paths", {}).get("output_dir", "outputs") if "paths" in cfg else "outputs"
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(out)))
    except Exception:
        return Path(out).absolute()


def prepare_data(cfg: DictConfig, tokenizer=None) -> Prepared:
    """Rows for `cfg.data`; with `tokenizer` given (a loaded checkpoint's) no tokenizer is trained."""
    seq_len = int(cfg.data.seq_len)
    if seq_len < 8:
        raise InfluenceError(f"data.seq_len={seq_len} is too short: use at least 8 tokens")
    if cfg.data.get("name") == "shards":
        return _prepare_shards(cfg, tokenizer, seq_len)
    if cfg.data.get("path"):
        return _prepare_local(cfg, tokenizer, seq_len)
    return _prepare_embedded(cfg, tokenizer, seq_len)


def _prepare_shards(cfg: DictConfig, tokenizer, seq_len: int) -> Prepared:
    """data=shards: a pre-tokenized corpus read from disk in place (`embedded.shards`): the rows are a view of its
    memory-mapped tokens, texts are decoded on demand, nothing is tokenized and no validation rows are cut (the
    checkpoint was trained elsewhere)."""
    if tokenizer is None:
        raise InfluenceError(
            "data=shards scores a corpus with a model trained elsewhere: set model.path=<checkpoint> (its tokenizer "
            "made the shard's ids; training on shards is not supported)"
        )
    stream = open_stream(cfg.data, len(tokenizer), output_root(cfg) / "corpora")
    max_rows = cfg.data.get("max_rows")
    rows = PackedRows(stream, seq_len, max_rows)
    rows.check_vocabulary(len(tokenizer))
    tok_id = str(getattr(tokenizer, "name_or_path", "external"))
    fp = fingerprint("shards", stream.key, tok_id, seq_len, max_rows)
    return Prepared(tokenizer, rows, rows.texts(tokenizer), rows.meta(), [], fp, "chunks")


def _corpus_config(cfg: DictConfig) -> dict:
    d = OmegaConf.to_container(cfg.data, resolve=True)
    return {k: d.get(k) for k in CORPUS_KEYS} | {"generator": corpus_mod.GENERATOR_VERSION}


def generate_corpus(cfg: DictConfig) -> corpus_mod.Corpus:
    d = cfg.data
    return corpus_mod.generate(
        seed=int(d.seed),
        n_docs=int(d.n_docs),
        mix=dict(d.mix),
        quote_copies=tuple(d.quote_copies),
        val_fraction=float(d.val_fraction),
        n_heldout=int(d.n_heldout),
        translated_fraction=float(d.translated_fraction),
        fact_repeats=int(d.get("fact_repeats", 1)),
    )


def _prepare_embedded(cfg: DictConfig, tokenizer, seq_len: int) -> Prepared:
    corpus_cfg = _corpus_config(cfg)
    vocab = int(cfg.data.vocab_size)
    cfp = fingerprint(corpus_cfg, vocab)
    cdir = output_root(cfg) / "corpora" / f"embedded-{cfp}"
    if not _usable(cdir, "the corpus is generated again"):
        _write_corpus(cfg, cdir, corpus_cfg, vocab)
    try:
        train_df, val_df, facts, heldout, tok = _read_corpus(cdir, tokenizer)
    except CorruptFileError as e:  # unreadable though its checksums match: written corrupt by an older version
        log.warning("%s", e)
        shutil.rmtree(cdir, ignore_errors=True)
        _write_corpus(cfg, cdir, corpus_cfg, vocab)
        train_df, val_df, facts, heldout, tok = _read_corpus(cdir, tokenizer)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    texts = train_df["text"].tolist()
    rows, cut = document_rows(encode(tok, texts), eos, seq_len)
    val_rows, _ = document_rows(encode(tok, val_df["text"].tolist()), eos, seq_len)
    meta = train_df.drop(columns=["text"]).copy()
    meta["n_tokens"] = [len(r) for r in rows]
    meta["truncated"] = cut
    meta = meta[["id", "category"] + [c for c in meta.columns if c not in ("id", "category")]]
    tok_id = "embedded" if tokenizer is None else str(getattr(tokenizer, "name_or_path", "external"))
    return Prepared(
        tok, rows, texts, meta, val_rows, fingerprint(cfp, tok_id, seq_len), "documents", str(cdir), facts, heldout
    )


def _read_corpus(cdir: Path, tokenizer):
    """The cached corpus's (train, val, facts, held-out facts, tokenizer); unreadable files raise CorruptFileError."""
    current = cdir / "train.parquet"
    try:
        train_df = pd.read_parquet(current)
        current = cdir / "val.parquet"
        val_df = pd.read_parquet(current)
        facts, heldout = [], []
        for name, out in (("facts", facts), ("heldout_facts", heldout)):
            current = cdir / f"{name}.jsonl"
            out.extend(_read_facts(current))
        current = cdir / "tokenizer"
        tok = tokenizer if tokenizer is not None else load_tokenizer(str(current))
    except (OSError, ValueError, TypeError, KeyError, InfluenceError) as e:
        raise CorruptFileError(
            current,
            f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
            "the corpus is generated again",
        ) from None
    return train_df, val_df, facts, heldout, tok


def _usable(directory: Path, redo: str) -> bool:
    """Whether a cached directory exists and its files match their checksums; a corrupt one is deleted (its
    content is regenerated, deterministically, by the caller)."""
    if not directory.exists():
        return False
    try:
        check_dir(directory, redo)
        return True
    except CorruptFileError as e:
        log.warning("%s", e)
        shutil.rmtree(directory, ignore_errors=True)
        return False


def _write_corpus(cfg: DictConfig, cdir: Path, corpus_cfg: dict, vocab: int) -> None:
    """Generate the embedded corpus, train its tokenizer, and write both with the datasheet, atomically."""
    corpus = generate_corpus(cfg)
    with atomic_dir(cdir) as tmp:
        train_df, val_df = pd.DataFrame(corpus.train), pd.DataFrame(corpus.val)
        tok = train_tokenizer(train_df["text"].tolist(), vocab)
        tok.save_pretrained(str(tmp / "tokenizer"))
        train_df["n_tokens"] = [len(r) for r in encode(tok, train_df["text"].tolist())]
        val_df["n_tokens"] = [len(r) for r in encode(tok, val_df["text"].tolist())]
        train_df.to_parquet(tmp / "train.parquet")
        val_df.to_parquet(tmp / "val.parquet")
        for name, facts in (("facts", corpus.facts), ("heldout_facts", corpus.heldout)):
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(dataclasses.asdict(f)) + "\n" for f in facts))
        (tmp / "datasheet.md").write_text(datasheet.render(train_df, val_df, corpus, corpus_cfg, vocab))


def _read_facts(path: Path) -> list:
    return [Fact(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _prepare_local(cfg: DictConfig, tokenizer, seq_len: int) -> Prepared:
    """A local corpus as rows (`data.rows`: chunks of the stream, or one document per row) with each row's labels
    (`embedded.local_data`; conf/data/local.yaml says what a row spanning documents carries)."""
    path = str(cfg.data.path)
    opts = local_options(cfg.data)  # bad row mode or column names fail before a file is read
    docs = load_local_documents(path, opts)
    texts = docs.texts
    vocab = int(cfg.data.get("vocab_size", 4096))
    text_key = [opts.text_column] if opts.text_column else []  # the default keeps the tokenizers cached before
    lfp = fingerprint(str(Path(path).expanduser().resolve()), _stat(path), vocab, *text_key)
    tok_id = "trained"
    if tokenizer is None:
        tdir = output_root(cfg) / "corpora" / f"local-{lfp}" / "tokenizer"
        if not _usable(tdir, "the tokenizer is trained again"):
            with atomic_dir(tdir) as tmp:
                train_tokenizer(texts, vocab).save_pretrained(str(tmp))
        tokenizer = load_tokenizer(str(tdir))
    else:
        tok_id = str(getattr(tokenizer, "name_or_path", "external"))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    ids = encode(tokenizer, texts)
    lengths = [len(r) for r in ids]
    if opts.rows == "documents":
        rows, cut = document_rows(ids, eos, seq_len)
    else:
        rows, _ = chunk_stream(ids, eos, seq_len)
    n_val = int(round(float(cfg.data.get("val_fraction", 0.02)) * len(rows)))
    n_val = min(max(n_val, 1 if len(rows) > 1 else 0), len(rows) - 1)
    train_rows, val_rows = rows[: len(rows) - n_val], rows[len(rows) - n_val :]
    if opts.rows == "documents":
        meta = document_meta(docs.labels, lengths, train_rows, cut)
    else:
        meta = chunk_meta(docs.labels, lengths, seq_len, len(train_rows))
    train_texts = [tokenizer.decode(r) for r in train_rows]
    key = [opts.key()] if opts.key() else []  # row mode and column mapping; none at the defaults (cached keys kept)
    fp = fingerprint(lfp, tok_id, seq_len, *key)
    return Prepared(tokenizer, train_rows, train_texts, meta, val_rows, fp, opts.rows)


def _stat(path: str) -> list:
    p = Path(path).expanduser()
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return [(str(f), f.stat().st_size, int(f.stat().st_mtime)) for f in files if f.is_file()]
