"""The GPT-NeoX / Megatron `MMapIndexedDataset` token shard (`<prefix>.bin` + `<prefix>.idx`): read in place, and
written document by document.

This is the format the Pile for Pythia ships in (`pile_0.87_deduped_text_document.{bin,idx}`): the `.bin` is
every document's token ids back to back in one integer dtype, and the `.idx` says where each starts:

    magic b"MMIDIDX\\x00\\x00" | version <Q (1) | dtype code <B | sequence count S <Q | document count D <Q
    | sizes int32[S] (tokens per sequence) | pointers int64[S] (byte offset of each sequence in the .bin)
    | document indices int64[D] (the sequence each document starts at: 0 ... S, so D = documents + 1)
    [| modes int8[S]: multimodal shards only, ignored here]

Why it is read this way: a Pile shard is hundreds of gigabytes, so nothing here reads it whole. The index arrays
and the token stream are numpy memory maps (the operating system pages them in as rows are read and can drop them
again); the checks made when a shard is opened read only the header and the two ends of the index, and compare
file sizes, so a missing `.idx`, a truncated file, a float dtype code or an empty shard fails in one line before
any model is loaded. Sequences are assumed stored back to back (Megatron's builders write them so); that the last
one ends exactly at the end of the `.bin` is checked.

The writer keeps memory flat too: it appends tokens to the `.bin` as documents arrive, spills their sizes to a
side file, and writes the `.idx` last (computing pointers block by block), so an interrupted write leaves a
`.bin` without an `.idx`, which the reader refuses by name.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from influence.errors import InfluenceError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8  # 34
#: Megatron's dtype codes that hold token ids (6 and 7 are float64/float32 in Megatron-core, float/double in older
#: fairseq-derived readers: never token ids)
TOKEN_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
FLOAT_CODES = {6: "float64", 7: "float32"}
CODES = {np.dtype(v): k for k, v in TOKEN_DTYPES.items()}
#: tokens per block when the index is computed, checked or copied (memory stays at a few megabytes)
BLOCK = 1 << 20


def shard_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """(`.bin`, `.idx`) of a shard named by its prefix, or by either file."""
    p = Path(prefix).expanduser()
    if p.suffix in (".bin", ".idx"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".bin"), p.with_name(p.name + ".idx")


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype a shard of this vocabulary is written in: uint16 below 65,500 ids (Megatron's rule), else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


@dataclass
class ShardHeader:
    dtype: np.dtype
    sequences: int
    documents: int  # entries of the document index: documents + 1


def read_header(idx: Path) -> ShardHeader:
    """The `.idx` header, with the file's size checked against it; one line naming the file when it is not one."""
    try:
        with open(idx, "rb") as f:
            head = f.read(HEADER_BYTES)
        size = idx.stat().st_size
    except OSError as e:
        raise InfluenceError(f"shard index {idx} cannot be read ({e.strerror or e}): check the path") from None
    if len(head) < HEADER_BYTES or head[: len(MAGIC)] != MAGIC:
        what = "is truncated" if MAGIC.startswith(head[: len(MAGIC)]) else f"does not start with {MAGIC!r}"
        raise InfluenceError(f"shard index {idx} {what}: it is no Megatron .idx file; write it again (write_shard)")
    version, code, seqs, docs = struct.unpack("<QBQQ", head[len(MAGIC) :])
    if version != VERSION:
        raise InfluenceError(
            f"shard index {idx} has version {version}, not {VERSION}: rebuild it with Megatron's tools"
        )
    if code not in TOKEN_DTYPES:
        kind = f"{FLOAT_CODES[code]}, not token ids" if code in FLOAT_CODES else "unknown"
        raise InfluenceError(
            f"shard index {idx} has dtype code {code} ({kind}): tokens need an integer code "
            f"({', '.join(f'{k}={np.dtype(v).name}' for k, v in TOKEN_DTYPES.items())}); tokenize it again"
        )
    expected = HEADER_BYTES + 12 * seqs + 8 * docs
    if size not in (expected, expected + seqs):  # + seqs: a multimodal shard's int8 modes
        why = "truncated" if size < expected else "longer than its header says"
        raise InfluenceError(
            f"shard index {idx} is {why} ({size} bytes; {seqs} sequences and {docs} document entries need "
            f"{expected}): copy or write it again"
        )
    if seqs == 0:
        raise InfluenceError(f"shard index {idx} lists no sequence: the shard is empty; point data.path at another")
    return ShardHeader(np.dtype(TOKEN_DTYPES[code]), int(seqs), int(docs))


