"""Training data as a dict of tensors sharing the first dimension, iterated in index-carrying batches.

The sequence index travels with each batch: it keys the sampled labels and names results.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .errors import InfluenceError


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
    """`indices` reordered by real sequence length (stable), so batches of similar lengths waste little padding."""
    if "attention_mask" not in data:
        return indices
    lengths = data["attention_mask"][indices].sum(1)
    return indices[torch.argsort(lengths, stable=True)]


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
    """Yield (indices, batch) with each batch's tensors on `device`, all-padding columns trimmed."""
    if batch_size <= 0:
        raise InfluenceError(f"batch_size must be positive, got {batch_size}")
    n = num_rows(data)
    idx = torch.arange(n) if indices is None else indices
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        batch = {k: v[sel] for k, v in data.items()}
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
