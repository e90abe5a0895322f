"""The run explorer: a run directory's files rendered into one static `explorer.html`, and `index.html` over runs.

A page holds everything it shows (no server, no network, no CDN): the run's `report.md` as HTML with its figures
inlined as data URIs, the scorecard of a paper run, each query's top sequences with token-wise colouring (red =
positive, blue = negative, as analysis/listings.py draws them) and the outlier diagnostics beside the score, filters
by category and language and a search over the sequence text. The listings' data are embedded in the page as JSON
and drawn by a small inlined script. A run lacking some files gets a page of what it has. `write_index` lists every
run of an output directory (experiments/runs.py) with its study, state, date and a link to its page.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from influence import InfluenceError
from influence.storage import atomic_write_text

from .pipeline.outputs import STATUS, read_status
from .runs import run_table

log = logging.getLogger(__name__)

PAGE = "explorer.html"
INDEX = "index.html"
#: the per-query listing images the interactive listing replaces (not inlined)
LISTING_PREFIXES = ("top_sequences",)
MAX_IMAGE_BYTES = 3 * 2**20  # a larger PNG is linked, not inlined
MAX_INLINE_BYTES = 24 * 2**20  # all inlined images of one page together
MAX_ROWS_PER_QUERY = 100
#: columns of `top_influences` shown as numbers beside each sequence (whichever exist), with their labels
DIAGNOSTICS = {
    "score": "score",
    "delta_log_p": "Δlog p",
    "cosine": "cosine",
    "loss_per_token": "loss/token",
    "self_influence": "self-influence",
    "top_k_queries": "in top-k of queries",
    "sparsity_ratio": "sparsity",
}
#: columns that are neither a diagnostic nor a label
NOT_LABELS = {"query", "type", "rank", "sequence_id", "row", "text", "n_tokens", "truncated", "spurious", "category"}
NOT_LABELS |= {"language", "prompt", "completion", "score"}


def read_table(run_dir: Path, name: str) -> pd.DataFrame | None:
    """A result table by name (parquet, else CSV), or None when the run has neither file."""
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = Path(run_dir) / f"{name}{suffix}"
        if path.exists():
            try:
                return reader(path)
            except Exception as e:  # noqa: BLE001 (any reader failure is a damaged file to name)
                raise InfluenceError(
                    f"cannot read {path}: {_first_line(e)} (a damaged or partial table: rerun the study, "
                    "or delete the file to build the page without it)"
                ) from None
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_run_directory(path: Path) -> bool:
    return any((Path(path) / p).exists() for p in (STATUS, "report.md", ".hydra"))


# ---- report.md to HTML (headings, lists, tables, images, links, code, bold: what experiments/report.py writes)


class _Images:
    """Turns image paths of a report into data URIs within the page's budget; listing images are left out."""

    def __init__(self, base: Path):
        self.base, self.spent, self.skipped = Path(base), 0, 0

    def html(self, alt: str, src: str) -> str:
        path = (self.base / src).resolve()
        if path.stem.startswith(LISTING_PREFIXES):
            self.skipped += 1
            return ""
        if path.suffix.lower() != ".png" or not path.is_file():
            return f"<a href='{html.escape(src)}'>{html.escape(alt or src)}</a>"
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES or self.spent + size > MAX_INLINE_BYTES:
            return f"<a href='{html.escape(src)}'>{html.escape(alt or src)} (image not inlined: too large)</a>"
        self.spent += size
        data = base64.b64encode(path.read_bytes()).decode()
        return (
            f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"
            f"<figcaption>{html.escape(src)}</figcaption></figure>"
        )


_CODE = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITEM = re.compile(r"\s*[-*]\s+")
_ITALIC = re.compile(r"(?<![*\w])\*([^*\s](?:[^*]*[^*\s])?)\*(?![*\w])")


