"""The stages a study composes: curvature (fit once per model, cached), query encoding, scoring.

Each stage takes the composed config and the world (model, tokenizer, training set, queries)
and returns library objects; caching is by content fingerprint inside `influence`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from influence import (InfluenceError, LanguageModelTask, context_length, encode_queries,
                       find_tracked_layers, fit_curvature)
from influence.batching import sample_indices
from influence.curvature import get_curvature_class
from influence.distributed import broadcast_object, collectively, is_main
from influence.fingerprint import config_fingerprint
from influence.lowrank import plan_query_rank, query_bytes
from influence.memory import format_memory_plan, memory_plan
from influence.precision import with_precision, without_default_precision
from influence.scan import ScanResult, TopBreakdown, scan, top_k_breakdown
from influence.storage import load_tensors, save_tensors

from .timing import timed

log = logging.getLogger(__name__)

# curvature config keys that choose layers rather than fitting options
_LAYER_KEYS = ("name", "include_attention", "modules")


def training_data(world) -> dict[str, torch.Tensor]:
    return {"input_ids": world.train.input_ids, "attention_mask": world.train.attention_mask}


def tracked_layers(cfg: DictConfig, model):
    c = cfg.curvature
    return find_tracked_layers(model, patterns=list(c.modules) if c.get("modules") else None,
                               include_attention=bool(c.get("include_attention", False)))


def score_task(cfg: DictConfig):
    """The LM task that scans and breakdowns use, under autocast when `score.precision` is bf16 or fp16."""
    return with_precision(LanguageModelTask(), str(cfg.score.get("precision", "float32")))


def fit_stage(cfg: DictConfig, world, task=None):
    """Fit (or reuse) the configured curvature on the world's training set, after logging its memory plan."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.curvature, resolve=True).items() if k not in _LAYER_KEYS}
    get_curvature_class(cfg.curvature.name)  # unknown names fail before any work
    if cfg.curvature.name != "identity":  # the identity has no labels to sample
        options.setdefault("seed", int(cfg.seed))
    log.info("%s", format_memory_plan(plan(cfg, world.model, len(world.queries))))
    cache = Path(cfg.paths.output_dir) / "factors" / world.name
    log.info("fitting %s on %d training sequences", cfg.curvature.name, world.train.input_ids.shape[0])
    return fit_curvature(world.model, task or LanguageModelTask(), training_data(world), method=cfg.curvature.name,
                         layers=tracked_layers(cfg, world.model), cache_dir=cache, device=cfg.score.device, **options)


def encode_stage(world, queries=None) -> dict[str, torch.Tensor]:
    return encode_queries(world.tokenizer, queries or world.queries, max_length=context_length(world.model))


def candidate_rows(cfg: DictConfig, world) -> torch.Tensor:
    """The rows a scan scores: the whole training set, or a reproducible random sample of `score.max_sequences`."""
    return sample_indices(world.train.input_ids.shape[0], cfg.score.get("max_sequences"), int(cfg.seed))


def tfidf_candidates(cfg: DictConfig, world, encoded) -> list[torch.Tensor]:
    """Per query, the top `filter.top_k` training rows by BM25 over the query's prompt and completion tokens."""
    from influence.filtering import BM25Index

    f = cfg.filter  # filter=tfidf's keys, with its defaults when another filter is selected
    index = BM25Index.build(world.train.input_ids, vocab_size=len(world.tokenizer), mode=str(f.get("mode", "binary")),
                            k1=float(f.get("k1", 1.5)), attention_mask=world.train.attention_mask)
    tops = index.top_k_many(encoded["input_ids"], f.get("top_k", 10000), attention_mask=encoded["attention_mask"])
    for q, t in zip(world.queries, tops):
        if t.no_overlap:
            log.warning("query %s shares no token with the corpus: the TF-IDF filter gives it no candidates", q.name)
    return [torch.as_tensor(t.indices, dtype=torch.long) for t in tops]


def query_rank(cfg: DictConfig, shapes: list[tuple[int, int]], num_queries: int) -> int | None:
    """The rank of the stored query gradients: `score.query_rank`, with `auto` planned against `score.query_memory_mb`."""
    rank = cfg.score.get("query_rank", None)
    if rank == "auto":
        return plan_query_rank(shapes, num_queries, int(cfg.score.query_memory_mb) * 2**20)
    return None if rank is None else int(rank)


def plan(cfg: DictConfig, model, num_queries: int) -> dict:
    """The memory plan of the configured curvature and query rank for this model's tracked layers."""
    shapes = {l.name: l.shape for l in tracked_layers(cfg, model)}
    rank = query_rank(cfg, list(shapes.values()), num_queries)
    return memory_plan(shapes, num_queries, rank, method=str(cfg.curvature.name),
                       num_blocks=int(cfg.curvature.get("num_blocks", 1)))


