"""Local corpora (.txt, .jsonl, .parquet, or a folder of them), read file by file.

Each reader reports a bad file by its own path (a truncated parquet, a JSON line that does not parse, bytes that
are not UTF-8), which `datasets`' loaders did not: their errors named the folder at best ("An error occurred while
generating the dataset", "StopIteration"), and they left an Arrow copy of the corpus in the Hugging Face cache.
A .txt file holds one document per blank-line-separated paragraph (what `datasets`' `sample_by="paragraph"` read).
"""

from __future__ import annotations

import json
from pathlib import Path

from influence.errors import InfluenceError

LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_COLUMNS = ("text", "content", "document", "body")


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
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise InfluenceError(f"data file {f} line {i} is not JSON ({e}): fix or re-export it") from None
    return records


def _column(f: Path, columns: list[str], text_column: str | None) -> str:
    column = text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise InfluenceError(f"data file {f} has no text column (columns: {sorted(columns)}): set data.text_column")
    return column


def _json_texts(f: Path, text_column: str | None) -> list:
    records = _records(f)
    if not records:
        return []
    if not all(isinstance(r, dict) for r in records):
        raise InfluenceError(f"data file {f} holds JSON that is not one object per record: write one {{...}} per line")
    column = _column(f, sorted({k for r in records for k in r}), text_column)
    return [r.get(column) for r in records]


def _parquet_texts(f: Path, text_column: str | None) -> list:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        column = _column(f, pf.schema_arrow.names, text_column)
        return pf.read(columns=[column]).column(column).to_pylist()
    except InfluenceError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a truncated or foreign file
        raise InfluenceError(
            f"data file {f} is not a readable parquet file ({_first_line(e)}): write or download it again"
        ) from None


def load_local_texts(path: str, text_column: str | None = None) -> list[str]:
    """All non-empty documents under `path`, in file order; a file that cannot be read fails naming it."""
    texts = []
    for f in corpus_files(path):
        kind = LOADERS[f.suffix]
        docs = _paragraphs(f) if kind == "text" else (_json_texts if kind == "json" else _parquet_texts)(f, text_column)
        texts += [t for t in docs if isinstance(t, str) and t.strip()]
    if not texts:
        raise InfluenceError(f"data.path={path} holds no text: add documents to it")
    return texts
