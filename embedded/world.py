"""A world: a trained (or loaded) causal LM, its tokenizer, its training sequences and the queries.

`build_world(cfg)` is the one entry point studies use. It trains the configured model when its
fingerprinted directory is missing (the same code as `python -m experiments.train`), or loads
`cfg.model.path`, any local Hugging Face causal LM with its tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from influence import Query, distributed
from influence.errors import InfluenceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .fingerprint import fingerprint
from .hub import locate
from .models import check_vocab, context_limit, load_checkpoint
from .prepare import Prepared, prepare_data
from .records import read_records
from .sequences import pad
from .token_rows import PackedRows
from .train import load_trained_model, train_and_save


@dataclass
class TrainingSet:
    """The training sequences a scan scores and a fit reads, as the library takes them (`influence.batching`).

    In memory (generated and local corpora): padded int64 tensors and every text. Streamed (`data=shards`):
    `input_ids` is a zero-copy view of a memory-mapped token shard in its own dtype (uint16 for the Pile;
    `iter_batches` widens each batch to int64, so index it with rows and call `.long()` before feeding a model
    directly), `attention_mask` an expanded ones tensor (no storage), `texts` a sequence decoding on access."""

    input_ids: torch.Tensor  # (N, T) right-padded with tokenizer.pad_token_id (int64), or a shard's view
    attention_mask: torch.Tensor  # (N, T) 1 for real tokens (int64)
    texts: Sequence[str]  # decoded text of each sequence (a list, or `token_rows.LazyTexts`)
    meta: pd.DataFrame  # one row per sequence: id, category, generator metadata


@dataclass
class World:
    name: str
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    train: TrainingSet
    queries: list[Query]
    model_dir: str


def _query_items(items, source: str = "queries.items") -> list[dict]:
    """`queries.items` (or a `queries.path` file's records) as plain dicts, each with a unique name and non-empty
    string prompt and completion."""
    items = OmegaConf.to_container(items, resolve=True) if isinstance(items, (DictConfig, ListConfig)) else items
    if items is None:
        return []
    if not isinstance(items, list):
        raise InfluenceError(f"{source} must be a list of {{name, prompt, completion, tags}}, not {items!r:.60}")
    seen = set()
    for i, it in enumerate(items):
        where = f"{source}[{i}]" + (f" ({it.get('name')!r})" if isinstance(it, dict) and "name" in it else "")
        if not isinstance(it, dict):
            raise InfluenceError(f"{where} must be a mapping with name, prompt and completion, not {it!r:.60}")
        for key in ("name", "prompt", "completion"):
            if not isinstance(it.get(key), str) or (key != "prompt" and not it[key]):
                raise InfluenceError(f"{where} needs {key}, a non-empty string (got {it.get(key)!r:.60})")
        if it.get("tags") is not None and not isinstance(it["tags"], dict):
            raise InfluenceError(f"{where}: tags must be a mapping, not {it['tags']!r:.60}")
        if it["name"] in seen:
            raise InfluenceError(f"{where}: another query is named {it['name']!r}: give each query its own name")
        seen.add(it["name"])
    return items


def _query_names(names) -> list[str] | None:
    """`queries.names`: None (all queries), or a non-empty list of distinct names."""
    if names is None:
        return None
    if isinstance(names, ListConfig):
        names = OmegaConf.to_container(names, resolve=True)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InfluenceError(f"queries.names={names!r}: give a list of query names, e.g. [shutdown,water], or null")
    if not names:
        raise InfluenceError("queries.names=[] selects no query: omit it (null) for all queries, or list names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InfluenceError(f"queries.names lists {repeated} more than once: list each query once")
    return list(names)


def _file_queries(qcfg: DictConfig) -> list[dict]:
    """The queries of `queries.path` (none without one); `queries.replace: true` without a path is refused."""
    path = qcfg.get("path")
    if not path:
        if qcfg.get("replace"):
            raise InfluenceError("queries.replace=true replaces the queries by queries.path's, but no path is given")
        return []
    return _query_items(read_records(str(path), "queries.path"), f"queries.path={path} record")


def load_queries(qcfg: DictConfig) -> list[Query]:
    """Queries from `cfg.queries.items`, kept to `cfg.queries.names` when that list is given (null keeps all), then
    those of the file `cfg.queries.path`, added (or, with `replace: true`, instead of the items: `names` then
    selects among the file's).

    Pure and quick, so the pipeline checks it before any work: an explicitly empty, repeated or unknown name and
    a malformed item fail in one line (`names: []` used to mean "all queries")."""
    items, added = _query_items(qcfg.get("items")), _file_queries(qcfg)
    if qcfg.get("replace"):
        items, added = added, []
    names = _query_names(qcfg.get("names"))
    if names is not None:
        by_name = {it["name"]: it for it in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InfluenceError(
                f"queries.names lists unknown queries {missing}: pick from the items in the queries config"
            )
        items = [by_name[n] for n in names]
    clash = sorted({it["name"] for it in items} & {it["name"] for it in added})
    if clash:
        raise InfluenceError(
            f"queries.path={qcfg.get('path')} names queries {clash} that the config already has: rename them, or set "
            "queries.replace=true"
        )
    items = items + added
    if not items:
        raise InfluenceError("queries.items lists no query: add {name, prompt, completion} items to the queries config")
    return [Query(it["name"], it["prompt"], it["completion"], dict(it.get("tags") or {})) for it in items]


def training_set(prep: Prepared) -> TrainingSet:
    if isinstance(prep.train_rows, PackedRows):  # data=shards: rows stay on disk, read batch by batch
        rows = prep.train_rows
        return TrainingSet(rows.input_ids, rows.attention_mask, prep.train_texts, prep.meta)
    ids, mask = pad(prep.train_rows, prep.tokenizer.pad_token_id)
    return TrainingSet(
        input_ids=ids, attention_mask=mask, texts=list(prep.train_texts), meta=prep.meta.reset_index(drop=True)
    )


def build_world(cfg: DictConfig) -> World:
    """Model, tokenizer, training sequences and queries for `cfg` (training the model if it is missing)."""
    if cfg.model.get("path"):  # a local directory, or a hub id at model.revision (its cached snapshot)
        ckpt = locate(str(cfg.model.path), cfg.model.get("revision"))
        model, tok = load_checkpoint(ckpt.path)
        prep = prepare_data(cfg, tokenizer=tok)
        model_dir = str(Path(ckpt.path).expanduser().resolve())
        name = f"{ckpt.name}-{fingerprint(ckpt.key, prep.fingerprint, length=8)}"  # a hub key holds the commit
    else:
        prep = prepare_data(cfg)
        out = train_and_save(cfg, prep)
        model = load_trained_model(out)  # verified against its checksums
        tok, model_dir, name = prep.tokenizer, str(out), out.name
    check_vocab(model, tok, model_dir)
    limit = context_limit(model)
    if limit and int(cfg.data.seq_len) > limit:
        raise InfluenceError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's context of {limit}: lower data.seq_len"
        )
    return World(
        name=name,
        model=model,
        tokenizer=tok,
        train=training_set(prep),
        queries=load_queries(cfg.queries),
        model_dir=model_dir,
    )


def build_world_ranked(cfg: DictConfig) -> World:
    """`build_world` under torchrun: rank 0 trains (or prepares) the world first, the others then load it.

    In a single process it is `build_world`.
    """
    with distributed.collectively():
        world = build_world(cfg) if distributed.is_main() else None
    return world if world is not None else build_world(cfg)
