"""Training data as a dict of tensors sharing the first dimension, iterated in index-carrying batches.

The sequence index travels with each batch: it keys the sampled labels and names results.

The tensors may be views of data on disk (a memory-mapped token shard, in its own narrow dtype, with an expanded
ones mask of no storage): nothing here materializes more than a block of rows. Batches of narrow integer dtypes are
widened to int64 (`widen`), lengths are summed block by block (`by_length`), and `rows_fingerprint` hashes the rows
block by block with the same digest `fingerprint.tensors_fingerprint` gives for the whole tensors at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from .errors import InfluenceError

#: rows per block when lengths are summed or rows hashed
BLOCK_ROWS = 4096
#: integer dtypes a batch is widened from: token ids stored narrow on disk (uint8 and bool stay: masks)
NARROW_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.uint16, torch.uint32)


def num_rows(data: dict[str, torch.Tensor]) -> int:
    if not data:
        raise InfluenceError(
            "training data is empty: pass a dict of tensors such as {'input_ids': ..., 'attention_mask': ...}"
        )
    sizes = {k: v.shape[0] for k, v in data.items()}
    if len(set(sizes.values())) != 1:
        raise InfluenceError(f"training data tensors disagree on their number of rows: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InfluenceError("training data has no rows")
    return n


def sample_indices(n: int, max_rows: int | None, seed: int) -> torch.Tensor:
    """All rows, or a fixed random subset of `max_rows` of them (sorted, reproducible from the seed)."""
    if max_rows is None or max_rows >= n:
        return torch.arange(n)
    if max_rows <= 0:
        raise InfluenceError(f"max_sequences must be positive, got {max_rows}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_rows].sort().values


def by_length(data: dict[str, torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
    """`indices` reordered by real sequence length (stable), so batches of similar lengths waste little padding.

    A mask with no storage along both axes (packed rows: one ones row expanded) has every row alike: the order is
    kept without a read; any other is summed a block of rows at a time."""
    mask = data.get("attention_mask")
    if mask is None:
        return indices
    if len(indices) == 0 or (mask.dim() == 2 and mask.stride() == (0, 0)):
        return indices
    lengths = torch.cat([mask[indices[s : s + BLOCK_ROWS]].sum(1) for s in range(0, len(indices), BLOCK_ROWS)])
    return indices[torch.argsort(lengths, stable=True)]


def widen(t: torch.Tensor) -> torch.Tensor:
    """A batch of narrow integers (token ids stored as uint16 or int32) as int64, the dtype models index with."""
    return t.long() if t.dtype in NARROW_INTEGERS else t


def _hash_rows(h, t: torch.Tensor, rows: torch.Tensor | None) -> None:
    """Feed `h` what `fingerprint.tensors_fingerprint` feeds for `t[rows]` (or `t`), reading a block of rows at a
    time: the header (shape, dtype) and then the bytes, row-major (blake2b is incremental, so the digest matches)."""
    n = t.shape[0] if rows is None else len(rows)
    shape = (n, *t.shape[1:]) if t.dim() else tuple(t.shape)
    h.update(str((shape, str(t.dtype))).encode())
    if t.dim() == 0:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    for s in range(0, n, BLOCK_ROWS):
        block = t[s : s + BLOCK_ROWS] if rows is None else t[rows[s : s + BLOCK_ROWS]]
        block = block.detach().cpu().contiguous()
        if block.numel():
            h.update(block.reshape(-1).view(torch.uint8).numpy().data)


def rows_fingerprint(data: dict[str, torch.Tensor], indices: torch.Tensor | None = None) -> str:
    """The content hash of `data` (or of its rows `indices`, with the indices), block by block.

    Equal to `tensors_fingerprint(data)` without indices and to `tensors_fingerprint({"indices": indices,
    **{k: v[indices] for k, v in data.items()}})` with them, so caches keyed either way stay valid; memory stays at a
    block of rows however many there are (the whole-tensor form copies every byte, and materializes an expanded
    mask)."""
    h = hashlib.blake2b(digest_size=16)
    parts = {"indices": (indices, None)} if indices is not None else {}
    parts |= {k: (v, indices) for k, v in data.items()}
    for k in sorted(parts):
        h.update(k.encode())
        _hash_rows(h, *parts[k])
    return h.hexdigest()


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (right padding: exact for causal models)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    width = int(mask.sum(1).max()) if mask.numel() else 0
    t = mask.shape[1]
    if width >= t:
        return batch
    return {k: v[:, :width] if v.dim() >= 2 and v.shape[1] == t else v for k, v in batch.items()}


def iter_batches(
    data: dict[str, torch.Tensor],
    batch_size: int,
    indices: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    trim: bool = True,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (indices, batch) with each batch's tensors on `device`, all-padding columns trimmed, narrow integer
    tensors widened to int64."""
    if batch_size <= 0:
        raise InfluenceError(f"batch_size must be positive, got {batch_size}")
    n = num_rows(data)
    idx = torch.arange(n) if indices is None else indices
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        batch = {k: widen(v[sel]) for k, v in data.items()}
        if trim:
            batch = trim_padding(batch)
        yield sel, {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def pad_positions(t: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    """Zero-pad a per-position tensor back to `width` positions along `dim`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)
