"""Local corpora (.txt, .jsonl, .parquet, or a folder of them), read file by file.

Each reader reports a bad file by its own path (a truncated parquet, a JSON line that does not parse, bytes that
are not UTF-8), which `datasets`' loaders did not: their errors named the folder at best ("An error occurred while
generating the dataset", "StopIteration"), and they left an Arrow copy of the corpus in the Hugging Face cache.
A .txt file holds one document per blank-line-separated paragraph (what `datasets`' `sample_by="paragraph"` read).

Labels: every column of a .jsonl/.parquet record other than the text is carried, per document, into the training
rows' metadata (`load_local_documents`, then `chunk_meta` or `document_meta`); two columns play the roles the
studies group by, `category` and `language` (`data.category_column`, `data.language_column`). conf/data/local.yaml
says what a row that spans documents carries and how missing labels read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from influence.errors import InfluenceError

from .records import parse_jsonl

LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_COLUMNS = ("text", "content", "document", "body")
ROW_MODES = ("chunks", "documents")
#: the roles studies read from the metadata, each filled from a user column (`data.<role>_column`)
ROLES = ("category", "language")
#: the category of every row when the corpus has no category column, and of a record whose label is missing
NO_CATEGORY, UNLABELLED = "local", "unlabelled"
#: metadata columns the preparation writes itself, in order; a carried user column of one of these names is
#: renamed `doc_<name>` (a user's `id` becomes `doc_id`)
BUILT = (
    "id",
    "category",
    "language",
    "source",
    "doc",
    "doc_first",
    "doc_last",
    "doc_share",
    "offset",
    "n_tokens",
    "truncated",
)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def corpus_files(path: str) -> list[Path]:
    """The corpus files `data.path` names (the file, or every corpus file under the folder), all of one type.

    Cheap (no file is read), so the pipeline calls it before any work; a missing path, a folder without corpus
    files and a mixed folder fail in one line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InfluenceError(
            f"data.path={path} does not exist: point it at a .txt, .jsonl or .parquet file or a folder of them"
        )
    files = sorted(f for f in p.rglob("*") if f.suffix in LOADERS and f.is_file()) if p.is_dir() else [p]
    if not files or any(f.suffix not in LOADERS for f in files):
        raise InfluenceError(
            f"data.path={path} holds no .txt, .jsonl or .parquet file: convert the corpus to one of those"
        )
    kinds = {LOADERS[f.suffix] for f in files}
    if len(kinds) > 1:
        raise InfluenceError(f"data.path={path} mixes file types {sorted(kinds)}: keep one type per corpus folder")
    return files


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InfluenceError(f"data file {f} is not UTF-8 text (byte {e.start}): convert it to UTF-8") from None
    except OSError as e:
        raise InfluenceError(f"data file {f} cannot be read ({_first_line(e)})") from None


def _paragraphs(f: Path) -> list[str]:
    return [p for p in _read_text(f).split("\n\n") if p]


def _records(f: Path) -> list:
    """A JSON Lines file's records, or a .json file's array of records."""
    text = _read_text(f)
    if f.suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError as e:
            raise InfluenceError(f"data file {f} is not valid JSON ({e}): fix or re-export it") from None
    return parse_jsonl(text, f"data file {f}", "fix or re-export it")


def _column(f: Path, columns: list[str], text_column: str | None) -> str:
    column = text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise InfluenceError(f"data file {f} has no text column (columns: {sorted(columns)}): set data.text_column")
    return column


def _name(key: str, value, allow_off: bool) -> None:
    if value is None or (allow_off and value is False) or (isinstance(value, str) and value):
        return
    choices = "a column name, null (the default) or false (none)" if allow_off else "a column name or null"
    raise InfluenceError(f"data.{key}={value!r}: give {choices}")


