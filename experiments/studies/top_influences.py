"""The first job: per query, the most influential training sequences (paper Figs. 1, 10-16 listings)."""
from __future__ import annotations

import pandas as pd
import torch

from ..stages import encode_stage, fit_stage, score_stage
from . import register


def top_k_table(scores: torch.Tensor, indices: torch.Tensor, queries, train, k: int) -> pd.DataFrame:
    """One row per (query, rank): the k highest-scoring training sequences of each query."""
    rows = []
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1)
    for qi, q in enumerate(queries):
        for rank, (val, col) in enumerate(zip(top.values[qi].tolist(), top.indices[qi].tolist()), start=1):
            seq = int(indices[col])
            meta = train.meta.iloc[seq]
            rows.append({"query": q.name, "rank": rank, "sequence_id": int(meta.get("id", seq)), "row": seq,
                         "score": val, "category": meta.get("category", ""), "text": train.texts[seq]})
    return pd.DataFrame(rows)


def all_scores_table(scores: torch.Tensor, indices: torch.Tensor, queries) -> pd.DataFrame:
    """Every (query, sequence) score, long format: the distribution studies read this."""
    q = len(queries)
    n = scores.shape[1]
    return pd.DataFrame({
        "query": [qq.name for qq in queries for _ in range(n)],
        "row": indices.repeat(q).numpy(),
        "score": scores.reshape(-1).numpy(),
    })


@register("top_influences")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    encoded = encode_stage(world)  # bad queries fail before any fitting
    curvature = fit_stage(cfg, world)
    result = score_stage(cfg, world, curvature, encoded)
    return {
        "top_influences": top_k_table(result.scores, result.indices, world.queries, world.train, int(cfg.score.top_k)),
        "scores": all_scores_table(result.scores, result.indices, world.queries),
        "_metadata": pd.DataFrame([{**result.metadata, "model": world.name}]),
    }
