"""A researcher's own records from a file: queries (`queries.path`) and candidate texts (`candidates.path`).

One reader for both, so every such file takes the same formats and fails the same way: one line naming the
file (and the line or record) and what to fix, checked before any work. JSON Lines, a JSON array, YAML (a list,
or a mapping with an `items:` list), or, for texts only, plain text with one record per blank-line-separated
paragraph.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from influence.errors import InfluenceError

FORMATS = (".jsonl", ".json", ".yaml", ".yml")


def _text(path: Path, key: str) -> str:
    if not path.is_file():
        raise InfluenceError(f"{key}={path} does not exist: point it at a {'/'.join(FORMATS)} file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InfluenceError(f"{key}={path} is not UTF-8 text (byte {e.start}): convert it to UTF-8") from None
    except OSError as e:
        raise InfluenceError(f"{key}={path} cannot be read ({e.strerror or type(e).__name__})") from None


def parse_jsonl(text: str, where: str, fix: str) -> list:
    """The records of JSON Lines `text`; a line that does not parse fails as "<where> line <i> is not JSON (...):
    <fix>" (the one reader of JSON Lines: queries, candidates and local corpora)."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise InfluenceError(f"{where} line {i} is not JSON ({e}): {fix}") from None
    return out


def _structured(text: str, path: Path, key: str) -> list:
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InfluenceError(f"{key}={path} does not parse ({first}): fix or re-export it") from None
    if isinstance(data, dict) and "items" in data:
        data = data["items"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise InfluenceError(f"{key}={path} holds a {type(data).__name__}: write a list of records (or items: [...])")
    return data


def read_records(path: str, key: str, paragraphs: bool = False) -> list:
    """The records of the file `path` (the option `key` named it), in file order.

    `paragraphs`: a .txt file is read too, each blank-line-separated paragraph a record {"text": ...}."""
    p = Path(path).expanduser()
    if p.suffix not in FORMATS + ((".txt",) if paragraphs else ()):
        kinds = "/".join(FORMATS + ((".txt",) if paragraphs else ()))
        raise InfluenceError(f"{key}={path}: unknown file type {p.suffix or '(none)'!r}: use a {kinds} file")
    text = _text(p, key)
    if p.suffix == ".txt":
        return [{"text": t.strip("\n")} for t in text.split("\n\n") if t.strip()]
    records = (
        parse_jsonl(text, f"{key}={path}", "write one {...} per line")
        if p.suffix == ".jsonl"
        else _structured(text, p, key)
    )
    if not records:
        raise InfluenceError(f"{key}={path} holds no record: add some, or unset {key}")
    return records


def candidate_records(path: str, text_column: str = "text") -> list[dict]:
    """`candidates.path`'s records, each {name, text, labels...}: a bare string is a text; a record without a name is
    named by its position (`candidate_<i>`); names are unique; every label is a scalar (it becomes a table column)."""
    out, seen = [], set()
    for i, r in enumerate(read_records(path, "candidates.path", paragraphs=True)):
        r = {text_column: r} if isinstance(r, str) else r
        where = f"candidates.path={path} record {i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get(text_column), str) or not r[text_column].strip():
            raise InfluenceError(f"{where} has no text: give each record a non-empty {text_column!r} string")
        name = str(r.get("name", f"candidate_{i}"))
        if name in seen:
            raise InfluenceError(f"{where}: another candidate is named {name!r}: give each its own name")
        seen.add(name)
        labels = {k: v for k, v in r.items() if k not in (text_column, "name")}
        nested = sorted(k for k, v in labels.items() if isinstance(v, (dict, list)))
        if nested:
            raise InfluenceError(f"{where}: labels {nested} are not scalars: give each label one value")
        out.append({"name": name, "text": r[text_column], **labels})
    return out
