"""Abstraction vs scale (Figs. 1, 10–12): do larger models' top sequences share fewer of the query's tokens?

Per sweep point and query: the top-k sequences with their token overlap with the query (Jaccard of token
sets, and the percentile of their BM25 score among all candidates), their categories, and the top score.
The corpus's `distractors` category holds sequences that share a query's tokens without its meaning.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis.overlap import bm25_percentiles, token_jaccard
from analysis.trends import POINT, at_size, share_of, shares, sweep_spearman, trend
from influence.filtering import BM25Index

from ..pipeline.sweep import scale_points
from ..pipeline.stages import encode_stage
from . import register
from ._sweep import point_metadata, scale_queries, sweep_metadata, top_rows


def overlap_columns(top: pd.DataFrame, point, queries, mode: str) -> pd.DataFrame:
    """`top` (one sweep point's rows) with `jaccard` and `bm25_percentile` against each row's query."""
    world, result = point.world, point.search.result
    train = world.train
    index = BM25Index.build(train.input_ids, vocab_size=len(world.tokenizer), mode=mode, attention_mask=train.attention_mask)
    enc = encode_stage(world, queries)
    scan_pos = {n: i for i, n in enumerate(result.query_names)}
    jac, pct = np.full(len(top), np.nan), np.full(len(top), np.nan)
    for qi, q in enumerate(queries):
        sel = np.flatnonzero(top["query"].to_numpy() == q.name)
        if not len(sel):
            continue
        q_ids = enc["input_ids"][qi][enc["attention_mask"][qi].bool()]
        rows = top["row"].to_numpy()[sel]
        jac[sel] = [token_jaccard(q_ids, train.input_ids[r][train.attention_mask[r].bool()]) for r in rows]
        candidates = result.indices[torch.isfinite(result.scores[scan_pos[q.name]])]
        pct[sel] = bm25_percentiles(index, q_ids, candidates, rows)
    return top.assign(jaccard=jac, bm25_percentile=pct)


def point_table(top: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point and query: the top score, mean overlap of the top sequences, share of distractors."""
    keys = POINT + ["query"]
    g = top.groupby(keys, sort=False)
    out = g.agg(top_score=("score", "max"), jaccard=("jaccard", "mean"), bm25_percentile=("bm25_percentile", "mean"),
                top_k=("rank", "size")).reset_index()
    return out.merge(share_of(top, "category", "distractors", "distractor_share"), on=keys)


def summary(points: pd.DataFrame) -> dict:
    return {**trend(points, "jaccard", "jaccard"),
            "bm25_percentile_vs_size_spearman": sweep_spearman(points, "bm25_percentile"),
            "top_score_vs_size_spearman": sweep_spearman(points, "top_score"),
            "distractor_share_smallest": at_size(points, "distractor_share", "smallest"),
            "distractor_share_largest": at_size(points, "distractor_share", "largest")}


@register("abstraction")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("abstraction") or {}
    k, mode = int(opts.get("top_k", 10)), str(opts.get("bm25_mode", "binary"))
    queries = scale_queries(world, "abstraction", opts.get("queries"))
    frames, metas = [], []
    for point in scale_points(cfg, breakdown_k=k):
        frames.append(overlap_columns(pd.DataFrame(top_rows(point, queries, k)), point, queries, mode))
        metas.append(point_metadata(point))
    top = pd.concat(frames, ignore_index=True)
    points = point_table(top)
    cols = [c for c in top.columns if c != "text"] + ["text"]
    return {"abstraction_top": top[cols], "abstraction_points": points, "abstraction_categories": shares(top, "category"),
            "_summary": pd.DataFrame([summary(points)]),
            "_metadata": sweep_metadata(cfg, metas, queries, top_k=k, bm25_mode=mode)}
