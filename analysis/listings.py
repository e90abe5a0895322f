"""Top-sequence listings as in the paper's figures: each query's top sequences, tokens coloured by influence.

Read from the `top_tokens` table (query, rank, sequence_id, score, category, spurious, position, token,
token_score); written as one HTML page and as one image per query.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd


def _colour(v: float, lim: float) -> str:
    """Red for positive, blue for negative influence, white at zero."""
    t = 0.0 if lim == 0 else max(-1.0, min(1.0, v / lim))
    if t >= 0:
        return f"rgba(220,40,40,{t:.3f})"
    return f"rgba(40,80,220,{-t:.3f})"


def listings_html(tokens: pd.DataFrame, title: str = "Most influential training sequences") -> str:
    parts = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} .seq{font-family:monospace;"
        "white-space:pre-wrap;border:1px solid #ccc;padding:6px;margin:4px 0 14px} .meta{font-size:12px;color:#444}</style>",
        f"</head><body><h1>{html.escape(title)}</h1><p>Token colour: red = positive, blue = negative token-wise "
        "influence (Eq. 31; a token's colour is the term of the position predicting the next token).</p>",
    ]
    for query, qg in tokens.groupby("query", sort=False):
        parts.append(f"<h2>{html.escape(str(query))}</h2>")
        for (rank, seq), g in qg.groupby(["rank", "sequence_id"], sort=True):
            first = g.iloc[0]
            lim = float(np.abs(g["token_score"]).max())
            flag = " · <b>spurious (influence on very few tokens)</b>" if first["spurious"] else ""
            parts.append(
                f"<div class='meta'>#{rank} · sequence {seq} · [{html.escape(str(first['category']))}] · "
                f"influence {first['score']:+.4g}{flag}</div><div class='seq'>"
            )
            parts += [
                f"<span style='background:{_colour(v, lim)}'>{html.escape(str(t))}</span>"
                for t, v in zip(g["token"], g["token_score"])
            ]
            parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_listings(tokens: pd.DataFrame, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "top_sequences.html"
    path.write_text(listings_html(tokens), encoding="utf-8")
    return path


def listing_figure(tokens: pd.DataFrame, max_sequences: int = 5, width: int = 110):
    """One query's top sequences as an image: text wrapped into lines, each token on its influence colour."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    seqs = list(tokens.groupby(["rank", "sequence_id"], sort=True))[:max_sequences]
    lines = []  # (kind, content)
    for (rank, seq), g in seqs:
        first = g.iloc[0]
        lines.append(
            (
                "head",
                f"#{rank}  seq {seq}  [{first['category']}]  influence {first['score']:+.3g}"
                + ("  SPURIOUS" if first["spurious"] else ""),
            )
        )
        lim = float(np.abs(g["token_score"]).max())
        row, col = [], 0
        for t, v in zip(g["token"], g["token_score"]):
            t = str(t).replace("\n", "⏎")
            if col + len(t) > width and row:
                lines.append(("tokens", row))
                row, col = [], 0
            row.append((t, v, lim))
            col += len(t)
        if row:
            lines.append(("tokens", row))
        lines.append(("gap", None))
    height = 0.16 * len(lines) + 0.6
    fig = plt.figure(figsize=(9, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis("off")
    ax.set_xlim(0, width)
    ax.set_ylim(len(lines) + 1, 0)
    ax.text(0.5, 0.5, f"query: {tokens['query'].iloc[0]}", fontsize=8, fontweight="bold", va="center")
    for i, (kind, content) in enumerate(lines, start=1):
        if kind == "head":
            ax.text(0.5, i + 0.5, content, fontsize=6.5, va="center", color="#333")
        elif kind == "tokens":
            x = 0.5
            for t, v, lim in content:
                rgba = _colour(v, lim)
                r, gr, b, a = [float(c) for c in rgba[5:-1].split(",")]
                ax.add_patch(plt.Rectangle((x, i), len(t), 1, color=to_rgba((r / 255, gr / 255, b / 255), a), lw=0))
                ax.text(x, i + 0.5, t, fontsize=5.5, family="monospace", va="center")
                x += len(t)
    return fig
