"""Texts scored as hypothetical training sequences: what would adding this text do to the query?

The word-order study's mechanism, made general (`candidates.path`): each text is tokenized exactly like a
training row (no special tokens, EOS appended, cut to `data.seq_len`) and its training gradient (summed token
cross-entropy, true labels) is scored against the run's preconditioned query gradients, I = −∇fᵀ(G+λI)⁻¹∇L(z).
The model is never trained on them. Beside each score: the per-copy unit delta_log_p = I/N, the cosine in the
preconditioned space, and where the text would rank among the scanned training sequences for that query.
"""

from __future__ import annotations

import pandas as pd
import torch
from omegaconf import DictConfig

from embedded.records import candidate_records
from embedded.sequences import document_rows, encode, pad
from influence import compute_scores
from influence.scan import SPURIOUS_RATIO

from .options import candidate_options, score_options
from .stages import encode_stage, score_task, training_set_size
from .tables import query_type


def training_rows(tokenizer, texts: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """The texts as training rows are built (no special tokens, EOS appended, cut to seq_len), right-padded."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    rows, _ = document_rows(encode(tokenizer, texts), eos, seq_len)
    ids, mask = pad(rows, tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask}


def hypothetical_scores(cfg: DictConfig, world, curvature, queries, texts: list[str], **options):
    """`compute_scores` of the texts as if they were training rows, with full-rank queries (`options`: per_token,
    normalize)."""
    return _scores(
        cfg, world, curvature, queries, training_rows(world.tokenizer, texts, int(cfg.data.seq_len)), **options
    )


def _scores(cfg: DictConfig, world, curvature, queries, data: dict, **options):
    return compute_scores(
        world.model,
        score_task(cfg),
        curvature,
        encode_stage(world, queries),
        data,
        batch_size=score_options(cfg).batch_size,
        device=score_options(cfg).device,
        **options,
    )


def _rank_among(scanned: torch.Tensor, value: float) -> int:
    """1 + how many scanned training sequences score above `value` (NaN: not a candidate of this query)."""
    return 1 + int((torch.nan_to_num(scanned, nan=-torch.inf) > value).sum())


def _token_rows(q, rank: int, c: int, record: dict, value: float, ids: list[int], per_tok, tokenizer) -> list[dict]:
    """One text's token-wise influence on one query, in the listings' `top_tokens` format."""
    spurious = bool(per_tok.norm() / per_tok.abs().sum().clamp_min(1e-30) > SPURIOUS_RATIO)
    return [
        {
            "query": q.name,
            "rank": rank,
            "sequence_id": c,
            "score": value,
            "category": record["name"],
            "spurious": spurious,
            "position": pos,
            "token": tokenizer.decode([i]),
            "token_score": float(v),
        }
        for pos, (i, v) in enumerate(zip(ids, per_tok.tolist()))
    ]


def candidate_tables(cfg: DictConfig, world, curvature, result) -> dict[str, pd.DataFrame]:
    """`candidate_scores` (one row per query and text, best first) and `candidate_tokens` (each text's token-wise
    influence, the listings' format) for the texts of `candidates.path`; none without one. `result` is the run's
    scan, which places each text among the training sequences."""
    opts = candidate_options(cfg)
    if opts.path is None:
        return {}
    records = candidate_records(opts.path, opts.text_column)
    queries = list(world.queries)
    data = training_rows(world.tokenizer, [r["text"] for r in records], int(cfg.data.seq_len))
    raw = _scores(cfg, world, curvature, queries, data, per_token=True)
    unit = (
        _scores(cfg, world, curvature, queries, data, normalize="unit").scores
        if curvature.batched_ihvp
        else torch.full_like(raw.scores, torch.nan)
    )
    scanned_as = unit if score_options(cfg).normalize == "unit" else raw.scores  # the scan's own kind of score
    n = training_set_size(cfg, world)
    lengths = data["attention_mask"].sum(1).tolist()
    scores, tokens = [], []
    for qi, q in enumerate(queries):
        scanned = result.row(q.name)
        for rank, c in enumerate(torch.argsort(raw.scores[qi], descending=True).tolist(), start=1):
            r, value = records[c], float(raw.scores[qi, c])
            scores.append(
                {
                    "query": q.name,
                    "type": query_type(q),
                    "rank": rank,
                    "candidate": r["name"],
                    "score": value,
                    "delta_log_p": value / n,
                    "cosine": float(unit[qi, c]),
                    "rank_among_training": _rank_among(scanned, float(scanned_as[qi, c])),
                    "training_candidates": int(torch.isfinite(scanned).sum()),
                    **{k: v for k, v in r.items() if k not in ("name", "text")},
                    "text": r["text"],
                }
            )
            ids, per_tok = data["input_ids"][c, : lengths[c]].tolist(), raw.token_totals[qi, c, : lengths[c]]
            tokens += _token_rows(q, rank, c, r, value, ids, per_tok, world.tokenizer)
    return {"candidate_scores": pd.DataFrame(scores), "candidate_tokens": pd.DataFrame(tokens)}
