"""The first job: per query, the most influential training sequences (paper Figs. 1, 10-16 listings).

A resumable scan scores every query on every candidate; a second pass re-scores each query's
top k at full rank with layer- and token-wise breakdowns and the spurious-sequence flag.
"""
from __future__ import annotations

import pandas as pd
import torch

from ..stages import breakdown_stage, encode_stage, fit_stage, scan_stage
from . import register


def top_k_table(tops, queries, train) -> pd.DataFrame:
    """One row per (query, rank), ranked by the full-rank score of the scan's top k."""
    rows = []
    for qi, (q, t) in enumerate(zip(queries, tops)):
        order = torch.argsort(t.scores, descending=True)
        for rank, j in enumerate(order.tolist(), start=1):
            seq = int(t.rows[j])
            meta = train.meta.iloc[seq]
            rows.append({"query": q.name, "rank": rank, "sequence_id": int(meta.get("id", seq)), "row": seq,
                         "score": float(t.scores[j]), "category": meta.get("category", ""),
                         "spurious": bool(t.spurious[j]), "sparsity_ratio": float(t.sparsity_ratio[j]),
                         **{f"layer_{i}": float(v) for i, v in enumerate(t.layer_scores[j])},
                         "text": train.texts[seq]})
    return pd.DataFrame(rows)


def all_scores_table(result, world) -> pd.DataFrame:
    """Every (query, candidate) score, long format: the distribution studies read this."""
    q, n = result.scores.shape
    cats = world.train.meta["category"].to_numpy() if "category" in world.train.meta else None
    df = pd.DataFrame({
        "query": [name for name in result.query_names for _ in range(n)],
        "row": result.indices.repeat(q).numpy(),
        "score": result.scores.reshape(-1).numpy(),
        **({"category": list(cats[result.indices.numpy()]) * q} if cats is not None else {}),
    })
    return df[df["score"].notna()].reset_index(drop=True)  # a filtered scan scores each query on its own candidates


@register("top_influences")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    encode_stage(world)  # bad queries fail before any fitting
    curvature = fit_stage(cfg, world)
    result = scan_stage(cfg, world, curvature)
    tops = breakdown_stage(cfg, world, curvature, result, int(cfg.score.top_k))
    tensors = {}
    for q, t in zip(world.queries, tops):
        tensors[f"{q.name}/rows"], tensors[f"{q.name}/token_scores"] = t.rows, t.token_scores.float()
    return {
        "top_token_scores": tensors,  # (k, layers, tokens) per query: the Fig. 4 heatmaps
        "top_influences": top_k_table(tops, world.queries, world.train),
        "scores": all_scores_table(result, world),
        "_metadata": pd.DataFrame([{**result.metadata, "model": world.name,
                                    "layers": ",".join(l.name for l in curvature.layers)}]),
    }
