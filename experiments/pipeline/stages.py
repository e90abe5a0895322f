"""The stages a study composes: curvature (fit once per model, cached), query encoding, scoring.

Each stage takes the composed config and the world (model, tokenizer, training set, queries)
and returns library objects; caching is by content fingerprint inside `influence`. Options are read
through their schemas (`options.py`, the filter classes in `candidates.py`, the curvature's config class),
never with defaults at the call site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from influence import (
    InfluenceError,
    LanguageModelTask,
    context_length,
    encode_queries,
    find_tracked_layers,
    fit_curvature,
)
from influence.batching import sample_indices
from influence.curvature import get_curvature_class, make_config
from influence.distributed import broadcast_object, collectively, is_main
from influence.fingerprint import config_fingerprint, tensors_fingerprint
from influence.lowrank import plan_query_rank, query_bytes
from influence.memory import format_memory_plan, memory_plan
from influence.precision import with_precision, without_default_precision
from influence.scan import ScanResult, TopBreakdown, scan, top_k_breakdown
from influence.storage import CorruptFileError, load_tensors, save_tensors

from .candidates import BM25Filter, make_filter
from .options import layer_options, score_options
from .timing import timed

log = logging.getLogger(__name__)


def training_data(world) -> dict[str, torch.Tensor]:
    return {"input_ids": world.train.input_ids, "attention_mask": world.train.attention_mask}


def tracked_layers(cfg: DictConfig, model):
    """The layers the `layers` group selects: the MLPs (plus attention with `include_attention`), or `modules`."""
    opts = layer_options(cfg)
    return find_tracked_layers(
        model, patterns=list(opts.modules) if opts.modules else None, include_attention=opts.include_attention
    )


def score_task(cfg: DictConfig):
    """The LM task that scans and breakdowns use, under autocast when `score.precision` is bf16 or fp16."""
    return with_precision(LanguageModelTask(), score_options(cfg).precision)


def fit_options(cfg: DictConfig) -> dict:
    """The fitting options of the configured curvature: its YAML block (all but `name`), with the run's seed for
    a method that samples labels (the factor cache keys them: `influence.fitting.keyed_options`)."""
    cls = get_curvature_class(str(cfg.curvature.name))  # unknown names fail before any work
    options = {k: v for k, v in OmegaConf.to_container(cfg.curvature, resolve=True).items() if k != "name"}
    if cls.uses_labels:
        options.setdefault("seed", int(cfg.seed))
    return options


def fit_stage(cfg: DictConfig, world, task=None):
    """Fit (or reuse) the configured curvature on the world's training set, after logging its memory plan."""
    options = fit_options(cfg)
    log.info("%s", format_memory_plan(plan(cfg, world.model, len(world.queries))))
    cache = Path(cfg.paths.output_dir) / "factors" / world.name
    n, sample = world.train.input_ids.shape[0], options.get("max_sequences")
    log.info(
        "fitting %s on %s training sequences",
        cfg.curvature.name,
        f"{min(int(sample), n)} of the {n}" if sample is not None and int(sample) < n else f"all {n}",
    )
    return fit_curvature(
        world.model,
        task or LanguageModelTask(),
        training_data(world),
        method=cfg.curvature.name,
        layers=tracked_layers(cfg, world.model),
        cache_dir=cache,
        device=score_options(cfg).device,
        **options,
    )


def encode_stage(world, queries=None) -> dict[str, torch.Tensor]:
    return encode_queries(world.tokenizer, queries or world.queries, max_length=context_length(world.model))


def candidate_rows(cfg: DictConfig, world) -> torch.Tensor:
    """The rows a scan scores: the whole training set, or a reproducible random sample of `score.max_sequences`."""
    return sample_indices(world.train.input_ids.shape[0], score_options(cfg).max_sequences, int(cfg.seed))


def training_set_size(cfg: DictConfig, world) -> int:
    """N, the sequences the model was trained on, of the per-copy unit delta_log_p = I/N: `score.training_set_size`,
    or the rows of the world's training data."""
    return score_options(cfg).training_set_size or len(world.train.texts)


def tfidf_filter(cfg: DictConfig) -> BM25Filter:
    """The TF-IDF filter: filter=tfidf's, or one with its defaults when another filter is selected."""
    filt = make_filter(cfg)
    return filt if isinstance(filt, BM25Filter) else BM25Filter()


def tfidf_candidates(cfg: DictConfig, world, encoded) -> list[torch.Tensor]:
    """Per query, the top `filter.top_k` training rows by BM25 over the query's prompt and completion tokens."""
    return tfidf_filter(cfg).candidates(world, encoded, world.queries)


def query_rank(cfg: DictConfig, shapes: list[tuple[int, int]], num_queries: int) -> int | None:
    """The rank of the stored query gradients: `score.query_rank`, with `auto` planned against `score.query_memory_mb`."""
    opts = score_options(cfg)
    if opts.query_rank == "auto":
        return plan_query_rank(shapes, num_queries, int(opts.query_memory_mb) * 2**20)
    return None if opts.query_rank is None else int(opts.query_rank)


def plan(cfg: DictConfig, model, num_queries: int) -> dict:
    """The memory plan of the configured curvature and query rank for this model's tracked layers."""
    shapes = {l.name: l.shape for l in tracked_layers(cfg, model)}
    rank = query_rank(cfg, list(shapes.values()), num_queries)
    config = make_config(get_curvature_class(str(cfg.curvature.name)), fit_options(cfg))  # unknown keys fail here
    return memory_plan(
        shapes, num_queries, rank, method=str(cfg.curvature.name), num_blocks=int(getattr(config, "num_blocks", 1))
    )


