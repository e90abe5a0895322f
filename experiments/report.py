"""`report.md` for each run: what ran, its headline numbers, its figures and the head of each table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import captions, draw_figures
from influence import InfluenceError
from influence.storage import atomic_write

from .pipeline.outputs import staged, write_tables
from .studies import Study, get_study


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


def publish(run_dir: Path, study: str | Study, overrides: list[str], tables: dict) -> tuple[list[Path], Path]:
    """A study's results into its run directory: the tables, then its figures drawn from them, then report.md,
    moved into place together once all are written (`staged`)."""
    study = get_study(study) if isinstance(study, str) else study
    run_dir = Path(run_dir)
    with staged(run_dir) as tmp:
        write_tables(tables, tmp)
        figures = draw_figures(study.figures, tables, tmp)
        notes = captions(study.figures, figures)
        write_report(tmp, study.name, overrides, tables, figures, long=study.long_tables, captions=notes)
    return [run_dir / p.relative_to(tmp) for p in figures], run_dir / "report.md"


def write_report(
    run_dir: Path,
    study: str,
    overrides: list[str],
    tables: dict,
    figures: list[Path],
    long: frozenset[str] = frozenset(),
    captions: dict | None = None,
) -> Path:
    """`report.md`: the overrides, what the model knows (`_knowledge`), the summary row, the setup, the figures (each
    with its caption from `captions`, {figure path: text}) and the head of every table not in `long`."""
    run_dir = Path(run_dir)
    parts = [
        f"# {study}",
        "",
        f"Overrides: `{' '.join(overrides) or '(none)'}`; resolved config: `.hydra/config.yaml`.",
        "",
        *knowledge_lines(tables.get("_knowledge")),
    ]
    summary = tables.get("_summary")
    if isinstance(summary, pd.DataFrame) and not summary.empty:
        parts += [
            "## Summary",
            "",
            *[f"- **{k}**: {v:.4g}" if isinstance(v, float) else f"- **{k}**: {v}" for k, v in summary.iloc[0].items()],
            "",
        ]
    meta = tables.get("_metadata")
    if isinstance(meta, pd.DataFrame) and not meta.empty:
        keep = [
            k
            for k in (
                "model",
                "curvature",
                "damping",
                "query_rank",
                "candidates",
                "filter",
                "num_candidates",
                "labels",
                "scale_convention",
            )
            if k in meta.columns
        ] or list(meta.columns[:15])
        parts += [
            "## Setup",
            "",
            *[f"- {k}: `{meta.iloc[0][k]}`" for k in keep],
            "",
            "All metadata: `metadata.json`.",
            "",
        ]
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""]
        parts += figure_lines(pngs[:40], run_dir, captions or {})
        if len(pngs) > 40:
            parts.append(f"\n… and {len(pngs) - 40} more in `figures/`")
        if any(p.suffix == ".html" for p in figures):
            parts.append(
                "\nTop sequences with token-wise colouring: [figures/top_sequences.html](figures/top_sequences.html)"
            )
        parts.append("")
    for name, df in tables.items():
        if isinstance(df, pd.DataFrame) and not name.startswith("_") and name not in long and not df.empty:
            parts += [
                f"## Table `{name}` ({len(df)} rows)",
                "",
                markdown_table(df.drop(columns=[c for c in ("text",) if c in df])),
                "",
            ]
    path = run_dir / "report.md"
    text = "\n".join(parts)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def knowledge_lines(knowledge) -> list[str]:
    """The "What the model knows" section from the `_knowledge` table: one line per probe. The table is long
    (probe, value, detail: a row per probe) or one wide row ({probe: result})."""
    if not isinstance(knowledge, pd.DataFrame) or knowledge.empty:
        return []

    def text(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    if "probe" in knowledge.columns:
        rows = [
            (text(r.get("probe")), text(r.get("value")), text(r.get("detail"))) for r in knowledge.to_dict("records")
        ]
    else:
        rows = [(str(k), text(v), "") for k, v in knowledge.iloc[0].items()]
    lines = [f"- **{p}**: {v}" + (f" ({d})" if d else "") for p, v, d in rows]
    return ["## What the model knows", "", *lines, ""]


def figure_lines(pngs: list[Path], run_dir: Path, captions: dict) -> list[str]:
    """Each figure as a markdown image; a caption (`*…*`) under the last of the consecutive figures that share it
    (the per-query figures of one spec get theirs once)."""
    lines = []
    for i, p in enumerate(pngs):
        lines.append(f"![{p.stem}]({p.relative_to(run_dir).as_posix()})")
        text = captions.get(p, "")
        if text and (i + 1 == len(pngs) or captions.get(pngs[i + 1], "") != text):
            lines += ["", f"*{text}*", ""]
    return lines


def _figures_to_show(figures: list[Path], limit: int = 12) -> list[Path]:
    """A section's PNG figures, the per-query top-sequence listings left out (they are in the section's own report)."""
    return [p for p in figures if p.suffix == ".png" and not p.stem.startswith("top_sequences")][:limit]


def _summary_lines(tables: dict) -> list[str]:
    s = tables.get("_summary")
    if not isinstance(s, pd.DataFrame) or s.empty:
        return []
    return [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in s.iloc[0].items()]


def _section_captions(section) -> dict:
    """{figure path: caption} of a paper section, from its study's figure specs (none for an unknown study)."""
    try:
        return captions(get_study(section.study).figures, section.figures)
    except InfluenceError:
        return {}


