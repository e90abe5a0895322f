"""Figures drawn from result tables only, saved as PNG and PDF (and HTML listings).

What to draw is data: a study lists `FigureSpec`s (file stem, drawing function, the tables it reads) and
`draw_figures` draws every one whose tables are there. This module knows no study.

Text falls back from DejaVu to Noto CJK (Debian package `fonts-noto-cjk`) so that Korean tokens are drawn, not
boxes; without that font installed, figures are drawn as before (matplotlib warns of the missing glyphs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .fonts import use_font_fallback  # noqa: E402
from .listings import listing_figure, listings_html  # noqa: E402

CJK_FONTS = use_font_fallback()


@dataclass(frozen=True)
class FigureSpec:
    """A figure of a study: `draw(*tables)` on the named tables, saved as `figures/<stem>`.

    `draw` returns a matplotlib Figure (saved as `<stem>.png` and `.pdf`), {suffix: Figure} for one figure per
    query (saved as `<stem>_<suffix>`), or HTML text (saved as `<stem>.html`). `caption`: one line the report
    writes under the figure, saying what to look for.
    """

    stem: str
    draw: Callable
    tables: tuple[str, ...]
    caption: str = ""


def figure(stem: str, draw: Callable, *tables: str, caption: str = "") -> FigureSpec:
    """`FigureSpec(stem, draw, tables, caption)`, the tables as arguments."""
    return FigureSpec(stem, draw, tuple(tables), caption)


def captions(specs, paths) -> dict[Path, str]:
    """{figure file: its spec's caption} for the files `draw_figures` wrote from `specs` (stem or `<stem>_<key>`)."""
    out = {}
    for p in paths:
        for spec in sorted(specs, key=lambda s: -len(s.stem)):  # the longest stem that names the file
            if spec.caption and (p.stem == spec.stem or p.stem.startswith(spec.stem + "_")):
                out[p] = spec.caption
                break
    return out


def per_query(draw: Callable) -> Callable:
    """A drawing of one query's rows, made for every query of the table: {query: Figure}."""

    def each(df: pd.DataFrame) -> dict:
        return {str(q): draw(g) for q, g in df.groupby("query", sort=False)}

    return each


LISTING_CAPTION = (
    "Each query's prompt and completion, then its top training sequences, tokens coloured by token-wise influence "
    "(red positive, blue negative): look for where the colour sits (the answer's words or unrelated tokens)."
)


def listings(table: str = "top_tokens", stem: str = "top_sequences", caption: str = LISTING_CAPTION):
    """The top-sequence listings of a `top_tokens` table: one image per query, then one HTML page."""
    return figure(stem, per_query(listing_figure), table, caption=caption), figure(stem, listings_html, table)


def save(fig, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf`; return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    try:
        for p in paths:
            _replace_atomically(p, lambda tmp, p=p: fig.savefig(tmp, bbox_inches="tight", dpi=150, format=p.suffix[1:]))
    finally:
        plt.close(fig)
    return paths


def _replace_atomically(path: Path, write) -> None:
    """`write(tmp)` beside `path`, then rename: a kill while drawing leaves no 0-byte figure under its name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _save_drawn(drawn, stem: Path) -> list[Path]:
    if isinstance(drawn, str):
        stem.parent.mkdir(parents=True, exist_ok=True)
        path = stem.with_suffix(".html")
        _replace_atomically(path, lambda tmp: tmp.write_text(drawn, encoding="utf-8"))
        return [path]
    if isinstance(drawn, dict):
        return [p for k, fig in drawn.items() for p in save(fig, stem.parent / f"{stem.name}_{_safe(k)}")]
    return save(drawn, stem)


def draw_figures(specs, tables: dict, out_dir: str | Path) -> list[Path]:
    """Every figure of `specs` whose tables are all present and non-empty, saved into `out_dir/figures`."""
    out = Path(out_dir) / "figures"
    written = []
    for spec in specs:
        frames = [tables.get(n) for n in spec.tables]
        if all(isinstance(df, pd.DataFrame) and not df.empty for df in frames):
            written += _save_drawn(spec.draw(*frames), out / spec.stem)
    return written
