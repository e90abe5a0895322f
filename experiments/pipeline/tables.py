"""Result tables built from the search stages: the long-format frames that studies return and figures read."""

from __future__ import annotations

import re

import pandas as pd
import torch

from analysis.layers import layer_blocks


def query_type(q) -> str:
    return str(q.tags.get("type", "other"))


def sequence_tokens(world, seq: int) -> list[str]:
    """The real (unpadded) tokens of training row `seq`, each decoded on its own."""
    n = int(world.train.attention_mask[seq].sum())
    return [world.tokenizer.decode([i]) for i in world.train.input_ids[seq, :n].tolist()]


def ranked(tops, queries, train):
    """(query, breakdown, rank, index in the breakdown, training row, its metadata), by descending full-rank score."""
    for q, t in zip(queries, tops):
        for rank, j in enumerate(torch.argsort(t.scores, descending=True).tolist(), start=1):
            seq = int(t.rows[j])
            yield q, t, rank, j, seq, train.meta.iloc[seq]


def top_k_counts(tops) -> dict[int, int]:
    """{training row: how many queries hold it in their top k}: a sequence in many queries' lists is an outlier to
    look at (a high-loss or high-gradient-norm document fills unnormalized top lists), not k findings."""
    counts: dict[int, int] = {}
    for t in tops:
        for r in set(t.rows.tolist()):
            counts[int(r)] = counts.get(int(r), 0) + 1
    return counts


def meta_labels(meta) -> dict:
    """A sequence's metadata columns other than its id (category, language, the corpus's or the user's labels)."""
    return {k: v for k, v in meta.items() if k not in ("id", "text")}


def top_k_table(tops, queries, train, training_set_size: int | None = None) -> pd.DataFrame:
    """One row per (query, rank), ranked by the full-rank score of the scan's top k, with the outlier diagnostics
    (cosine, loss per token, self-influence, how many queries' top k hold the row), the per-copy unit
    delta_log_p = score / N (N: `training_set_size`, default the training rows) and the row's metadata labels."""
    n = training_set_size or len(train.texts)
    counts = top_k_counts(tops)
    rows = []
    for q, t, rank, j, seq, meta in ranked(tops, queries, train):
        labels = meta_labels(meta)
        rows.append(
            {
                "query": q.name,
                "type": query_type(q),
                "rank": rank,
                "sequence_id": int(meta.get("id", seq)),
                "row": seq,
                "score": float(t.scores[j]),
                "category": labels.pop("category", ""),
                "spurious": bool(t.spurious[j]),
                "sparsity_ratio": float(t.sparsity_ratio[j]),
                "delta_log_p": float(t.raw_scores[j]) / n,
                "cosine": float(t.cosine[j]),
                "loss_per_token": float(t.loss_per_token[j]) if t.loss_per_token is not None else float("nan"),
                "self_influence": float(t.self_influence[j]),
                "top_k_queries": counts[seq],
                **{f"layer_{i}": float(v) for i, v in enumerate(t.layer_scores[j])},
                **{k: v for k, v in labels.items() if k not in ("row", "score", "rank", "query", "type")},
                "text": train.texts[seq],
            }
        )
    return pd.DataFrame(rows)


def top_tokens_table(tops, queries, world) -> pd.DataFrame:
    """One row per real token of each query's top sequences: its token-wise influence summed over layers (Eq. 31),
    with the query's prompt and completion (the listings' heading)."""
    rows = []
    for q, t, rank, j, seq, meta in ranked(tops, queries, world.train):
        toks = sequence_tokens(world, seq)
        per_tok = t.token_scores[j].sum(0)[: len(toks)]
        for pos, (tok, v) in enumerate(zip(toks, per_tok.tolist())):
            rows.append(
                {
                    "query": q.name,
                    "rank": rank,
                    "sequence_id": int(meta.get("id", seq)),
                    "score": float(t.scores[j]),
                    "category": meta.get("category", ""),
                    "spurious": bool(t.spurious[j]),
                    "position": pos,
                    "token": tok,
                    "token_score": v,
                    "prompt": q.prompt,
                    "completion": q.completion,
                }
            )
    return pd.DataFrame(rows)


def all_scores_table(result, world, queries=None) -> pd.DataFrame:
    """Every (query, candidate) score, long format: the distribution studies read this."""
    keep = [i for i, n in enumerate(result.query_names) if queries is None or n in {q.name for q in queries}]
    scores = result.scores[keep]
    q, n = scores.shape
    cats = world.train.meta["category"].to_numpy() if "category" in world.train.meta else None
    df = pd.DataFrame(
        {
            "query": [result.query_names[i] for i in keep for _ in range(n)],
            "row": result.indices.repeat(q).numpy(),
            "score": scores.reshape(-1).numpy(),
            **({"category": list(cats[result.indices.numpy()]) * q} if cats is not None else {}),
        }
    )
    return df[df["score"].notna()].reset_index(drop=True)  # a filtered scan scores each query on its own candidates


def transformer_layer(name: str) -> int:
    """The block index in a tracked module's name (`transformer.h.3.mlp.c_fc` -> 3)."""
    found = re.findall(r"\.(\d+)\.", f".{name}.")
    return int(found[0]) if found else 0


def layer_block_table(result, layer_names: list[str], queries, top_n: int, max_blocks: int = 9) -> pd.DataFrame:
    """Per query, its top-n sequences' influence summed within each layer block (Figs. 17–21), from the scan."""
    if result.layer_scores is None:
        raise ValueError("the scan holds no layer-wise scores")
    index = [transformer_layer(n) for n in layer_names]
    depth = max(index) + 1
    block_of = {l: b for b, ls in enumerate(layer_blocks(depth, max_blocks)) for l in ls}
    member = torch.zeros(len(layer_names), max(block_of.values()) + 1, dtype=torch.float32)
    for i, l in enumerate(index):
        member[i, block_of[l]] = 1.0
    pos = {n: i for i, n in enumerate(result.query_names)}
    rows = []
    for q in queries:
        s = torch.nan_to_num(result.scores[pos[q.name]], nan=-torch.inf)
        k = min(top_n, int(torch.isfinite(s).sum()))
        top = torch.topk(s, k).indices
        blocks = result.layer_scores[pos[q.name]][:, top].T @ member  # (k, blocks)
        for rank, (j, b) in enumerate(zip(top.tolist(), blocks), start=1):
            for bi, v in enumerate(b.tolist()):
                rows.append(
                    {
                        "query": q.name,
                        "type": query_type(q),
                        "rank": rank,
                        "row": int(result.indices[j]),
                        "block": bi,
                        "influence": v,
                    }
                )
    return pd.DataFrame(rows)


def token_heatmap_table(top, query, rank: int, layer_names: list[str], world) -> pd.DataFrame:
    """Layers × tokens influence of the query's rank-`rank` sequence (Fig. 4), long format."""
    order = torch.argsort(top.scores, descending=True)
    j = int(order[rank - 1])
    seq = int(top.rows[j])
    toks = sequence_tokens(world, seq)
    meta = world.train.meta.iloc[seq]
    short = [n.replace("transformer.", "").replace(".mlp", "") for n in layer_names]
    rows = []
    for li, name in enumerate(layer_names):
        for pos in range(len(toks)):
            rows.append(
                {
                    "query": query.name,
                    "rank": rank,
                    "sequence_id": int(meta.get("id", seq)),
                    "layer": short[li],
                    "position": pos,
                    "token": toks[pos],
                    "score": float(top.token_scores[j, li, pos]),
                }
            )
    return pd.DataFrame(rows)
