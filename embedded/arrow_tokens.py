"""Pre-tokenized Arrow (`datasets.save_to_disk`) and parquet corpora, packed once, batch by batch, into a token
shard that is then memory-mapped like any other.

Why a conversion and not a view: the training set is one (N, T) tensor, and neither format keeps a column's
token ids in one contiguous buffer. `datasets` memory-maps its Arrow files, but a list column is split into record
batches (1,000 rows by default), each with its own values buffer; parquet is compressed and cannot be mapped at
all. So the `input_ids` column is streamed through once (`Dataset.iter` over the memory-mapped table, or
`ParquetFile.iter_batches` row group by row group: memory bounded by a batch) into `tokens.bin`/`tokens.idx`
(`embedded.megatron_shards`), one document per source row, in the narrowest dtype the tokenizer's vocabulary
allows (uint16 for a 50k vocabulary: a quarter of Arrow's int64 lists). The caller keeps the shard in a directory
keyed by the source files' paths, sizes and modification times, so a run reuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from influence.errors import InfluenceError

from .megatron_shards import ShardWriter, token_dtype

#: source rows per batch while converting
BATCH_ROWS = 4096


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def is_arrow_dataset(path: Path) -> bool:
    """A folder `datasets.save_to_disk` wrote (one split, or a DatasetDict of splits)."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_info.json", "dataset_dict.json"))


def parquet_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.parquet")) if path.is_dir() else ([path] if path.suffix == ".parquet" else [])


def _column_arrays(table, column: str, where: str) -> list:
    if column not in table.column_names:
        raise InfluenceError(f"{where} has no column {column!r} (columns: {table.column_names}): set data.column")
    col = table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        hint = " (text: tokenize it, or use data=local)" if text else ""
        raise InfluenceError(f"{where}: column {column!r} holds {col.type}, not lists of token ids{hint}")
    if not pa.types.is_integer(col.type.value_type):
        raise InfluenceError(f"{where}: column {column!r} holds lists of {col.type.value_type}, not integer token ids")
    return col.chunks


def _dataset_batches(path: Path, column: str) -> Iterator:
    import datasets  # imported here: a second or two, paid only by Arrow corpora

    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise InfluenceError(f"data.path={path} holds the splits {splits}: point data.path at one of them")
    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped: nothing is read until a batch is
    except Exception as e:  # noqa: BLE001 - datasets raises several types for a folder it cannot read
        raise InfluenceError(f"data.path={path} is not a readable datasets folder ({_first_line(e)})") from None
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        yield from _column_arrays(table, column, f"data.path={path}")


def _parquet_batches(files: list[Path], column: str) -> Iterator:
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if column not in names:
                raise InfluenceError(f"data file {f} has no column {column!r} (columns: {names}): set data.column")
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
                yield from _column_arrays(pa.Table.from_batches([batch]), column, f"data file {f}")
        except InfluenceError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a truncated or foreign file
            raise InfluenceError(f"data file {f} is not a readable parquet file ({_first_line(e)})") from None


def source_files(path: Path) -> list[Path]:
    """The files an Arrow or parquet source is made of (for its cache key)."""
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def convert(path: Path, prefix: Path, column: str, vocab_size: int) -> int:
    """Stream `column` of the dataset or parquet file(s) at `path` into the shard `prefix`; returns its rows.

    Each source row becomes one document; a null row, a negative id or one past `vocab_size` fails naming it."""
    batches = (
        _dataset_batches(path, column) if is_arrow_dataset(path) else _parquet_batches(parquet_files(path), column)
    )
    rows = 0
    with ShardWriter(prefix, token_dtype(vocab_size)) as writer:
        for arr in batches:
            if arr.null_count:
                raise InfluenceError(
                    f"data.path={path}: {arr.null_count} row(s) of {column!r} are null near row {rows}"
                )
            values = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
            if values.size and (int(values.min()) < 0 or int(values.max()) >= vocab_size):
                bad = int(values.max()) if int(values.max()) >= vocab_size else int(values.min())
                raise InfluenceError(
                    f"data.path={path}: token id {bad} near row {rows} is outside the tokenizer's {vocab_size} ids: "
                    "the corpus was tokenized with another tokenizer; use that model's checkpoint (model.path)"
                )
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
            writer.add(values, lengths)
            rows += len(arr)
    return rows