def write_paper_report(
    out_dir: Path,
    overrides: list[str],
    sections: list,
    card: pd.DataFrame,
    timings: pd.DataFrame,
    run_dir: Path | None = None,
) -> Path:
    """`report.md` and a self-contained `report.html` (figures inline) for `experiment=paper`, in the paper's order,
    written into `out_dir` (a staging directory of `run_dir`, which figure links are relative to)."""
    import base64
    import html

    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir
    shown = card.drop(columns=["value"])
    md = [
        "# Studying LLM generalization with influence functions: the whole paper at the embedded scale",
        "",
        f"Overrides: `{' '.join(overrides) or '(none)'}`. Each section ran as `experiment=<study>`; its own report, "
        "tables and figures are in its folder.",
        "",
        "## Findings scorecard",
        "",
        "Scale-free checks of the paper's findings on our models (raw influence magnitudes are not compared: "
        "the paper's normalisation differs). `no` means the finding did not reproduce at this scale.",
        "",
        markdown_table(shown, max_rows=100, max_chars=120),
        "",
    ]
    body = [
        "<h1>Studying LLM generalization with influence functions: the whole paper at the embedded scale</h1>",
        f"<p>Overrides: <code>{html.escape(' '.join(overrides) or '(none)')}</code>. Each section ran as "
        "<code>experiment=&lt;study&gt;</code>; its own report, tables and figures are in its folder.</p>",
        "<h2>Findings scorecard</h2>",
        "<p>Scale-free checks of the paper's findings on our models (raw influence magnitudes are not compared: the "
        "paper's normalisation differs). <b>no</b> means the finding did not reproduce at this scale.</p>",
        shown.to_html(index=False, escape=True, border=0, classes="card"),
    ]
    for s in sections:
        head = f"{s.title} ({s.where}): `{s.study}`"
        md += [
            f"## {head}",
            "",
            f"Status: {s.status}; {s.seconds:.0f} s. Report: [{s.study}/report.md]({s.study}/report.md).",
            "",
        ]
        body += [
            f"<h2>{html.escape(s.title)} <small>({html.escape(s.where)}; <code>{s.study}</code>)</small></h2>",
            f"<p>Status: {html.escape(s.status)}; {s.seconds:.0f} s. Details: <a href='{s.study}/report.md'>{s.study}/report.md</a></p>",
        ]
        lines = _summary_lines(s.tables)
        if lines:
            md += [*[f"- {ln}" for ln in lines], ""]
            body.append("<ul>" + "".join(f"<li>{html.escape(ln)}</li>" for ln in lines) + "</ul>")
        notes = _section_captions(s)
        for p in _figures_to_show(s.figures):
            rel = p.relative_to(run_dir).as_posix()
            md.append(f"![{p.stem}]({rel})")
            note = notes.get(p, "")
            if note:
                md += ["", f"*{note}*", ""]
            data = base64.b64encode(p.read_bytes()).decode()
            text = html.escape(note + " " if note else "") + f"<code>{html.escape(rel)}</code>"
            body.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(p.stem)}'>"
                f"<figcaption>{text}</figcaption></figure>"
            )
        md.append("")
    md += ["## Time per section", "", markdown_table(timings, max_rows=100, max_chars=120), ""]
    body += ["<h2>Time per section</h2>", timings.to_html(index=False, border=0)]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.4} img{max-width:100%} "
        "table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
    )
    head = f"<meta charset='utf-8'><title>influence-studies: paper</title><style>{style}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
    atomic_write(out_dir / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    path = out_dir / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(md), encoding="utf-8"))
    return path
