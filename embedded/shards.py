"""`data=shards`: a pre-tokenized corpus read from disk in place, for a checkpoint trained elsewhere.

`data.path` names one of:
- a GPT-NeoX / Megatron shard: its prefix (`/x/pile_00_text_document`, with `.bin` and `.idx` beside it), either
  file, or a folder holding one pair (`embedded.megatron_shards`);
- a `.npy` array of token ids (1-D, or 2-D with one document per row), memory-mapped with `np.load`;
- a `datasets.save_to_disk` folder, or a parquet file or folder, with a column (`data.column`) of token-id lists:
  packed once into a shard under `<paths.output_dir>/corpora/shards-<key>/` (`embedded.arrow_tokens`).

Each becomes a `TokenStream`, cut into rows by `embedded.token_rows.PackedRows`. Why `check_shards` exists
beside the opening: the pipeline calls it before any work (`experiments.pipeline.options.check_data`), and it
reads only headers, file sizes and the checkpoint's config, so a wrong path, a missing `.idx`, a truncated file,
a float dtype code, an empty shard, a shard shorter than one row or a `data.seq_len` beyond the model's context
fails in one line before a model is loaded or a corpus converted. The tokenizer is the checkpoint's
(`model.path` is required): a shard holds ids, and only the tokenizer that made them can read them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig

from influence.errors import InfluenceError
from influence.storage import atomic_dir

from .arrow_tokens import convert, is_arrow_dataset, parquet_files, source_files
from .fingerprint import fingerprint
from .megatron_shards import MegatronShard, shard_paths, token_dtype
from .models import context_limit, meta_model
from .token_rows import TokenStream

log = logging.getLogger(__name__)

KINDS = "a Megatron shard prefix (.bin + .idx), a .npy token array, a datasets folder or parquet file(s)"


def _megatron_prefix(p: Path) -> Path | None:
    """The shard prefix `p` names (the prefix, either file, or a folder with one pair), or None."""
    if p.suffix in (".bin", ".idx") or (not p.is_dir() and any(q.exists() for q in shard_paths(p))):
        return shard_paths(p)[0].with_suffix("")
    if p.is_dir() and not is_arrow_dataset(p):
        found = sorted({f.with_suffix("") for f in p.iterdir() if f.suffix in (".bin", ".idx")})
        if len(found) > 1:
            names = ", ".join(f.name for f in found[:4])
            raise InfluenceError(f"data.path={p} holds {len(found)} shards ({names}, ...): point data.path at one")
        return found[0] if found else None
    return None


def source_kind(path: str) -> tuple[str, Path]:
    """("megatron" | "npy" | "arrow", resolved path) of `data.path`; anything else fails naming what is accepted."""
    p = Path(str(path)).expanduser()
    prefix = _megatron_prefix(p)
    if prefix is not None:
        return "megatron", prefix
    if not p.exists():
        raise InfluenceError(f"data.path={path} does not exist: give {KINDS}")
    if p.suffix == ".npy" and p.is_file():
        return "npy", p
    if is_arrow_dataset(p) or parquet_files(p):
        return "arrow", p
    raise InfluenceError(f"data.path={path} is no token corpus: give {KINDS}")


def _npy_tokens(p: Path) -> np.ndarray:
    try:
        arr = np.load(p, mmap_mode="c")
    except (OSError, ValueError) as e:
        raise InfluenceError(f"data.path={p} is not a readable .npy array ({e}): save it again with np.save") from None
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim not in (1, 2) or not arr.flags.c_contiguous:
        raise InfluenceError(f"data.path={p} holds a {arr.ndim}-D {arr.dtype} array: save 1-D or 2-D integer token ids")
    if arr.size == 0:
        raise InfluenceError(f"data.path={p} holds no token: the array is empty")
    return arr


def _arrow_column(p: Path, column: str) -> None:
    """The column is there (read from the dataset's features, or the parquet schema: no rows are read)."""
    if is_arrow_dataset(p):
        info = p / "dataset_info.json"
        if (p / "dataset_dict.json").is_file() or not info.is_file():
            return  # the conversion reports a DatasetDict, or reads the columns itself
        features = json.loads(info.read_text()).get("features") or {}
        names = list(features)
    else:
        try:
            names = pq.read_schema(parquet_files(p)[0]).names
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a truncated or foreign file
            raise InfluenceError(f"data file {parquet_files(p)[0]} is not a readable parquet file ({e})") from None
    if column not in names:
        raise InfluenceError(f"data.path={p} has no column {column!r} (columns: {names}): set data.column")


def check_shards(cfg: DictConfig) -> None:
    """What `data=shards` can check without reading tokens or loading weights: the options, the source's files
    and index, that it holds a row, and `data.seq_len` against the checkpoint's context."""
    d = cfg.data
    if not cfg.model.get("path"):
        raise InfluenceError(
            "data=shards scores a corpus with a model trained elsewhere: set model.path=<checkpoint> (its tokenizer "
            "made the shard's ids; training on shards is not supported)"
        )
    if d.get("max_rows") is not None and (
        isinstance(d.max_rows, bool) or not isinstance(d.max_rows, int) or d.max_rows < 1
    ):
        raise InfluenceError(f"data.max_rows={d.max_rows!r}: give a number of rows >= 1, or null for all")
    if not isinstance(d.get("column", "input_ids"), str):
        raise InfluenceError(f"data.column={d.column!r}: give the name of the token-id column")
    seq_len = int(d.seq_len)
    kind, p = source_kind(str(d.path))
    if kind == "megatron":
        n = MegatronShard(p).n_tokens
    elif kind == "npy":
        n = _npy_tokens(p).size
    else:
        n = None
        _arrow_column(p, str(d.get("column", "input_ids")))
    if n is not None and n < seq_len:
        raise InfluenceError(f"data.path={d.path} holds {n} tokens, fewer than one row of data.seq_len={seq_len}")
    limit = context_limit(meta_model(cfg))
    if limit and seq_len > limit:
        raise InfluenceError(f"data.seq_len={seq_len} exceeds the model's context of {limit}: lower data.seq_len")


def _stat_key(files: list[Path]) -> list:
    return [(str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)) for f in files]


