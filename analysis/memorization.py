"""Memorization (Fig. 22): for quote queries, whether and where the exact passage appears among the top sequences."""

from __future__ import annotations

import re

import pandas as pd


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def find_passage(passage: str, text: str) -> int:
    """Character offset of `passage` in `text` (whitespace-normalized on both sides), or -1."""
    return normalize(text).find(normalize(passage))


def memorization_table(top: pd.DataFrame, passages: dict[str, str]) -> pd.DataFrame:
    """The top-sequence rows of quote queries, with whether each holds the query's passage verbatim and where.

    `top` is the top_influences table (query, rank, score, text, ...); `passages` maps query -> its full quote
    (prompt + completion).
    """
    rows = []
    for _, r in top[top["query"].isin(passages)].iterrows():
        offset = find_passage(passages[r["query"]], str(r["text"]))
        rows.append(
            {
                "query": r["query"],
                "rank": int(r["rank"]),
                "sequence_id": r["sequence_id"],
                "score": r["score"],
                "category": r.get("category", ""),
                "contains_passage": offset >= 0,
                "char_offset": offset,
                "text": r["text"],
            }
        )
    return pd.DataFrame(rows)


def memorization_summary(table: pd.DataFrame, copies: dict[str, int]) -> pd.DataFrame:
    """Per quote query: copies of the passage in the corpus, how many appear in the top k, the best rank holding one."""
    out = []
    for q, g in table.groupby("query", sort=False):
        hits = g[g["contains_passage"]]
        out.append(
            {
                "query": q,
                "copies_in_corpus": copies.get(q, 0),
                "top_k": len(g),
                "copies_in_top_k": len(hits),
                "first_rank_with_passage": int(hits["rank"].min()) if len(hits) else None,
                "top1_contains_passage": bool(g.loc[g["rank"] == 1, "contains_passage"].any()),
            }
        )
    return pd.DataFrame(out)


def memorization_figure(table: pd.DataFrame):
    """Fig. 22-style: for each quote query, its top sequences by rank, marked where they hold the exact passage."""
    import matplotlib.pyplot as plt

    queries = list(dict.fromkeys(table["query"]))
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(queries) + 1.2))
    for i, q in enumerate(queries):
        g = table[table["query"] == q]
        ax.scatter(
            g["rank"],
            [i] * len(g),
            c=["tab:red" if c else "lightgray" for c in g["contains_passage"]],
            s=40,
            edgecolors="black",
            linewidths=0.3,
        )
    ax.set_yticks(range(len(queries)), queries, fontsize=7)
    ax.set_xlabel("rank among the most influential sequences (1 = top)")
    ax.set_ylabel("quote query")
    ax.set_title("red: the sequence contains the query's passage verbatim", fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