def scan_stage(cfg: DictConfig, world, curvature, queries=None, indices=None):
    """Resumable scan of the candidates with every query; its directory is keyed by what it depends on."""
    queries = list(queries or world.queries)
    opts, filt = score_options(cfg), make_filter(cfg)
    encoded = encode_stage(world, queries)
    per_query = filt.candidates(world, encoded, queries) if indices is None else None
    if per_query is not None:
        indices = torch.unique(torch.cat(per_query)) if per_query else torch.empty(0, dtype=torch.long)
        if len(indices) == 0:
            raise InfluenceError(
                f"the {filt.name} filter found no candidate for any query: the queries share no token with the corpus"
            )
    indices = candidate_rows(cfg, world) if indices is None else indices
    rank = query_rank(cfg, [l.shape for l in curvature.layers], len(queries))
    key = config_fingerprint(
        without_default_precision(
            {
                "curvature": without_default_precision(curvature.describe()),
                "queries": [(q.name, q.prompt, q.completion) for q in queries],
                "rows": indices.tolist() if len(indices) <= 100_000 else tensors_fingerprint({"rows": indices}),
                "rank": rank,
                "batch": opts.batch_size,
                "chunk": opts.chunk_batches,
                "precision": opts.precision,
                **({"normalize": opts.normalize} if opts.normalize != "none" else {}),  # plain scans keep their keys
            }
        )
    )
    out_dir = Path(cfg.paths.output_dir) / "scans" / world.name / key
    shapes = [l.shape for l in curvature.layers]
    memory_mb = query_bytes(shapes, len(queries), rank) / 2**20
    full_mb = query_bytes(shapes, len(queries), None) / 2**20
    log.info(
        "scanning %d candidates with %d queries (query rank %s: %.1f MiB of query gradients, full rank %.1f MiB) into %s",
        len(indices),
        len(queries),
        "full" if rank is None else rank,
        memory_mb,
        full_mb,
        out_dir,
    )
    result = scan(
        world.model,
        score_task(cfg),
        curvature,
        encoded,
        training_data(world),
        out_dir,
        query_names=[q.name for q in queries],
        indices=indices,
        batch_size=opts.batch_size,
        query_rank=rank,
        chunk_batches=opts.chunk_batches,
        device=opts.device,
        normalize=opts.normalize,
    )
    if per_query is not None:
        result = result.restricted_to(per_query)
    result.metadata["query_memory_mb"] = f"{memory_mb:.3f}"
    result.metadata["query_memory_full_rank_mb"] = f"{full_mb:.3f}"
    result.metadata["filter"] = "none" if per_query is None else filt.describe()
    result.metadata["candidates"] = (
        f"all {world.train.input_ids.shape[0]} training sequences"
        if opts.max_sequences is None
        else f"a random sample of {len(indices)} (score.max_sequences, seed {cfg.seed})"
    )
    result.metadata["scan_dir"] = str(out_dir)
    return result


#: the per-row diagnostics a cached breakdown must hold (older files lack them and are recomputed)
DIAGNOSTICS = ("loss_per_token", "candidate_norm", "query_norm")


def _cached_breakdown(path: Path, rows: torch.Tensor, normalize: str) -> list[TopBreakdown] | None:
    """The breakdown saved at `path` for these top rows, or None when it is another's or fails its checksum."""
    try:
        t, _ = load_tensors(path, require_checksum=True, fix="it is recomputed")
    except CorruptFileError as e:
        log.warning("%s", e)
        return None
    if not torch.equal(t["rows"], rows) or any(k not in t for k in DIAGNOSTICS):
        return None  # another top k, or a breakdown written before the outlier diagnostics: computed again
    return [
        TopBreakdown(
            rows=rows[q],
            scores=t["layer_scores"][q].sum(-1),
            layer_scores=t["layer_scores"][q],
            token_scores=t["token_scores"][q],
            loss_per_token=t["loss_per_token"][q],
            candidate_norm=t["candidate_norm"][q],
            query_norm=t["query_norm"][q],
            normalize=normalize,
        )
        for q in range(rows.shape[0])
    ]


def breakdown_stage(cfg: DictConfig, world, curvature, result, k: int, queries=None) -> list[TopBreakdown]:
    """Full-rank layer- and token-wise scores of each query's top k, cached beside the scan they come from."""
    queries = list(queries or world.queries)
    _, rows = result.top_k(k)
    path = (
        Path(result.metadata["scan_dir"]) / f"breakdown-{config_fingerprint(rows.tolist())[:16]}.safetensors"
        if "scan_dir" in result.metadata
        else None
    )
    opts = score_options(cfg)
    exists = path is not None and broadcast_object(path.exists())
    cached = _cached_breakdown(path, rows, opts.normalize) if exists else None
    if cached is not None:  # rank 0's view of the file: all ranks load, or all compute
        return cached
    tops = top_k_breakdown(
        world.model,
        score_task(cfg),
        curvature,
        encode_stage(world, queries),
        training_data(world),
        rows,
        batch_size=opts.batch_size,
        device=opts.device,
        normalize=opts.normalize,
    )
    with collectively():
        if path is not None and is_main():
            save_tensors(
                path,
                {
                    "rows": rows,
                    "layer_scores": torch.stack([t.layer_scores for t in tops]),
                    "token_scores": torch.stack([t.token_scores for t in tops]),
                    **{d: torch.stack([getattr(t, d) for t in tops]) for d in DIAGNOSTICS},
                },
                {"k": str(k)},
            )
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
    encode_stage(world)  # bad queries or a bad filter fail before any fitting
    make_filter(cfg)
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
    return pd.DataFrame(
        [
            {
                **search.result.metadata,
                "model": world.name,
                "layers": ",".join(search.layer_names),
                **{k: str(v) for k, v in extra.items()},
            }
        ]
    )