@dataclass(frozen=True)
class LocalOptions:
    """How a local corpus becomes rows and labels (the `data=local` keys; conf/data/local.yaml explains each)."""

    text_column: str | None = None
    category_column: str | bool | None = None  # None: a `category` column if the file has one; False: none
    language_column: str | bool | None = None  # None: a `language` column if the file has one; False: none
    columns: tuple[str, ...] | None = None  # user columns carried (None: every column but the text)
    rows: str = "chunks"

    def __post_init__(self):
        if self.rows not in ROW_MODES:
            raise InfluenceError(
                f"data.rows={self.rows!r}: use chunks (the concatenated stream cut into full rows) or documents "
                "(one document per row, cut at data.seq_len)"
            )
        _name("text_column", self.text_column, False)
        for role in ROLES:
            _name(f"{role}_column", getattr(self, f"{role}_column"), True)
        if isinstance(self.category_column, str) and self.category_column == self.language_column:
            raise InfluenceError(
                f"data.category_column and data.language_column both name {self.category_column!r}: give each its own"
            )
        if self.columns is not None and not all(isinstance(c, str) and c for c in self.columns):
            raise InfluenceError(f"data.columns={list(self.columns)!r}: give a list of column names, or null for all")

    def key(self) -> dict:
        """The options set away from their defaults (a cache key that leaves the default corpus's unchanged)."""
        d = {"rows": self.rows, "columns": self.columns} | {f"{r}_column": getattr(self, f"{r}_column") for r in ROLES}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v != getattr(LocalOptions, k)}

    def role_source(self, role: str, names: list[str]) -> str | None:
        named = getattr(self, f"{role}_column")
        if named is None:
            return role if role in names else None
        return named or None

    def to_read(self, f: Path, names: list[str], text: str | None) -> dict[str, str]:
        """{file column: metadata column} of the columns read besides the text; a named column the file lacks fails."""
        named = [(f"{r}_column", getattr(self, f"{r}_column")) for r in ROLES] + [
            ("columns", c) for c in self.columns or ()
        ]
        for key, name in named:
            if isinstance(name, str) and name not in names:
                raise InfluenceError(
                    f"data file {f} has no column {name!r} (named by data.{key}; its columns: {sorted(names)}): "
                    "name one of its columns"
                )
        out = {}
        for role in ROLES:
            source = self.role_source(role, names)
            if source is not None and source == text:
                raise InfluenceError(
                    f"data.{role}_column={source} is the text column of data file {f}: name a label column"
                )
            if source is not None:
                out[source] = role
        for c in names if self.columns is None else self.columns:
            if c != text and c not in out:
                out[c] = f"doc_{c}" if c in BUILT else c
                if out[c] != c and out[c] in names:
                    raise InfluenceError(
                        f"data file {f} has columns {c!r} and {out[c]!r}: {c!r} is carried as {out[c]!r} ({c} is a "
                        "column the preparation writes): rename one"
                    )
        return out


def local_options(data: Mapping) -> LocalOptions:
    """The `data` block's local-corpus options, checked in one line before any file is read."""
    columns = data.get("columns")
    if columns is not None and (isinstance(columns, (str, bytes)) or not hasattr(columns, "__iter__")):
        raise InfluenceError(f"data.columns={columns!r}: give a list of column names, e.g. [topic,author], or null")
    return LocalOptions(
        text_column=data.get("text_column"),
        category_column=data.get("category_column"),
        language_column=data.get("language_column"),
        columns=None if columns is None else tuple(columns),
        rows=data.get("rows", "chunks"),
    )


def _json_file(f: Path, opts: LocalOptions) -> tuple[list, dict]:
    records = _records(f)
    if not records:
        return [], {}
    if not all(isinstance(r, dict) for r in records):
        raise InfluenceError(f"data file {f} holds JSON that is not one object per record: write one {{...}} per line")
    names = list(dict.fromkeys(k for r in records for k in r))
    column = _column(f, sorted(names), opts.text_column)
    read = opts.to_read(f, names, column)
    return [r.get(column) for r in records], {dst: [r.get(src) for r in records] for src, dst in read.items()}


def _parquet_file(f: Path, opts: LocalOptions) -> tuple[list, dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        column = _column(f, names, opts.text_column)
        read = opts.to_read(f, names, column)
        table = pf.read(columns=[column, *read])
        return table.column(column).to_pylist(), {dst: table.column(src).to_pylist() for src, dst in read.items()}
    except InfluenceError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a truncated or foreign file
        raise InfluenceError(
            f"data file {f} is not a readable parquet file ({_first_line(e)}): write or download it again"
        ) from None


def _text_file(f: Path, opts: LocalOptions) -> tuple[list, dict]:
    opts.to_read(f, [], None)  # a .txt file has no columns: one named for it fails here
    return _paragraphs(f), {}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _cell(v):
    """A user cell as a parquet-safe scalar: None for missing, lists and mappings as JSON text."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)


def _user_column(values: list) -> pd.Series:
    """One carried column: mixed types across records (a number here, a word there) become text."""
    cells = [_cell(v) for v in values]
    kinds = {type(v) for v in cells if v is not None}
    if len(kinds) > 1 and kinds != {int, float}:
        cells = [None if v is None else str(v) for v in cells]
    return pd.Series(cells, dtype=float if kinds == {int, float} else None)


@dataclass
class LocalDocuments:
    """The corpus's documents in file order, and one label row per document: source (its file), category,
    language (when a file has one), then the carried user columns."""

    texts: list[str]
    labels: pd.DataFrame


def _labels(frames: list[pd.DataFrame]) -> pd.DataFrame:
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out = {"source": raw["source"].astype(str)}
    cat = raw["category"] if "category" in raw else None
    out["category"] = (
        NO_CATEGORY if cat is None else [UNLABELLED if _missing(v) else str(_cell(v)).strip() for v in cat]
    )
    if "language" in raw:
        out["language"] = [None if _missing(v) else str(_cell(v)).strip().lower() for v in raw["language"]]
    labels = pd.DataFrame(out, index=raw.index)
    user = {c: _user_column(raw[c].tolist()) for c in raw.columns if c not in ("source", *ROLES)}
    return pd.concat([labels, pd.DataFrame(user, index=raw.index)], axis=1) if user else labels


def load_local_documents(path: str, opts: LocalOptions | None = None) -> LocalDocuments:
    """All non-empty documents under `path` with their labels; a file that cannot be read, or lacks a column the
    options name, fails naming it."""
    opts = opts or LocalOptions()
    texts, frames = [], []
    for f in corpus_files(path):
        kind = LOADERS[f.suffix]
        docs, cols = {"text": _text_file, "json": _json_file, "parquet": _parquet_file}[kind](f, opts)
        keep = [i for i, t in enumerate(docs) if isinstance(t, str) and t.strip()]
        texts += [docs[i] for i in keep]
        frame = {"source": [str(f)] * len(keep)} | {c: [v[i] for i in keep] for c, v in cols.items()}
        frames.append(pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in frame.items()}))
    if not texts:
        raise InfluenceError(f"data.path={path} holds no text: add documents to it")
    return LocalDocuments(texts, _labels(frames))


def load_local_texts(path: str, text_column: str | None = None) -> list[str]:
    """All non-empty documents under `path`, in file order; a file that cannot be read fails naming it."""
    only_text = LocalOptions(text_column=text_column, category_column=False, language_column=False, columns=())
    return load_local_documents(path, only_text).texts


def _meta(labels: pd.DataFrame, doc, first, last, share, offset, n_tokens, truncated) -> pd.DataFrame:
    """The training rows' metadata (BUILT columns, then the user's) from each row's document and span."""
    picked = labels.iloc[np.asarray(doc, dtype=np.int64)].reset_index(drop=True)
    built = {
        "id": np.arange(len(picked)),
        "category": picked["category"],
        **({"language": picked["language"]} if "language" in picked else {}),
        "source": picked["source"],
        "doc": doc,
        "doc_first": first,
        "doc_last": last,
        "doc_share": share,
        "offset": offset,
        "n_tokens": n_tokens,
        "truncated": truncated,
    }
    user = picked.drop(columns=[c for c in ("category", "language", "source") if c in picked])
    return pd.concat([pd.DataFrame(built), user], axis=1)


def _starts(lengths) -> np.ndarray:
    """Each document's offset in the EOS-separated stream (a document of n tokens takes n + 1)."""
    span = np.asarray(lengths, dtype=np.int64) + 1
    return np.cumsum(span) - span


def document_meta(labels: pd.DataFrame, lengths: list[int], rows: list[list[int]], cut: list[bool]) -> pd.DataFrame:
    """Metadata of `data.rows=documents` rows: row i is document i (`rows`, `cut` from `document_rows`)."""
    n = len(rows)
    doc = np.arange(n)
    return _meta(labels, doc, doc, doc, np.ones(n), _starts(lengths)[:n], [len(r) for r in rows], list(cut[:n]))


def chunk_meta(labels: pd.DataFrame, lengths: list[int], seq_len: int, n_rows: int) -> pd.DataFrame:
    """Metadata of the first `n_rows` `data.rows=chunks` rows (the stream cut every `seq_len` tokens): each row
    carries the labels of the document holding most of its tokens (the earliest on a tie), `doc_share` of them,
    and the first and last document it spans."""
    starts = _starts(lengths)
    ends = starts + np.asarray(lengths, dtype=np.int64) + 1
    end = n_rows * seq_len
    docs = np.flatnonzero(starts < end)
    lo, hi = starts[docs] // seq_len, np.minimum((ends[docs] - 1) // seq_len, n_rows - 1)
    count = hi - lo + 1
    pair_doc = np.repeat(docs, count)
    pair_row = np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    overlap = np.minimum(ends[pair_doc], (pair_row + 1) * seq_len) - np.maximum(starts[pair_doc], pair_row * seq_len)
    pairs = pd.DataFrame({"row": pair_row, "doc": pair_doc, "overlap": overlap})
    span = pairs.groupby("row")["doc"].agg(["min", "max"])
    best = pairs.sort_values(["row", "overlap", "doc"], ascending=[True, False, True]).drop_duplicates("row")
    best = best.set_index("row").loc[np.arange(n_rows)]
    return _meta(
        labels,
        best["doc"].to_numpy(),
        span["min"].to_numpy(),
        span["max"].to_numpy(),
        best["overlap"].to_numpy() / seq_len,
        np.arange(n_rows) * seq_len,
        seq_len,
        False,
    )
