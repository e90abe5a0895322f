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
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

from influence import Query, distributed
from influence.errors import InfluenceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .fingerprint import fingerprint
from .models import context_limit, load_checkpoint
from .prepare import Prepared, prepare_data
from .sequences import pad
from .train import train_and_save


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


def load_queries(qcfg: DictConfig) -> list[Query]:
    """Queries from `cfg.queries.items`, kept to `cfg.queries.names` when that list is given."""
    items = OmegaConf.to_container(qcfg["items"], resolve=True) if qcfg.get("items") is not None else []
    names = qcfg.get("names")
    by_name = {it["name"]: it for it in items}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InfluenceError(
                f"queries.names lists unknown queries {missing}: pick from the items in the queries config"
            )
        items = [by_name[n] for n in names]
    return [Query(it["name"], it["prompt"], it["completion"], dict(it.get("tags") or {})) for it in items]


def check_vocab(model, tokenizer, where: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InfluenceError(
            f"tokenizer in {where} has {len(tokenizer)} tokens but the model embeds only {rows}: "
            "use the tokenizer the model was trained with"
        )


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
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).float().eval()
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
