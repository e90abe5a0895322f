"""Per-answer-token attribution as tables and a figure: a query's influence I = Σ_t I_t split over its answer tokens.

For f = Σ_t log p(x_t | x_<t) over the completion, I_t is the influence on one token's log-probability
(`influence.compute_scores(..., per_answer_token=True)`). A multi-token name's later tokens are its spelling: any
sentence containing the name teaches them, in either word order, so influence that sits on them says little about
the relation; the first answer token is where the relation has to pick the name.

The long tables have one row per (scale point, query, sequence, answer token): `score` = I_t, `sequence_score` =
Σ_t I_t (the full-completion score) and `share` = I_t / sequence_score. Shares per group are ratios of SUMS over
the group's sequences (Σ_m I_{t,m} / Σ_m I_m), not means of per-sequence shares: a sequence whose total is near
zero gives a per-sequence share of ±1000s. With tokens of opposite sign a share can lie outside [0, 1]; the first
and later shares always add to 1. Shares are reported as measured, whatever their sign.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POINT = ["size", "size_order", "seed", "params"]
SHARE_COLUMNS = [
    "answer",
    "answer_tokens",
    "sequences",
    "sequence_sum",
    "first_token_sum",
    "later_tokens_sum",
    "first_token_share",
    "later_tokens_share",
]


def token_rows(row: dict, scores, tokens: list[str], ids: list[int]) -> list[dict]:
    """One (query, sequence) row split into a row per answer token: `answer_position` (0 = the first),
    `answer_token` (its text, decoded alone: a byte-level piece of a character shows as U+FFFD), `answer_token_id`,
    `answer_tokens` (T_c), `score` (I_t), `sequence_score` (Σ_t I_t), `share` (I_t / Σ_t I_t)."""
    scores = [float(s) for s in scores]
    if not len(scores) == len(tokens) == len(ids):
        raise ValueError(f"{len(scores)} answer-token scores for {len(tokens)} tokens and {len(ids)} ids")
    total = float(np.sum(scores))
    return [
        {
            **row,
            "answer_position": t,
            "answer_token": tok,
            "answer_token_id": int(i),
            "answer_tokens": len(tokens),
            "score": s,
            "sequence_score": total,
            "share": s / total if total != 0 else float("nan"),
        }
        for t, (s, tok, i) in enumerate(zip(scores, tokens, ids))
    ]


def _share(part: float, whole: float) -> float:
    return part / whole if whole != 0 else float("nan")


def first_token_shares(tokens: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys` (a query and a partition of its sequences): the summed full-completion influence of its
    sequences (`sequence_sum`), the part of it on the first answer token and on the later ones, and their shares."""
    rows = []
    for key, g in tokens.groupby(keys, sort=False):
        first = float(g.loc[g["answer_position"] == 0, "score"].sum())
        later = float(g.loc[g["answer_position"] > 0, "score"].sum())
        whole = first + later
        answer = g.drop_duplicates("answer_position").sort_values("answer_position")["answer_token"]
        rows.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                "answer": "|".join(answer),
                "answer_tokens": int(g["answer_tokens"].iloc[0]),
                "sequences": int((g["answer_position"] == 0).sum()),
                "sequence_sum": whole,
                "first_token_sum": first,
                "later_tokens_sum": later,
                "first_token_share": _share(first, whole),
                "later_tokens_share": _share(later, whole),
            }
        )
    return pd.DataFrame(rows, columns=[*keys, *SHARE_COLUMNS])


def median_share(shares: pd.DataFrame, column: str = "later_tokens_share") -> float:
    """The median of `column` over the rows at the largest size whose answers have more than one token (a
    one-token answer's first-token share is 1 by construction); NaN when there are none."""
    at = shares[(shares["size_order"] == shares["size_order"].max()) & (shares["answer_tokens"] > 1)][column]
    return float(at.median()) if at.notna().any() else float("nan")


def share_figure(shares: pd.DataFrame):
    """One query's shares: per category (a `category` label, in `category_order`), the share of the summed influence
    on the first answer token (solid) and on the later ones (hatched), model sizes side by side; the median over
    seeds, error bars their std."""
    import matplotlib.pyplot as plt

    query, answer, n = shares["query"].iloc[0], shares["answer"].iloc[0], int(shares["answer_tokens"].iloc[0])
    cats = shares.drop_duplicates("category").sort_values("category_order", kind="stable")["category"].tolist()
    sizes = shares[["size_order", "size"]].drop_duplicates().sort_values("size_order")["size"].tolist()
    x, width = np.arange(len(cats)), 0.8 / max(2 * len(sizes), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cats)), 3.8))
    for k, size in enumerate(sizes):
        g = shares[shares["size"] == size].groupby("category")
        for h, (col, hatch, name) in enumerate(
            (("first_token_share", None, "first token"), ("later_tokens_share", "//", "later tokens"))
        ):
            stat = g[col].agg(["median", lambda s: float(np.std(s))]).reindex(cats)
            ax.bar(
                x + (2 * k + h - (2 * len(sizes) - 1) / 2) * width,
                stat["median"].to_numpy(),
                width,
                yerr=stat.iloc[:, 1].to_numpy(),
                capsize=2,
                color=f"C{k}",
                alpha=1.0 if hatch is None else 0.5,
                hatch=hatch,
                label=f"{size}: {name}",
            )
    ax.set_xticks(x)
    ax.set_xticklabels(cats, rotation=35, ha="right", fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("share of summed influence")
    ax.set_title(f"Answer tokens: {query}, answer {answer!r} ({n} token{'s' * (n != 1)})", fontsize=8)
    ax.legend(title="model (error: std over seeds)", fontsize=6, title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig
