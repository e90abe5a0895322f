"""Local corpora (.txt, .jsonl, .parquet, or a folder of them) read through `datasets`' local loaders."""

from __future__ import annotations

from pathlib import Path

from influence.errors import InfluenceError

LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_COLUMNS = ("text", "content", "document", "body")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in LOADERS and p.is_file())
    return [path]


def load_local_texts(path: str, text_column: str | None = None) -> list[str]:
    """All non-empty documents under `path`, in file order."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InfluenceError(
            f"data.path={path} does not exist: point it at a .txt, .jsonl or .parquet file or a folder of them"
        )
    files = _files(p)
    if not files or any(f.suffix not in LOADERS for f in files):
        raise InfluenceError(
            f"data.path={path} holds no .txt, .jsonl or .parquet file: convert the corpus to one of those"
        )
    import datasets

    datasets.disable_progress_bars()
    kinds = {LOADERS[f.suffix] for f in files}
    if len(kinds) > 1:
        raise InfluenceError(f"data.path={path} mixes file types {sorted(kinds)}: keep one type per corpus folder")
    kind = kinds.pop()
    kwargs = {"sample_by": "paragraph"} if kind == "text" else {}
    try:
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as e:  # the loaders raise many types for malformed files
        raise InfluenceError(
            f"data.path={path} could not be read as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    column = text_column or next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    if column is None or column not in ds.column_names:
        raise InfluenceError(f"data.path={path} has no text column (columns: {ds.column_names}): set data.text_column")
    texts = [t for t in ds[column] if isinstance(t, str) and t.strip()]
    if not texts:
        raise InfluenceError(f"data.path={path} holds no text: add documents to it")
    return texts
