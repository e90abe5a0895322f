"""The one capture loop that fitting, scoring and scanning share: batches of chosen rows, each captured once.

Every pass over training rows is the same: the model in eval mode with its parameters frozen (so autograd
skips every weight-gradient matmul), the rows in index-carrying batches on the working device, and one
`capture_pass` per batch giving each tracked layer's ā and Ds. Rows batch best in length order
(`length_order`), and `back` puts results made in that order back in the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm import tqdm

from .batching import by_length, iter_batches
from .capture import eval_mode, frozen_parameters
from .distributed import is_main
from .gradients import capture_pass
from .modules import TrackedLayer
from .tasks import Task


def resolve_device(model, device=None) -> torch.device:
    """`device` as a torch.device, or the model's own device when it is None."""
    return torch.device(device) if device is not None else next(model.parameters()).device


def length_order(data: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, back): `rows` sorted by real length for batching, and the index with `x[back]` in `rows` order
    for any `x` whose first axis follows `order`."""
    order = by_length(data, rows)
    pos = {int(r): i for i, r in enumerate(order)}
    return order, torch.tensor([pos[int(r)] for r in rows], dtype=torch.long)


def capture_batches(
    model,
    task: Task,
    layers: list[TrackedLayer],
    data: dict[str, torch.Tensor],
    batch_size: int,
    indices: torch.Tensor | None = None,
    device=None,
    labels: str = "true",
    seed: int = 0,
    desc: str | None = None,
) -> Iterator[tuple[torch.Tensor, dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yield (rows, batch, ā, Ds) for each batch of the rows `indices` (default: all), in that order.

    Args:
        labels: the training loss's targets, "true" (the data's) or "sampled" (from the model, keyed by
            (`seed`, row index)); see `gradients.capture_pass`.
        desc: with a description, a progress bar (on the main rank) counts the batches.
    """
    batches = iter_batches(data, batch_size, indices, device)
    if desc is not None:
        n = len(indices) if indices is not None else next(iter(data.values())).shape[0]
        total = -(-n // batch_size) if batch_size > 0 else None  # a bad batch_size is refused by iter_batches
        batches = tqdm(
            batches, desc=desc, total=total, unit="batch", mininterval=1.0, dynamic_ncols=True, disable=not is_main()
        )
    with eval_mode(model), frozen_parameters(model):
        for sel, batch in batches:
            a, ds = capture_pass(model, task, layers, batch, labels, sel, seed)
            yield sel, batch, a, ds