def scan_stage(cfg: DictConfig, world, curvature, queries=None, indices=None):
    """Resumable scan of the candidates with every query; its directory is keyed by what it depends on."""
    queries = list(queries or world.queries)
    encoded = encode_stage(world, queries)
    per_query = None
    if indices is None and cfg.filter.name == "tfidf":
        per_query = tfidf_candidates(cfg, world, encoded)
        indices = torch.unique(torch.cat(per_query)) if per_query else torch.empty(0, dtype=torch.long)
        if len(indices) == 0:
            raise InfluenceError("the TF-IDF filter found no candidate for any query: the queries share no token with the corpus")
    elif cfg.filter.name not in ("none", "tfidf"):
        raise InfluenceError(f"unknown filter {cfg.filter.name!r}: use filter=none or filter=tfidf")
    indices = candidate_rows(cfg, world) if indices is None else indices
    rank = query_rank(cfg, [l.shape for l in curvature.layers], len(queries))
    key = config_fingerprint(without_default_precision({
        "curvature": without_default_precision(curvature.describe()), "queries": [(q.name, q.prompt, q.completion) for q in queries],
        "rows": indices.tolist(), "rank": rank, "batch": int(cfg.score.batch_size), "chunk": int(cfg.score.chunk_batches),
        "precision": str(cfg.score.get("precision", "float32"))}))
    out_dir = Path(cfg.paths.output_dir) / "scans" / world.name / key
    shapes = [l.shape for l in curvature.layers]
    memory_mb = query_bytes(shapes, len(queries), rank) / 2**20
    full_mb = query_bytes(shapes, len(queries), None) / 2**20
    log.info("scanning %d candidates with %d queries (query rank %s: %.1f MiB of query gradients, full rank %.1f MiB) into %s",
             len(indices), len(queries), "full" if rank is None else rank, memory_mb, full_mb, out_dir)
    result = scan(world.model, score_task(cfg), curvature, encoded, training_data(world), out_dir,
                  query_names=[q.name for q in queries], indices=indices, batch_size=int(cfg.score.batch_size),
                  query_rank=rank, chunk_batches=int(cfg.score.chunk_batches), device=cfg.score.device)
    if per_query is not None:
        result = result.restricted_to(per_query)
    result.metadata["query_memory_mb"] = f"{memory_mb:.3f}"
    result.metadata["query_memory_full_rank_mb"] = f"{full_mb:.3f}"
    result.metadata["filter"] = "none" if per_query is None else f"tfidf top_k={cfg.filter.top_k} mode={cfg.filter.mode}"
    result.metadata["candidates"] = (f"all {world.train.input_ids.shape[0]} training sequences" if cfg.score.get("max_sequences") is None
                                     else f"a random sample of {len(indices)} (score.max_sequences, seed {cfg.seed})")
    result.metadata["scan_dir"] = str(out_dir)
    return result


def breakdown_stage(cfg: DictConfig, world, curvature, result, k: int, queries=None) -> list[TopBreakdown]:
    """Full-rank layer- and token-wise scores of each query's top k, cached beside the scan they come from."""
    queries = list(queries or world.queries)
    _, rows = result.top_k(k)
    path = Path(result.metadata["scan_dir"]) / f"breakdown-{config_fingerprint(rows.tolist())[:16]}.safetensors" \
        if "scan_dir" in result.metadata else None
    if path is not None and broadcast_object(path.exists()):  # rank 0's view: all ranks load, or all compute
        t, _ = load_tensors(path)
        if torch.equal(t["rows"], rows):
            return [TopBreakdown(rows=rows[q], scores=t["layer_scores"][q].sum(-1), layer_scores=t["layer_scores"][q],
                                 token_scores=t["token_scores"][q]) for q in range(rows.shape[0])]
    tops = top_k_breakdown(world.model, score_task(cfg), curvature, encode_stage(world, queries),
                           training_data(world), rows, batch_size=int(cfg.score.batch_size), device=cfg.score.device)
    with collectively():
        if path is not None and is_main():
            save_tensors(path, {"rows": rows, "layer_scores": torch.stack([t.layer_scores for t in tops]),
                                "token_scores": torch.stack([t.token_scores for t in tops])}, {"k": str(k)})
    return tops


@dataclass
class Search:
    """What the search stages produce for a world: the curvature, the scan of every query, the top-k breakdowns."""

    curvature: object
    result: ScanResult
    tops: list[TopBreakdown]

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.curvature.layers]


def search_stage(cfg: DictConfig, world, breakdown_k: int | None = None) -> Search:
    """Fit (or reuse) the curvature, scan (or reuse the scan of) every world query, break down the top k.

    All studies scan the same queries and candidates, so a second study on a model reuses the first's scan.
    """
    encode_stage(world)  # bad queries fail before any fitting
    with timed("fit", model=world.name):
        curvature = fit_stage(cfg, world)
    with timed("scan", model=world.name):
        result = scan_stage(cfg, world, curvature)
    with timed("breakdown", model=world.name):
        tops = breakdown_stage(cfg, world, curvature, result, breakdown_k) if breakdown_k else []
    return Search(curvature, result, tops)


def select_queries(world, study: str, names=None) -> list:
    """The world's queries tagged for `study` (all of them when none is tagged), or those named."""
    if names:
        by_name = {q.name: q for q in world.queries}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InfluenceError(f"{study}: unknown queries {missing}: choose from {sorted(by_name)}")
        return [by_name[n] for n in names]
    tagged = [q for q in world.queries if study in (q.tags.get("study") or [])]
    return tagged or list(world.queries)


def metadata(search: Search, world, **extra) -> pd.DataFrame:
    """The one-row metadata table of a study: the scan's metadata, the model, the layers, and study options."""
    return pd.DataFrame([{**search.result.metadata, "model": world.name, "layers": ",".join(search.layer_names),
                          **{k: str(v) for k, v in extra.items()}}])
