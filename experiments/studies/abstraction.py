"""Abstraction vs scale (Figs. 1, 10–12): do larger models' top sequences share fewer of the query's tokens?

Per sweep point and query: the top-k sequences with their token overlap with the query (Jaccard of token
sets, and the percentile of their BM25 score among all candidates), their categories, and the top score.
The corpus's `distractors` category holds sequences that share a query's tokens without its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from analysis.figures import figure
from analysis.overlap import bm25_percentiles, token_jaccard
from analysis.scale import abstraction_trends, share_bars
from analysis.scorecard import Finding, distractor_drop, key_check, size_trend
from analysis.trends import POINT, at_size, share_of, shares, sweep_spearman, trend
from influence import InfluenceError
from influence.filtering import BM25Index

from ..pipeline.stages import encode_stage
from ..pipeline.sweep import scale_points
from ._sweep import point_metadata, scale_queries, sweep_metadata, top_rows
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "top sequences per query and model")
    queries: list[str] | None = option(None, "null: the queries tagged `abstraction`; or a list of names")
    bm25_mode: str = option(
        "binary", "BM25 term weighting for the overlap percentile (binary: the paper's filter; or count)"
    )

    def __post_init__(self):
        if self.top_k < 1:
            raise InfluenceError(f"abstraction.top_k={self.top_k} must be at least 1")
        if self.bm25_mode not in ("binary", "count"):
            raise InfluenceError(f"abstraction.bm25_mode={self.bm25_mode!r}: use binary or count")


def overlap_columns(top: pd.DataFrame, point, queries, mode: str) -> pd.DataFrame:
    """`top` (one sweep point's rows) with `jaccard` and `bm25_percentile` against each row's query."""
    world, result = point.world, point.search.result
    train = world.train
    index = BM25Index.build(
        train.input_ids, vocab_size=len(world.tokenizer), mode=mode, attention_mask=train.attention_mask
    )
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
    out = g.agg(
        top_score=("score", "max"),
        jaccard=("jaccard", "mean"),
        bm25_percentile=("bm25_percentile", "mean"),
        top_k=("rank", "size"),
    ).reset_index()
    return out.merge(share_of(top, "category", "distractors", "distractor_share"), on=keys)


def summary(points: pd.DataFrame) -> dict:
    return {
        **trend(points, "jaccard", "jaccard"),
        "bm25_percentile_vs_size_spearman": sweep_spearman(points, "bm25_percentile"),
        "top_score_vs_size_spearman": sweep_spearman(points, "top_score"),
        "distractor_share_smallest": at_size(points, "distractor_share", "smallest"),
        "distractor_share_largest": at_size(points, "distractor_share", "largest"),
    }


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    k, mode = opts.top_k, opts.bm25_mode
    queries = scale_queries(world, "abstraction", opts.queries)
    frames, metas = [], []
    for point in scale_points(cfg, breakdown_k=k):
        frames.append(overlap_columns(pd.DataFrame(top_rows(point, queries, k)), point, queries, mode))
        metas.append(point_metadata(point))
    top = pd.concat(frames, ignore_index=True)
    points = point_table(top)
    cols = [c for c in top.columns if c != "text"] + ["text"]
    return {
        "abstraction_top": top[cols],
        "abstraction_points": points,
        "abstraction_categories": shares(top, "category"),
        "_summary": pd.DataFrame([summary(points)]),
        "_metadata": sweep_metadata(cfg, metas, queries, top_k=k, bm25_mode=mode),
    }


STUDY = Study(
    name="abstraction",
    title="Abstraction grows with scale",
    where="§5.3.1, Figs. 1, 10–12",
    order=60,
    sweep=True,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig10_abstraction_trends",
            abstraction_trends,
            "abstraction_points",
            caption="Token overlap, BM25 percentile, top score and distractor share of the top sequences vs model "
            "size: the paper finds overlap falling (more abstract) as models grow.",
        ),
        figure(
            "fig11_abstraction_categories",
            share_bars,
            "abstraction_categories",
            caption="Categories of the top sequences per model size: look for the shift from surface matches to "
            "related topics with size.",
        ),
    ),
    findings=(
        Finding(
            "Token overlap of top sequences falls with model size",
            "small: token matches; large: thematic",
            "Jaccard overlap: Spearman ρ with size < 0 and largest < smallest",
            size_trend("jaccard_smallest", "jaccard_largest", "jaccard_vs_size_spearman", -1),
        ),
        Finding(
            "Share of token-overlap distractors among top sequences falls with size",
            "small: spurious token matches",
            "distractor share largest < smallest",
            distractor_drop,
        ),
        Finding(
            "Top influence values fall with model size",
            "e.g. paperclips 0.910 → 0.075 (810M → 52B)",
            "top score per query: Spearman ρ with size < 0 (a sign, not a magnitude)",
            key_check("top_score_vs_size_spearman", lambda v: v < 0, "Spearman ρ {:+.2f}"),
        ),
    ),
)
