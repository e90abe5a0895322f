"""What a trained model did not learn: the loss per token of every training document, its distribution, and the
documents far above the corpus median.

Each document is scored alone, from its first token (as queries and scanned sequences are), with the mean
next-token cross-entropy over its real tokens (nats/token; the EOS that closes the row is a target too).
Documents are sorted by length and batched by a token budget, so almost nothing is spent on padding; no
gradients are kept.

A document is **not learned** when its loss per token exceeds `UNLEARNED_FACTOR` x the median over the scored
training documents: the model predicts it several times worse than the corpus it has learned.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .sequences import pad

#: a training document is "not learned" when its loss per token exceeds this multiple of the median
UNLEARNED_FACTOR = 3.0
#: at most this many not-learned documents are listed in training.json (the count is always complete)
MAX_LISTED = 100
#: documents scored by default (a seeded sample above it: a large local corpus stays cheap)
DEFAULT_MAX_DOCS = 50_000
#: padded tokens per forward pass (bounds the logits' memory: tokens x vocabulary floats)
TOKEN_BUDGET = 8192
#: the columns of doc_losses.csv
CSV_COLUMNS = ["id", "category", "kind", "n_tokens", "loss_per_token"]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@torch.no_grad()
def row_losses(model, rows: list[list[int]], pad_id: int, token_budget: int = TOKEN_BUDGET) -> np.ndarray:
    """Mean next-token loss (nats/token) of each row scored alone from position 0; NaN for rows under 2 tokens."""
    was_training = model.training
    model.eval()
    out = np.full(len(rows), np.nan)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    order = [i for i in order if len(rows[i]) >= 2]
    s = 0
    while s < len(order):
        width = len(rows[order[s]])
        n = max(1, token_budget // width)
        idx = order[s : s + n]
        ids, mask = pad([rows[i] for i in idx], pad_id, width)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        real = mask[:, 1:].to(logits.dtype)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
        per_row = (nll.view_as(real) * real).sum(1) / real.sum(1)
        out[idx] = per_row.double().numpy()
        s += n
    model.train(was_training)
    return out


def _sample(n: int, max_docs: int | None, seed: int) -> list[int]:
    if max_docs is None or n <= int(max_docs):
        return list(range(n))
    return sorted(random.Random(f"{seed}:doc_losses").sample(range(n), int(max_docs)))


def doc_loss_table(model, prep, max_docs: int | None = DEFAULT_MAX_DOCS, seed: int = 0) -> pd.DataFrame:
    """One row per scored training document: id, category, kind, n_tokens, loss_per_token (CSV_COLUMNS), plus
    `row`, its position in `prep.train_rows` / `prep.meta`."""
    take = _sample(len(prep.train_rows), max_docs, seed)
    losses = row_losses(model, [prep.train_rows[i] for i in take], prep.tokenizer.pad_token_id)
    meta = prep.meta.iloc[take].reset_index(drop=True)
    return pd.DataFrame(
        {
            "id": meta["id"].to_numpy() if "id" in meta else take,
            "category": meta["category"].to_numpy() if "category" in meta else None,
            "kind": meta["kind"].to_numpy() if "kind" in meta else None,
            "n_tokens": [len(prep.train_rows[i]) for i in take],
            "loss_per_token": losses,
            "row": take,
        }
    )


def distribution(values) -> dict:
    """Mean, the 5/25/50/75/95 % quantiles and the maximum of finite values, with their count."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, QUANTILES)
    return (
        {"n": int(len(v)), "mean": round(float(v.mean()), 4)}
        | {f"q{int(round(p * 100)):02d}": round(float(x), 4) for p, x in zip(QUANTILES, q)}
        | {"max": round(float(v.max()), 4)}
    )


def _plain(v):
    """A JSON value for one metadata cell (None for missing, Python scalars for numpy ones)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        v = v.item()
        if isinstance(v, float) and math.isnan(v):
            return None
    if isinstance(v, float) and v.is_integer():
        return int(v)  # parquet stores an integer column with missing values as floats (copy 3.0)
    return v


def summarize(table: pd.DataFrame, meta: pd.DataFrame, heldout: np.ndarray | None = None) -> dict:
    """The training.json block: distributions overall, per category and per kind (and of held-out documents), the
    not-learned threshold and the not-learned documents with their generator metadata, highest loss first."""
    scored = table[np.isfinite(table["loss_per_token"])]
    median = float(scored["loss_per_token"].median()) if len(scored) else float("nan")
    threshold = UNLEARNED_FACTOR * median
    bad = scored[scored["loss_per_token"] > threshold].sort_values("loss_per_token", ascending=False)
    listed = []
    skip = {"n_tokens"}
    for r in bad.head(MAX_LISTED).itertuples(index=False):
        extra = {k: _plain(v) for k, v in meta.iloc[r.row].items() if k not in skip}
        listed.append(
            {"id": _plain(r.id), "category": _plain(r.category), "kind": _plain(r.kind)}
            | {k: v for k, v in extra.items() if v is not None and k not in ("id", "category", "kind")}
            | {"n_tokens": int(r.n_tokens), "loss_per_token": round(float(r.loss_per_token), 4)}
        )
    groups = {
        col: {str(k): distribution(g["loss_per_token"]) for k, g in scored.groupby(col, sort=True)}
        for col in ("category", "kind")
        if scored[col].notna().any()
    }
    return {
        "definition": (
            "loss_per_token: mean next-token cross-entropy (nats/token) of each training document scored alone "
            f"from its first token, after training; not learned: loss_per_token > {UNLEARNED_FACTOR:g} x the median "
            "over the scored training documents"
        ),
        "docs_scored": int(len(table)),
        "docs_total": int(len(meta)),
        "overall": distribution(scored["loss_per_token"]),
        "by_category": groups.get("category", {}),
        "by_kind": groups.get("kind", {}),
        "heldout_docs": distribution(heldout) if heldout is not None else None,
        "unlearned_threshold": round(threshold, 4),
        "unlearned_count": int(len(bad)),
        "unlearned_by_category": {str(k): int(v) for k, v in bad["category"].value_counts().sort_index().items()},
        "unlearned": listed,
    }


def report(model, prep, max_docs: int | None = DEFAULT_MAX_DOCS, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """The training.json block and the doc_losses.csv table (CSV_COLUMNS) of a trained model."""
    table = doc_loss_table(model, prep, max_docs, seed)
    heldout = row_losses(model, prep.val_rows, prep.tokenizer.pad_token_id) if prep.val_rows else None
    return summarize(table, prep.meta, heldout), table[CSV_COLUMNS]
