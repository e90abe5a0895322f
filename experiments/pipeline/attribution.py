"""Attribution methods compared by the checks of whether scores are right (fact tracing, LDS, proponent removal).

A method is a curvature (fitted and scanned by the pipeline's stages, so its factors and scans are cached like any
study's) with a scoring normalization, or BM25 over the query's tokens. Each influence method's curvature block is
its `conf/curvature/<name>.yaml` (the run's own block when the run selected that curvature, so its overrides
apply), with the study's `method_overrides.<method>` on top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from influence import InfluenceError
from influence.filtering import BM25Index

from .options import scale_options
from .stages import encode_stage, fit_stage, scan_stage
from .sweep import compose_config, scale_points


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    curvature: str | None  # None: not an influence method (BM25)
    normalize: str = "none"  # the scan's `score.normalize`


METHODS = {
    m.name: m
    for m in (
        Method("ekfac", "EK-FAC", "ekfac"),
        Method("kfac", "K-FAC", "kfac"),
        Method("lissa", "LiSSA", "lissa"),
        Method("dot", "gradient dot product", "identity"),
        Method("cosine", "gradient cosine", "identity", "unit"),
        Method("ekfac_unit", "unit-normalized EK-FAC", "ekfac", "unit"),
        Method("bm25", "BM25", None),
    )
}


def check_methods(names, where: str) -> list[Method]:
    """The methods named (in order), or one InfluenceError line naming the unknown ones and the choices."""
    names = list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names or len(set(names)) != len(names):
        raise InfluenceError(
            f"{where}.methods={names}: give distinct methods from {', '.join(METHODS)}"
            + (f" ({unknown} unknown)" if unknown else "")
        )
    return [METHODS[n] for n in names]


#: the method options' default and help, one definition for every study that compares methods
OVERRIDES_HELP = (
    "per method, curvature options over its conf/curvature block (LiSSA solves every query vector by its "
    "recursion and estimates each fixed minibatch's step: a shorter depth and a fitting sample keep it in budget)"
)


def default_overrides() -> dict:
    return {"lissa": {"depth": 100, "max_sequences": 512}}


def check_overrides(overrides: dict, where: str) -> None:
    """Overrides name only known methods, or one InfluenceError line names the others."""
    unknown = set(overrides) - set(METHODS)
    if unknown:
        raise InfluenceError(
            f"{where}.method_overrides has unknown methods {sorted(unknown)}: use {', '.join(METHODS)}"
        )


def method_config(cfg: DictConfig, method: Method, overrides: dict | None = None) -> DictConfig:
    """`cfg` with the method's curvature block and normalization (and its study overrides)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(sub, False)
    if str(cfg.curvature.name) != method.curvature:
        sub.curvature = compose_config([f"curvature={method.curvature}"]).curvature
    if overrides:
        sub.curvature = OmegaConf.merge(sub.curvature, overrides)
    sub.score.normalize = method.normalize
    return sub


def bm25_scores(world, encoded: dict, rows: torch.Tensor, mode: str = "count") -> torch.Tensor:
    """(Q, len(rows)) BM25 of each query's prompt and completion tokens against the rows (IDF of the whole corpus)."""
    index = BM25Index.build(
        world.train.input_ids, vocab_size=len(world.tokenizer), mode=mode, attention_mask=world.train.attention_mask
    )
    full = index.scores_many(encoded["input_ids"], attention_mask=encoded["attention_mask"])
    return torch.as_tensor(np.asarray(full)[:, rows.numpy()], dtype=torch.float64)


def method_scores(
    cfg: DictConfig, world, method: Method, queries: list, rows: torch.Tensor, overrides: dict | None = None
) -> tuple[torch.Tensor, float]:
    """(Q, len(rows)) scores of `queries` on the training rows `rows` (their order), and the seconds taken
    (fitting included; a cached fit or scan counts only its loading)."""
    t0 = time.perf_counter()
    if method.curvature is None:
        return bm25_scores(world, encode_stage(world, queries), rows), time.perf_counter() - t0
    sub = method_config(cfg, method, overrides)
    curvature = fit_stage(sub, world)
    result = scan_stage(sub, world, curvature, queries=queries, indices=rows)
    pos = {int(r): j for j, r in enumerate(result.indices)}
    scores = result.scores[:, [pos[int(r)] for r in rows]].double()
    return scores, time.perf_counter() - t0


def study_worlds(cfg: DictConfig, world):
    """(labels, config, world) per model of the run: its own, or every (size, seed) of a non-empty `scale.sizes`
    / `scale.seeds` (the presets empty them; `scale.sizes=[xs,s,m,l]` sweeps), one model in memory at a time."""
    opts = scale_options(cfg)
    if not opts.sizes and not opts.seeds:
        yield {"model": world.name, "seed": int(cfg.seed)}, cfg, world
        return
    for point in scale_points(cfg, search=False):
        yield (
            {"model": point.world.name, "size": point.size, "seed": point.seed, "params": point.params},
            point.cfg,
            point.world,
        )