def _inline(text: str, images: _Images) -> str:
    """One line of markdown as escaped HTML: code spans, images, links and bold."""
    codes: list[str] = []

    def keep(m):
        codes.append(f"<code>{html.escape(m.group(1))}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = _CODE.sub(keep, text)
    pieces, last = [], 0
    for m in _IMAGE.finditer(text):
        pieces += [_plain(text[last : m.start()]), images.html(m.group(1), m.group(2))]
        last = m.end()
    pieces.append(_plain(text[last:]))
    out = "".join(pieces)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _plain(text: str) -> str:
    out = html.escape(text.replace("\\|", "|"), quote=False)
    out = _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', out)
    return _ITALIC.sub(r"<i>\1</i>", _BOLD.sub(r"<b>\1</b>", out))


def _cells(line: str) -> list[str]:
    body = line.strip().strip("|")
    return [c.strip().replace("\x01", "\\|") for c in body.replace("\\|", "\x01").split("|")]


def markdown_html(text: str, base: Path) -> tuple[str, int]:
    """`report.md` as HTML, images under `base` inlined; also the number of listing images left out."""
    images = _Images(base)
    out: list[str] = []
    para: list[str] = []
    lines = text.splitlines()

    def flush():
        if para:
            out.append("<p>" + " ".join(para) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level + 1}>{_inline(heading.group(2), images)}</h{level + 1}>")
        elif _ITEM.match(line):
            flush()
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append(f"<li>{_inline(_ITEM.sub('', lines[i], count=1), images)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.lstrip().startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                if not re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[i]):
                    rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{_inline(c, images)}</th>" for c in rows[0]) if rows else ""
            body = "".join("<tr>" + "".join(f"<td>{_inline(c, images)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            continue
        else:
            para.append(_inline(line.strip(), images))
        i += 1
    flush()
    return "\n".join(out), images.skipped


# ---- the listings' data


def _clean(v):
    """A JSON-safe scalar (NaN and missing become null; numpy types become Python's)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if hasattr(v, "item"):
        v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
    if isinstance(v, (bool, int, float, str)):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _token_lists(tokens: pd.DataFrame | None) -> dict[tuple, tuple[list, list]]:
    """(query, rank, sequence_id) → (tokens, token scores), in position order."""
    if tokens is None or tokens.empty or not {"query", "rank", "sequence_id", "token", "token_score"} <= set(tokens):
        return {}
    order = [c for c in ("query", "rank", "sequence_id", "position") if c in tokens]
    tokens = tokens.sort_values(order, kind="stable")
    out = {}
    for key, g in tokens.groupby(["query", "rank", "sequence_id"], sort=False):
        scores = [None if not math.isfinite(s) else float(f"{s:.4g}") for s in g["token_score"].astype(float)]
        out[(str(key[0]), int(key[1]), int(key[2]))] = (g["token"].astype(str).tolist(), scores)
    return out


def listing_data(top: pd.DataFrame | None, tokens: pd.DataFrame | None) -> dict:
    """Every query's top sequences with their diagnostics, labels and tokens: what the page's script draws."""
    if top is None or top.empty:
        top = _rows_from_tokens(tokens)
    if top is None or top.empty or "query" not in top:
        return {"queries": [], "diagnostics": {}}
    toks = _token_lists(tokens)
    diag = [c for c in DIAGNOSTICS if c in top]
    labels = [c for c in top.columns if c not in NOT_LABELS and c not in DIAGNOSTICS and not c.startswith("layer_")]
    queries = []
    for query, g in top.groupby("query", sort=False):
        g = g.sort_values("rank", kind="stable") if "rank" in g else g
        rows = []
        for r in g.head(MAX_ROWS_PER_QUERY).to_dict("records"):
            rank, seq = _clean(r.get("rank")), _clean(r.get("sequence_id"))
            tok, ts = toks.get((str(query), rank, seq), (None, None))
            row_labels = {c: _clean(r[c]) for c in labels if _clean(r[c]) not in (None, "")}
            rows.append(
                {
                    "rank": rank,
                    "sequence_id": seq,
                    "category": _clean(r.get("category")) or "",
                    "language": str(_clean(r.get("language")) or ""),
                    "spurious": bool(_clean(r.get("spurious")) or False),
                    "diagnostics": {c: _clean(r[c]) for c in diag},
                    "labels": row_labels,
                    "text": str(_clean(r.get("text")) or ("".join(tok) if tok else "")),
                    "tokens": tok,
                    "token_scores": ts,
                }
            )
        info = {**_query_info(tokens, query), **_query_info(g, query)}
        queries.append({"name": str(query), **info, "rows": rows, "total": len(g)})
    return {"queries": queries, "diagnostics": {c: DIAGNOSTICS[c] for c in diag}}


def _query_info(table: pd.DataFrame | None, query) -> dict:
    """The query's type, prompt and completion, from whichever table has them (`top_tokens` carries the latter)."""
    keys = [k for k in ("type", "prompt", "completion") if table is not None and k in table]
    if not keys:
        return {}
    rows = table[table["query"] == query]
    if rows.empty:
        return {}
    first = {k: _clean(rows.iloc[0][k]) for k in keys}
    return {k: v for k, v in first.items() if v not in (None, "")}


def _rows_from_tokens(tokens: pd.DataFrame | None) -> pd.DataFrame | None:
    """Without `top_influences`, one row per listed sequence of `top_tokens`."""
    if tokens is None or tokens.empty or not {"query", "rank", "sequence_id"} <= set(tokens):
        return None
    keep = [c for c in ("query", "rank", "sequence_id", "score", "category", "spurious") if c in tokens]
    return tokens[keep].drop_duplicates(["query", "rank", "sequence_id"])


def _json_script(data) -> str:
    """JSON for a <script type=application/json>: no '<', '>' or '&' left to end the element or open a comment."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---- the page


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 12px;line-height:1.4;color:#222}
nav a{margin-right:14px} img{max-width:100%} figure{margin:10px 0} figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left} code{background:#f3f3f3;padding:0 3px;overflow-wrap:anywhere}
table{display:block;overflow-x:auto;max-width:100%}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;display:flex;gap:10px;
flex-wrap:wrap;align-items:center} .controls label{font-size:13px} #search{width:260px}
.card{border:1px solid #ccc;border-radius:4px;margin:8px 0;padding:6px 8px}
.meta{font-size:12px;color:#444} .meta b{color:#000} .badge{display:inline-block;border-radius:3px;padding:0 5px;
margin-right:4px;background:#eee;font-size:12px} .spurious{background:#fbd38d} .labels{font-size:11px;color:#666}
.seq{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;word-break:break-word;margin-top:4px}
.query-info{background:#f7f7fb;border-left:3px solid #88a;padding:4px 8px;font-size:13px;white-space:pre-wrap}
.yes{background:#d4f5d4} .no{background:#f8d0d0} .muted{color:#777}
"""

SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('explorer-data').textContent);
const $ = id => document.getElementById(id);
const listing = $('listing');
if (!listing) return;
const qsel = $('query'), csel = $('category'), lsel = $('language'), search = $('search'), count = $('count');
function option(sel, value, text){ const o = document.createElement('option'); o.value = value; o.textContent = text; sel.appendChild(o); }
D.queries.forEach((q, i) => option(qsel, String(i), q.name + (q.type ? ' (' + q.type + ')' : '')));
if (D.queries.length > 1) option(qsel, 'all', '(all queries)');
const cats = new Set(), langs = new Set();
D.queries.forEach(q => q.rows.forEach(r => { cats.add(r.category); langs.add(r.language); }));
option(csel, '*', 'all categories'); [...cats].sort().forEach(c => option(csel, c, c || '(none)'));
option(lsel, '*', 'all languages'); [...langs].sort().forEach(l => option(lsel, l, l || '(unlabelled)'));
function fmt(v){
  if (v === null || v === undefined) return '–';
  if (typeof v !== 'number') return String(v);
  if (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)) return v.toExponential(3);
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}
function colour(v, lim){  // red for positive, blue for negative, white at zero (analysis/listings.py)
  const t = lim ? Math.max(-1, Math.min(1, v / lim)) : 0;
  return t >= 0 ? 'rgba(220,40,40,' + t.toFixed(3) + ')' : 'rgba(40,80,220,' + (-t).toFixed(3) + ')';
}
function el(tag, cls, text){  // text only ever through textContent: nothing of the data is parsed as HTML
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function card(q, r){
  const c = el('div', 'card'); c.dataset.query = q.name; c.dataset.category = r.category; c.dataset.language = r.language;
  const m = el('div', 'meta');
  m.appendChild(el('b', '', '#' + r.rank + ' '));
  m.appendChild(el('span', '', 'sequence ' + r.sequence_id + ' '));
  if (qsel.value === 'all') m.appendChild(el('span', 'badge', q.name));
  m.appendChild(el('span', 'badge', r.category || '(no category)'));
  if (r.language) m.appendChild(el('span', 'badge', r.language));
  if (r.spurious) m.appendChild(el('span', 'badge spurious', 'spurious (influence on very few tokens)'));
  Object.entries(D.diagnostics).forEach(([k, label]) => {
    m.appendChild(el('span', '', ' · ' + label + ' '));
    m.appendChild(el('b', '', fmt(r.diagnostics[k])));
  });
  c.appendChild(m);
  const labels = Object.entries(r.labels);
  if (labels.length) c.appendChild(el('div', 'labels', labels.map(([k, v]) => k + ': ' + v).join(' · ')));
  const s = el('div', 'seq');
  if (r.tokens && r.tokens.length) {
    const lim = Math.max(0, ...r.token_scores.map(v => Math.abs(v || 0)));
    r.tokens.forEach((t, i) => {
      const sp = el('span', 'tok', t), v = r.token_scores[i] || 0;
      sp.style.background = colour(v, lim);
      sp.title = fmt(v);
      s.appendChild(sp);
    });
  } else { s.textContent = r.text; }
  c.appendChild(s);
  return c;
}
function draw(){
  listing.textContent = '';
  const chosen = qsel.value === 'all' ? D.queries : (D.queries[Number(qsel.value)] ? [D.queries[Number(qsel.value)]] : []);
  const info = $('query-info'); info.textContent = '';
  if (chosen.length === 1) {
    const q = chosen[0]; const parts = [];
    if (q.prompt) parts.push('prompt: ' + q.prompt); if (q.completion) parts.push('completion: ' + q.completion);
    info.textContent = parts.join('\n'); info.style.display = parts.length ? '' : 'none';
  } else info.style.display = 'none';
  const needle = search.value.trim().toLowerCase();
  let shown = 0, total = 0;
  chosen.forEach(q => q.rows.forEach(r => {
    total++;
    if (csel.value !== '*' && r.category !== csel.value) return;
    if (lsel.value !== '*' && r.language !== lsel.value) return;
    if (needle && !r.text.toLowerCase().includes(needle)) return;
    shown++; listing.appendChild(card(q, r));
  }));
  count.textContent = shown + ' of ' + total + ' sequences shown';
}
[qsel, csel, lsel].forEach(e => e.addEventListener('change', draw));
search.addEventListener('input', draw);
draw();
})();
"""


def _scorecard_html(card: pd.DataFrame | None) -> str:
    if card is None or card.empty:
        return ""
    shown = card.drop(columns=[c for c in ("value",) if c in card])
    rows = []
    for r in shown.to_dict("records"):
        cells = []
        for k, v in r.items():
            cls = f" class='{'yes' if v == 'yes' else 'no'}'" if k == "reproduced" and v in ("yes", "no") else ""
            cells.append(f"<td{cls}>{html.escape(str(_clean(v) if _clean(v) is not None else ''))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    table = f"<table id='scorecard-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<h2 id='scorecard'>Scorecard</h2>{table}"


def _table_files(run_dir: Path) -> dict[str, Path]:
    """Each table's file by name: its parquet, or its CSV when there is no parquet."""
    files = {p.stem: p for p in run_dir.glob("*.csv")} | {p.stem: p for p in run_dir.glob("*.parquet")}
    return dict(sorted(files.items()))


def _preview(path: Path, n: int = 10) -> tuple[str, pd.DataFrame]:
    """A table file's row count and first rows, read without loading the whole file."""
    try:
        if path.suffix == ".parquet":
            f = pq.ParquetFile(path)
            head = next(f.iter_batches(batch_size=n), None)
            return f"{f.metadata.num_rows} rows", head.to_pandas() if head is not None else pd.DataFrame()
        return "", pd.read_csv(path, nrows=n)
    except Exception as e:  # noqa: BLE001
        raise InfluenceError(
            f"cannot read {path}: {_first_line(e)} (a damaged or partial table: rerun the study, "
            "or delete the file to build the page without it)"
        ) from None


def _tables_html(run_dir: Path) -> str:
    parts = []
    for name, path in _table_files(run_dir).items():
        rows, head = _preview(path)
        head = head.drop(columns=[c for c in head.columns if str(c).startswith("layer_")])
        head = head.map(lambda v: (v[:77] + "…") if isinstance(v, str) and len(v) > 80 else v)
        parts.append(
            f"<details><summary><code>{html.escape(name)}</code> {html.escape(rows)} "
            f"(<a href='{html.escape(path.name)}'>{html.escape(path.name)}</a>)</summary>"
            f"{head.to_html(index=False, escape=True, border=0, na_rep='')}</details>"
        )
    return "<h2 id='tables'>Tables</h2>" + "".join(parts) if parts else ""


def _sections(run_dir: Path) -> list[Path]:
    """A paper run's section directories (each with its own report)."""
    return sorted(d for d in run_dir.iterdir() if d.is_dir() and (d / "report.md").exists())


def _listing_html(data: dict) -> str:
    if not data["queries"]:
        return ""
    return (
        "<h2 id='queries'>Top sequences per query</h2>"
        "<p class='muted'>Token colour: red = positive, blue = negative token-wise influence (a token's colour is the "
        "term of the position predicting the next token; hover for its value).</p>"
        "<div class='controls'><label>query <select id='query'></select></label>"
        "<label>category <select id='category'></select></label>"
        "<label>language <select id='language'></select></label>"
        "<label>search <input id='search' type='search' placeholder='text in the sequence'></label>"
        "<span id='count' class='muted'></span></div>"
        "<div id='query-info' class='query-info'></div><div id='listing'></div>"
    )


def render_page(run_dir: Path, title: str | None = None) -> str:
    """The explorer page of one run (or one paper section) directory, as HTML text."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {}
    report = run_dir / "report.md"
    report_html, skipped = markdown_html(report.read_text(encoding="utf-8"), run_dir) if report.exists() else ("", 0)
    data = listing_data(read_table(run_dir, "top_influences"), read_table(run_dir, "top_tokens"))
    sections = _sections(run_dir)
    facts = [f"{k}: {status[k]}" for k in ("study", "state", "started", "finished", "error") if status.get(k)]
    if status.get("overrides"):
        facts.append("overrides: " + " ".join(map(str, status["overrides"])))
    card = _scorecard_html(read_table(run_dir, "scorecard"))
    nav = [("scorecard", "Scorecard", card), ("sections", "Sections", sections), ("report", "Report", True)]
    nav += [("queries", "Top sequences", data["queries"]), ("tables", "Tables", _table_files(run_dir))]
    body = [
        f"<h1>{html.escape(title or run_dir.name)}</h1>",
        "<ul class='meta'>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>" if facts else "",
        "<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t, has in nav if has) + "</nav>",
    ]
    body.append(card)
    if sections:
        links = "".join(
            f"<li><a href='{html.escape(d.name)}/{PAGE}'>{html.escape(d.name)}</a> "
            f"(<a href='{html.escape(d.name)}/report.md'>report.md</a>)</li>"
            for d in sections
        )
        body.append(f"<h2 id='sections'>Sections</h2><ul>{links}</ul>")
    if report_html:
        note = (
            f"<p class='muted'>{skipped} per-query listing image(s) are left out: the listing below shows them.</p>"
            if skipped
            else ""
        )
        body.append(f"<section id='report'><h2>Report</h2>{note}{report_html}</section>")
    else:
        body.append("<p class='muted' id='report'>This run has no report.md.</p>")
    body.append(_listing_html(data))
    body.append(_tables_html(run_dir))
    head = f"<meta charset='utf-8'><title>{html.escape(title or run_dir.name)}: explorer</title><style>{STYLE}</style>"
    script = (
        f"<script type='application/json' id='explorer-data'>{_json_script(data)}</script><script>{SCRIPT}</script>"
    )
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}{script}</body></html>"


def render_run(run_dir: str | Path) -> list[Path]:
    """Write `explorer.html` into a run directory (and into each section of a paper run); returns the pages."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_directory(run_dir):
        raise InfluenceError(
            f"{run_dir} is not a run directory (it has no {STATUS}, report.md or .hydra): pass a run's directory, "
            "e.g. outputs/runs/<date>/<time>, or the output directory to build every run's page"
        )
    pages = []
    for section in _sections(run_dir):
        pages.append(_write(section / PAGE, render_page(section, f"{run_dir.name} / {section.name}")))
    pages.append(_write(run_dir / PAGE, render_page(run_dir)))
    return pages


def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def write_index(output_dir: str | Path) -> Path:
    """`<output_dir>/index.html`: every run (experiments/runs.py) with its study, state, date and page."""
    root = Path(output_dir)
    columns = ("study", "state", "started", "finished", "error")
    rows = []
    for r in run_table(root).to_dict("records"):
        name = html.escape(r["run"])
        if (root / r["run"] / PAGE).exists():
            link = f"<a href='{html.escape(Path(r['run'], PAGE).as_posix())}'>{name}</a>"
        else:
            rebuild = html.escape(f"python -m experiments.explore {root / r['run']}")
            link = f"{name} <span class='muted'>(no page: {rebuild})</span>"
        cells = [link, *(html.escape(str(r.get(k) or "")) for k in columns)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in ("run", *columns))
    table = f"<table id='runs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    body = f"<h1>Runs in {html.escape(str(root))}</h1>" + (table if rows else "<p>No runs yet.</p>")
    body += (
        f"<p class='muted'>Rebuild every page: <code>python -m experiments.explore {html.escape(str(root))}</code></p>"
    )
    head = f"<meta charset='utf-8'><title>influence-studies: runs</title><style>{STYLE}</style>"
    return _write(root / INDEX, f"<!doctype html><html><head>{head}</head><body>{body}</body></html>")


def output_root(run_dir: Path) -> Path | None:
    """The output directory a run directory lies in (the parent of its `runs/` or `multiruns/`), if any."""
    for parent in Path(run_dir).resolve().parents:
        if parent.name in ("runs", "multiruns"):
            return parent.parent
    return None


def build(target: str | Path) -> list[Path]:
    """(Re)build pages: of one run directory (and its output directory's index), or of every run of an output
    directory and its index."""
    target = Path(target)
    if target.is_dir() and ((target / "runs").is_dir() or (target / "multiruns").is_dir()):
        pages = []
        for run in run_table(target)["run"]:
            if is_run_directory(target / run):
                pages += render_run(target / run)
        return [*pages, write_index(target)]
    pages = render_run(target)
    root = output_root(target)
    return [*pages, write_index(root)] if root is not None else pages


def publish_pages(run_dir: Path, output_dir: Path) -> None:
    """After a run ends: its page and the output directory's index, best effort (a finished run never fails here)."""
    try:
        render_run(run_dir)
        write_index(output_dir)
    except Exception as e:  # noqa: BLE001 (the results are written; a page is a convenience)
        log.warning(
            "explorer page not written for %s: %s (rebuild: python -m experiments.explore %s)", run_dir, e, run_dir
        )