class MegatronShard:
    """An opened shard: the flat token stream and its index, all memory-mapped, checked for consistency.

    `tokens` is a read-only-on-disk (copy-on-write) memory map of every token; `document_of(offsets)` maps token
    offsets to the document holding them (binary search on the memory-mapped pointers)."""

    def __init__(self, prefix: str | os.PathLike):
        self.bin, self.idx = shard_paths(prefix)
        if not self.idx.exists() and not self.bin.exists():
            raise InfluenceError(
                f"shard {self.bin.with_suffix('')} does not exist (no {self.bin.name}, no {self.idx.name})"
            )
        if not self.idx.is_file():
            beside = " (its .bin is there)" if self.bin.is_file() else ""
            raise InfluenceError(
                f"shard {self.idx.with_suffix('')}: no index {self.idx}{beside}: a Megatron shard needs its .idx "
                "beside the .bin; copy it there (or write the shard again with write_shard)"
            )
        if not self.bin.is_file():
            raise InfluenceError(f"shard {self.bin.with_suffix('')}: no token file {self.bin} beside its .idx: copy it")
        h = read_header(self.idx)
        self.dtype, self.sequences = h.dtype, h.sequences
        item = self.dtype.itemsize
        self.sizes = np.memmap(self.idx, np.int32, "r", HEADER_BYTES, (h.sequences,))
        self.pointers = np.memmap(self.idx, np.int64, "r", HEADER_BYTES + 4 * h.sequences, (h.sequences,))
        self.doc_index = np.memmap(self.idx, np.int64, "r", HEADER_BYTES + 12 * h.sequences, (h.documents,))
        end = int(self.pointers[-1]) + int(self.sizes[-1]) * item
        size = self.bin.stat().st_size
        if int(self.pointers[0]) != 0 or end != size or size % item:
            why = "truncated" if size < end else "not the one its index describes"
            raise InfluenceError(
                f"shard {self.bin} is {why} ({size} bytes; its index ends the last sequence at byte {end}): "
                "copy the .bin and .idx again, as a pair"
            )
        if h.documents < 2 or int(self.doc_index[0]) != 0 or int(self.doc_index[-1]) != h.sequences:
            raise InfluenceError(
                f"shard index {self.idx}: its document index does not run from sequence 0 to {h.sequences}: "
                "the file is corrupt; write it again"
            )
        self.n_tokens = size // item
        self.documents = h.documents - 1
        self.tokens = np.memmap(self.bin, self.dtype, "c", 0, (self.n_tokens,))

    def document_of(self, offsets: np.ndarray) -> np.ndarray:
        """The document (0 ... documents-1) holding each token offset (sorted or not), block by block."""
        out = np.empty(len(offsets), dtype=np.int64)
        item = self.dtype.itemsize
        for s in range(0, len(offsets), BLOCK):
            byte = np.asarray(offsets[s : s + BLOCK], dtype=np.int64) * item
            seq = np.searchsorted(self.pointers, byte, side="right") - 1
            out[s : s + BLOCK] = np.searchsorted(self.doc_index, seq, side="right") - 1
        return out


class ShardWriter:
    """Write a shard document by document (`add`), its memory flat in the corpus size; `close` writes the `.idx`.

    Used as a context manager; on an exception the partial files are removed."""

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODES:
            raise InfluenceError(f"cannot write tokens as {self.dtype}: use one of {sorted(str(d) for d in CODES)}")
        self.bin, self.idx = shard_paths(prefix)
        self.bin.parent.mkdir(parents=True, exist_ok=True)
        self.idx.unlink(missing_ok=True)  # an old index must never describe the new tokens
        self._sizes_path = self.idx.with_name(self.idx.name + ".sizes.tmp")
        self._bin, self._sizes = open(self.bin, "wb"), open(self._sizes_path, "wb")
        self.sequences = 0
        self.tokens = 0

    def add(self, tokens, lengths=None) -> None:
        """Append one document (`tokens`), or several concatenated in `tokens` with their `lengths`."""
        arr = np.asarray(tokens)
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1):
            raise InfluenceError(f"shard {self.bin}: a document must be a 1-D array of integer token ids")
        info = np.iinfo(self.dtype)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise InfluenceError(
                f"shard {self.bin}: token ids {int(arr.min())}..{int(arr.max())} do not fit {self.dtype}: "
                "write the shard with a wider dtype"
            )
        sizes = np.asarray([arr.size] if lengths is None else lengths, dtype=np.int64)
        if int(sizes.sum()) != arr.size or (sizes.size and int(sizes.min()) < 0):
            raise InfluenceError(f"shard {self.bin}: lengths sum to {int(sizes.sum())} but {arr.size} tokens came")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes())
        self._sizes.write(sizes.astype(np.int32).tobytes())
        self.sequences += sizes.size
        self.tokens += arr.size

    def close(self) -> None:
        """Finish the `.bin` and write the `.idx` (header, sizes, pointers, document index), block by block."""
        self._bin.close(), self._sizes.close()
        if self.sequences == 0:
            self._discard()
            raise InfluenceError(f"shard {self.bin}: no document was written; a shard needs at least one")
        with open(self.idx, "wb") as out:
            out.write(MAGIC + struct.pack("<QBQQ", VERSION, CODES[self.dtype], self.sequences, self.sequences + 1))
            sizes = np.memmap(self._sizes_path, np.int32, "r", 0, (self.sequences,))
            for s in range(0, self.sequences, BLOCK):
                out.write(np.ascontiguousarray(sizes[s : s + BLOCK]).tobytes())
            start = 0
            for s in range(0, self.sequences, BLOCK):
                block = np.asarray(sizes[s : s + BLOCK], dtype=np.int64) * self.dtype.itemsize
                ends = np.cumsum(block) + start
                out.write((ends - block).tobytes())
                start = int(ends[-1])
            for s in range(0, self.sequences + 1, BLOCK):
                out.write(np.arange(s, min(s + BLOCK, self.sequences + 1), dtype=np.int64).tobytes())
            del sizes
        self._sizes_path.unlink(missing_ok=True)

    def _discard(self) -> None:
        for f in (self._bin, self._sizes):
            f.close()
        for p in (self.bin, self.idx, self._sizes_path):
            p.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self._discard()


def write_shard(prefix: str | os.PathLike, documents: Iterable, vocab_size: int | None = None, dtype=None) -> Path:
    """Write `documents` (each a sequence of token ids) as a shard; the dtype from `vocab_size` when not given.

    Returns the prefix. For a corpus that does not fit in memory, pass a generator (or use `ShardWriter`)."""
    if dtype is None:
        dtype = token_dtype(vocab_size) if vocab_size is not None else np.int32
    with ShardWriter(prefix, dtype) as w:
        for doc in documents:
            w.add(np.asarray(doc, dtype=np.int64))
    return shard_paths(prefix)[0].with_suffix("")
