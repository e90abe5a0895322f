"""From texts to token rows: one row per document, or a stream chunked into fixed-length rows,
and the packing of whole documents into dense training batches."""

from __future__ import annotations

import random

import numpy as np
import torch

from influence.errors import InfluenceError


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (batched through the fast tokenizer, no special tokens)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def document_rows(ids: list[list[int]], eos_id: int, seq_len: int) -> tuple[list[list[int]], list[bool]]:
    """Each document followed by EOS, cut to `seq_len`; also says which documents were cut."""
    rows, cut = [], []
    for r in ids:
        row = list(r) + [eos_id]
        cut.append(len(row) > seq_len)
        rows.append(row[:seq_len])
    return rows, cut


def chunk_stream(ids: list[list[int]], eos_id: int, seq_len: int) -> tuple[list[list[int]], list[int]]:
    """Concatenate documents (EOS-separated) and cut into full rows of `seq_len`; returns rows and start offsets."""
    stream = np.fromiter((t for r in ids for t in (*r, eos_id)), dtype=np.int64)
    n = len(stream) // seq_len
    if n == 0:
        raise InfluenceError(
            f"corpus has {len(stream)} tokens, fewer than one sequence of data.seq_len={seq_len}: add text or lower data.seq_len"
        )
    return stream[: n * seq_len].reshape(n, seq_len).tolist(), [i * seq_len for i in range(n)]


def pad(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows into (input_ids, attention_mask)."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pack(rows: list[list[int]], seq_len: int, rng: random.Random) -> list[list[list[int]]]:
    """Best-fit-decreasing packing of whole rows into bins of at most `seq_len` tokens.

    Every bin starts at a document start (as queries and scanned sequences do), and nearly no
    space is lost to padding. Bins and their contents are shuffled with `rng`.
    """
    open_bins: list[list[int]] = [[] for _ in range(seq_len + 1)]  # free space -> bin indices
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(rows)), key=lambda k: -len(rows[k])):
        n = len(rows[i])
        cap = next((c for c in range(n, seq_len + 1) if open_bins[c]), None)
        if cap is None:
            bins.append([i])
            free.append(seq_len - n)
            open_bins[seq_len - n].append(len(bins) - 1)
        else:
            b = open_bins[cap].pop()
            bins[b].append(i)
            free[b] = cap - n
            open_bins[cap - n].append(b)
    rng.shuffle(bins)
    packed = []
    for b in bins:
        rng.shuffle(b)
        packed.append([rows[i] for i in b])
    return packed


def packed_tensors(
    rows: list[list[int]], seq_len: int, pad_id: int, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (input_ids, loss_mask) of shape (bins, seq_len); loss_mask is 0 only on padding."""
    bins = pack(rows, seq_len, rng)
    flat = [[t for r in b for t in r] for b in bins]
    return pad(flat, pad_id, seq_len)
