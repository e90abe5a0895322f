"""Top-sequence listings as in the paper's figures: each query's top sequences, tokens coloured by influence.

Read from the `top_tokens` table (query, rank, sequence_id, score, category, spurious, position, token,
token_score, and the query's prompt and completion where the table has them); written as one HTML page and as
one image per query, each query's listing headed by its prompt and completion.
"""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from .fonts import mono_families


def _colour(v: float, lim: float) -> str:
    """Red for positive, blue for negative influence, white at zero."""
    t = 0.0 if lim == 0 else max(-1.0, min(1.0, v / lim))
    if t >= 0:
        return f"rgba(220,40,40,{t:.3f})"
    return f"rgba(40,80,220,{-t:.3f})"


#: CSS font stacks with CJK fallbacks (Korean queries and sequences)
SANS_CSS = "'DejaVu Sans','Noto Sans CJK KR','Noto Sans KR','Apple SD Gothic Neo','Malgun Gothic',sans-serif"
MONO_CSS = (
    "'DejaVu Sans Mono','Noto Sans Mono CJK KR','Noto Sans CJK KR','D2Coding','Apple SD Gothic Neo',"
    "'Malgun Gothic',monospace"
)


def query_text(tokens: pd.DataFrame) -> tuple[str, str] | None:
    """(prompt, completion) of the query whose rows `tokens` holds; None when the table has no such columns."""
    if "prompt" not in tokens or "completion" not in tokens or tokens.empty:
        return None
    first = tokens.iloc[0]
    return str(first["prompt"]), str(first["completion"])


def listings_html(tokens: pd.DataFrame, title: str = "Most influential training sequences") -> str:
    parts = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>body{{font-family:{SANS_CSS};max-width:1100px;margin:auto}} .seq{{font-family:{MONO_CSS};"
        "white-space:pre-wrap;border:1px solid #ccc;padding:6px;margin:4px 0 14px} .meta{font-size:12px;color:#444}"
        f" .query{{font-family:{MONO_CSS};white-space:pre-wrap;background:#f4f4f4;border-left:3px solid #888;"
        "padding:6px;margin:4px 0 12px} .completion{font-weight:bold}</style>",
        f"</head><body><h1>{html.escape(title)}</h1><p>Token colour: red = positive, blue = negative token-wise "
        "influence (Eq. 31; a token's colour is the term of the position predicting the next token).</p>",
    ]
    for query, qg in tokens.groupby("query", sort=False):
        parts.append(f"<h2>{html.escape(str(query))}</h2>")
        text = query_text(qg)
        if text is not None:
            parts.append(
                f"<div class='meta'>query (prompt, then <b>completion</b>)</div><div class='query'>"
                f"<span class='prompt'>{html.escape(text[0])}</span>"
                f"<span class='completion'>{html.escape(text[1])}</span></div>"
            )
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


def _cells(text: str) -> int:
    """Monospace cells `text` takes: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` cells, broken at spaces (a longer word is cut), its own line breaks kept
    (blank lines dropped)."""
    out = []
    for line in text.split("\n"):
        cur, n = "", 0
        for word in re.findall(r"\S+\s*|\s+", line):
            while _cells(word) > width:  # a word wider than a line: cut it
                if cur.strip():
                    out.append(cur.rstrip())
                cut = ""
                for c in word:
                    if _cells(cut + c) > width:
                        break
                    cut += c
                out.append(cut)
                word, cur, n = word[len(cut) :], "", 0
            if n + _cells(word.rstrip()) > width and cur.strip():
                out.append(cur.rstrip())
                cur, n = "", 0
            cur, n = cur + word, n + _cells(word)
        if cur.strip():
            out.append(cur.rstrip())
    return out or [""]


def listing_figure(tokens: pd.DataFrame, max_sequences: int = 5, width: int = 110):
    """One query's top sequences as an image: text wrapped into lines, each token on its influence colour."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    mono = mono_families()
    seqs = list(tokens.groupby(["rank", "sequence_id"], sort=True))[:max_sequences]
    lines = []  # (kind, content)
    text = query_text(tokens)
    if text is not None:
        for label, part in (("prompt", text[0]), ("completion", text[1])):
            wrapped = _wrap(part, width - 12)
            lines += [("query", (f"{label}:" if i == 0 else "").ljust(12) + ln) for i, ln in enumerate(wrapped)]
        lines.append(("gap", None))
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
            if col + _cells(t) > width and row:
                lines.append(("tokens", row))
                row, col = [], 0
            row.append((t, v, lim))
            col += _cells(t)
        if row:
            lines.append(("tokens", row))
        lines.append(("gap", None))
    height = 0.16 * len(lines) + 0.6
    size = 6.5  # the token font: a monospace cell is 0.6 em, so the figure is as wide as `width` cells of it
    fig = plt.figure(figsize=((width + 1) * 0.602 * size / 72, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis("off")
    ax.set_xlim(0, width)
    ax.set_ylim(len(lines) + 1, 0)
    ax.text(0.5, 0.5, f"query: {tokens['query'].iloc[0]}", fontsize=8, fontweight="bold", va="center")
    for i, (kind, content) in enumerate(lines, start=1):
        if kind == "head":
            ax.text(0.5, i + 0.5, content, fontsize=6.5, va="center", color="#333")
        elif kind == "query":
            ax.text(0.5, i + 0.5, content, fontsize=size, family=mono, va="center", color="#000")
        elif kind == "tokens":
            x = 0.5
            for t, v, lim in content:
                rgba = _colour(v, lim)
                r, gr, b, a = [float(c) for c in rgba[5:-1].split(",")]
                w = _cells(t)
                ax.add_patch(plt.Rectangle((x, i), w, 1, color=to_rgba((r / 255, gr / 255, b / 255), a), lw=0))
                ax.text(x, i + 0.5, t, fontsize=size, family=mono, va="center")
                x += w
    return fig
