"""A flat token stream on disk seen as fixed-length training rows, without copying it into memory.

Why: the in-memory training set (`Prepared.train_rows` as lists, padded into (N, T) int64 tensors, every text
decoded up front) costs about 8 bytes per token twice over plus the texts; a Pile shard has billions of tokens.
Here the rows are a zero-copy (N, T) view of the memory-mapped stream (`torch.from_numpy` over the map, in the
shard's own dtype, e.g. uint16; `influence.batching.iter_batches` widens each batch to int64), the attention mask
is a ones tensor expanded to (N, T) (no storage: packed rows have no padding), texts are decoded when one is asked
for, and the metadata is a compact frame of a few bytes per row. The rows are the stream cut every T tokens,
across document boundaries (as GPT-NeoX packs its training samples); the shard's own end-of-document tokens stay
where the tokenizer put them, and the last partial row is left out.

`PackedRows` is also a `Sequence` of rows (each a list of ints), so it can stand where `Prepared.train_rows`'s
lists stood for code that reads a few rows; `embedded.world.training_set` recognises it and builds the streamed
`TrainingSet` from it instead of padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from influence.errors import InfluenceError

#: rows per block when per-row metadata is computed
BLOCK_ROWS = 1 << 18
#: tokens checked at each end of the stream against the tokenizer's vocabulary (a shard tokenized with another
#: tokenizer is found at once; the whole stream is not read)
SAMPLE_TOKENS = 1 << 20


@dataclass
class TokenStream:
    """A corpus as one flat 1-D array of token ids (usually a memory map), with what the metadata needs."""

    tokens: np.ndarray
    source: str  # what data.path named (kept in the metadata's `source` column)
    key: str  # a cheap content identity (paths, sizes, modification times): part of the world's fingerprint
    document_of: Callable[[np.ndarray], np.ndarray] | None = None  # token offsets -> document index


def _smallest_int(high: int) -> np.dtype:
    return np.dtype(np.int32 if high < 2**31 else np.int64)


class LazyTexts(Sequence):
    """The decoded text of each row, decoded when asked for (`texts[i]`), never all held at once."""

    def __init__(self, rows: PackedRows, tokenizer):
        self.rows, self.tokenizer = rows, tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.tokenizer.decode(self.rows[i])


class PackedRows(Sequence):
    """The first `n` full rows of `seq_len` tokens of a stream: an (N, T) tensor view, a ones mask, row metadata."""

    def __init__(self, stream: TokenStream, seq_len: int, max_rows: int | None = None):
        n = len(stream.tokens) // seq_len
        if n == 0:
            raise InfluenceError(
                f"data.path={stream.source} holds {len(stream.tokens)} tokens, fewer than one row of "
                f"data.seq_len={seq_len}: lower data.seq_len or use a larger shard"
            )
        self.stream, self.seq_len = stream, seq_len
        self.n = n if max_rows is None else min(n, int(max_rows))
        view = stream.tokens[: self.n * seq_len].reshape(self.n, seq_len)  # no copy: a view of the memory map
        self.input_ids = torch.from_numpy(view)
        self.attention_mask = torch.ones((1, 1), dtype=torch.long).expand(self.n, seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"row {i} out of range for {self.n} rows")
        return self.input_ids[i].tolist()

    def check_vocabulary(self, vocab_size: int) -> None:
        """Token ids at both ends of the stream are below `vocab_size` (negative ones too are refused)."""
        tokens, k = self.stream.tokens, min(SAMPLE_TOKENS, len(self.stream.tokens))
        for start in sorted({0, len(tokens) - k}):
            block = np.asarray(tokens[start : start + k])
            low, high = int(block.min()), int(block.max())
            if low < 0 or high >= vocab_size:
                bad = start + int(np.argmax((block < 0) | (block >= vocab_size)))
                raise InfluenceError(
                    f"data.path={self.stream.source}: token id {int(tokens[bad])} at offset {bad} is outside the "
                    f"tokenizer's {vocab_size} ids: the corpus was tokenized with another tokenizer; use that "
                    "model's checkpoint (model.path)"
                )

    def texts(self, tokenizer) -> LazyTexts:
        return LazyTexts(self, tokenizer)

    def meta(self, category: str = "shard") -> pd.DataFrame:
        """One row per training row: id, category, source, offset (its first token's offset in the stream),
        document (the document holding that token, when the source has documents) and n_tokens; int32 where
        the values fit, categories as pandas categoricals (about 20 bytes a row in all)."""
        n, t = self.n, self.seq_len
        offsets = np.arange(n, dtype=np.int64) * t
        cols = {
            "id": np.arange(n, dtype=_smallest_int(n)),
            "category": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [category]),
            "source": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [self.stream.source]),
            "offset": offsets,
        }
        if self.stream.document_of is not None:
            docs = np.empty(n, dtype=np.int64)
            for s in range(0, n, BLOCK_ROWS):
                docs[s : s + BLOCK_ROWS] = self.stream.document_of(offsets[s : s + BLOCK_ROWS])
            cols["document"] = docs.astype(_smallest_int(int(docs[-1]) + 1), copy=False)
        cols["n_tokens"] = np.full(n, t, dtype=np.int32)
        return pd.DataFrame(cols)
