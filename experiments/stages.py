"""The stages a study composes: curvature (fit once per model, cached), query encoding, scoring.

Each stage takes the composed config and the world (model, tokenizer, training set, queries)
and returns library objects; caching is by content fingerprint inside `influence`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from influence import (InfluenceError, LanguageModelTask, compute_scores, context_length, encode_queries,
                       find_tracked_layers, fit_curvature)
from influence.batching import sample_indices
from influence.curvature import get_curvature_class

log = logging.getLogger(__name__)

# curvature config keys that choose layers rather than fitting options
_LAYER_KEYS = ("name", "include_attention", "modules")


def training_data(world) -> dict[str, torch.Tensor]:
    return {"input_ids": world.train.input_ids, "attention_mask": world.train.attention_mask}


def tracked_layers(cfg: DictConfig, model):
    c = cfg.curvature
    return find_tracked_layers(model, patterns=list(c.modules) if c.get("modules") else None,
                               include_attention=bool(c.get("include_attention", False)))


def fit_stage(cfg: DictConfig, world, task=None):
    """Fit (or reuse) the configured curvature on the world's training set."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.curvature, resolve=True).items() if k not in _LAYER_KEYS}
    get_curvature_class(cfg.curvature.name)  # unknown names fail before any work
    options.setdefault("seed", int(cfg.seed)) if cfg.curvature.name != "identity" else None
    cache = Path(cfg.paths.output_dir) / "factors" / world.name
    log.info("fitting %s on %d training sequences", cfg.curvature.name, world.train.input_ids.shape[0])
    return fit_curvature(world.model, task or LanguageModelTask(), training_data(world), method=cfg.curvature.name,
                         layers=tracked_layers(cfg, world.model), cache_dir=cache, device=cfg.score.device, **options)


def encode_stage(world, queries=None) -> dict[str, torch.Tensor]:
    return encode_queries(world.tokenizer, queries or world.queries, max_length=context_length(world.model))


def score_stage(cfg: DictConfig, world, curvature, encoded=None, per_layer=False, per_token=False, indices=None):
    """Score encoded queries (default: all of the world's) against the training set or a sample of `score.max_sequences`."""
    data = training_data(world)
    n = data["input_ids"].shape[0]
    if indices is None:
        indices = sample_indices(n, cfg.score.get("max_sequences"), int(cfg.seed))
    if len(indices) == 0:
        raise InfluenceError("no training sequences to score")
    with tqdm(total=len(indices), desc="scoring", unit="seq", dynamic_ncols=True) as bar:
        return compute_scores(world.model, LanguageModelTask(), curvature,
                              encoded if encoded is not None else encode_stage(world), data,
                              batch_size=int(cfg.score.batch_size), indices=indices, per_layer=per_layer,
                              per_token=per_token, device=cfg.score.device, progress=bar.update)
