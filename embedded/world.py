"""A world: a trained (or loaded) causal LM, its tokenizer, its training sequences and the queries.

`build_world(cfg)` is the one entry point studies use. It trains the configured model when its
fingerprinted directory is missing (the same code as `python -m experiments.train`), or loads
`cfg.model.path`, any local Hugging Face causal LM with its tokenizer.
"""

from __future__ import annotations

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
from .models import check_vocab, context_limit, load_checkpoint
from .prepare import Prepared, prepare_data
from .sequences import pad
from .train import load_trained_model, train_and_save


@dataclass
class TrainingSet:
    input_ids: torch.LongTensor  # (N, T) right-padded with tokenizer.pad_token_id
    attention_mask: torch.LongTensor  # (N, T) 1 for real tokens
    texts: list[str]  # decoded text of each sequence
    meta: pd.DataFrame  # one row per sequence: id, category, generator metadata


@dataclass
class World:
    name: str
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    train: TrainingSet
    queries: list[Query]
    model_dir: str


def _query_items(items) -> list[dict]:
    """`queries.items` as plain dicts, each with a unique name and non-empty string prompt and completion."""
    items = OmegaConf.to_container(items, resolve=True) if isinstance(items, (DictConfig, ListConfig)) else items
    if items is None:
        return []
    if not isinstance(items, list):
        raise InfluenceError(f"queries.items must be a list of {{name, prompt, completion, tags}}, not {items!r:.60}")
    seen = set()
    for i, it in enumerate(items):
        where = f"queries.items[{i}]" + (f" ({it.get('name')!r})" if isinstance(it, dict) and "name" in it else "")
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


def load_queries(qcfg: DictConfig) -> list[Query]:
    """Queries from `cfg.queries.items`, kept to `cfg.queries.names` when that list is given (null keeps all).

    Pure and quick, so the pipeline checks it before any work: an explicitly empty, repeated or unknown name and
    a malformed item fail in one line (`names: []` used to mean "all queries")."""
    items = _query_items(qcfg.get("items"))
    names = _query_names(qcfg.get("names"))
    if names is not None:
        by_name = {it["name"]: it for it in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InfluenceError(
                f"queries.names lists unknown queries {missing}: pick from the items in the queries config"
            )
        items = [by_name[n] for n in names]
    if not items:
        raise InfluenceError("queries.items lists no query: add {name, prompt, completion} items to the queries config")
    return [Query(it["name"], it["prompt"], it["completion"], dict(it.get("tags") or {})) for it in items]


def training_set(prep: Prepared) -> TrainingSet:
    ids, mask = pad(prep.train_rows, prep.tokenizer.pad_token_id)
    return TrainingSet(
        input_ids=ids, attention_mask=mask, texts=list(prep.train_texts), meta=prep.meta.reset_index(drop=True)
    )


def build_world(cfg: DictConfig) -> World:
    """Model, tokenizer, training sequences and queries for `cfg` (training the model if it is missing)."""
    if cfg.model.get("path"):
        model, tok = load_checkpoint(str(cfg.model.path))
        prep = prepare_data(cfg, tokenizer=tok)
        model_dir = str(Path(str(cfg.model.path)).expanduser().resolve())
        name = f"{Path(model_dir).name}-{fingerprint(model_dir, prep.fingerprint, length=8)}"
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
