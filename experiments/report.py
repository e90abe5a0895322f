"""`report.md` for each run: what ran, its headline numbers, its figures and the head of each table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from influence.storage import atomic_write

#: tables too long to be read in a report (they stay in the run directory)
LONG = {"scores", "top_tokens", "token_heatmap", "layer_blocks"}


def markdown_table(df: pd.DataFrame, max_rows: int = 15, max_chars: int = 60) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        s = " ".join(str(v).split())
        return (s[: max_chars - 1] + "…" if len(s) > max_chars else s).replace("|", "\\|")

    head = df.head(max_rows)
    lines = ["| " + " | ".join(map(str, head.columns)) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    if len(df) > max_rows:
        lines.append(f"\n… {len(df) - max_rows} more rows in the table files")
    return "\n".join(lines)


def write_report(run_dir: Path, study: str, overrides: list[str], tables: dict, figures: list[Path]) -> Path:
    run_dir = Path(run_dir)
    parts = [f"# {study}", "", f"Overrides: `{' '.join(overrides) or '(none)'}`; resolved config: `.hydra/config.yaml`.", ""]
    summary = tables.get("_summary")
    if isinstance(summary, pd.DataFrame) and not summary.empty:
        parts += ["## Summary", "", *[f"- **{k}**: {v:.4g}" if isinstance(v, float) else f"- **{k}**: {v}"
                                      for k, v in summary.iloc[0].items()], ""]
    meta = tables.get("_metadata")
    if isinstance(meta, pd.DataFrame) and not meta.empty:
        keep = [k for k in ("model", "curvature", "damping", "query_rank", "candidates", "filter", "num_candidates",
                            "labels", "scale_convention") if k in meta.columns] or list(meta.columns[:15])
        parts += ["## Setup", "", *[f"- {k}: `{meta.iloc[0][k]}`" for k in keep], "", "All metadata: `metadata.json`.", ""]
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""]
        parts += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in pngs[:40]]
        if len(pngs) > 40:
            parts.append(f"\n… and {len(pngs) - 40} more in `figures/`")
        if any(p.suffix == ".html" for p in figures):
            parts.append("\nTop sequences with token-wise colouring: [figures/top_sequences.html](figures/top_sequences.html)")
        parts.append("")
    for name, df in tables.items():
        if isinstance(df, pd.DataFrame) and not name.startswith("_") and name not in LONG and not df.empty:
            parts += [f"## Table `{name}` ({len(df)} rows)", "", markdown_table(df.drop(columns=[c for c in ("text",) if c in df])), ""]
    path = run_dir / "report.md"
    text = "\n".join(parts)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