def _converted(p: Path, column: str, vocab_size: int, corpora: Path) -> tuple[MegatronShard, str]:
    """The shard an Arrow/parquet source was packed into (packed now when missing or unreadable)."""
    key = fingerprint(_stat_key(source_files(p)), column, token_dtype(vocab_size).name)
    out = corpora / f"shards-{key}"
    for attempt in (0, 1):
        if not (out / "tokens.idx").is_file():
            log.info("packing the %r column of %s into the token shard %s (once)", column, p, out)
            with atomic_dir(out) as tmp:
                convert(p, tmp / "tokens", column, vocab_size)
        try:
            return MegatronShard(out / "tokens"), key
        except InfluenceError as e:  # our own cache, cut short or damaged: packed again
            if attempt:
                raise
            log.warning("%s: packing it again", e)
            shutil.rmtree(out, ignore_errors=True)
    raise AssertionError("unreachable")


def open_stream(data: DictConfig, vocab_size: int, corpora: Path) -> TokenStream:
    """`data.path` as a flat token stream (memory-mapped); an Arrow/parquet source is packed under `corpora`."""
    kind, p = source_kind(str(data.path))
    if kind == "megatron":
        shard = MegatronShard(p)
        return TokenStream(
            shard.tokens, str(data.path), fingerprint(_stat_key([shard.bin, shard.idx])), shard.document_of
        )
    if kind == "npy":
        arr = _npy_tokens(p)
        width = arr.shape[1] if arr.ndim == 2 else None
        return TokenStream(
            arr.reshape(-1),
            str(data.path),
            fingerprint(_stat_key([p])),
            (lambda offsets: np.asarray(offsets) // width) if width else None,
        )
    shard, key = _converted(p, str(data.get("column", "input_ids")), vocab_size, corpora)
    return TokenStream(shard.tokens, str(data.path), key, shard.document_of)
