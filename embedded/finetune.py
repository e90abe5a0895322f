"""Fine-tuning a trained model on a few sequences: the retraining step of the linear datamodeling score and of
proponent removal (the protocol kronfluence and Bergson use on language models).

A fine-tune is a pure function of (base weights, sequences, settings, seed): the batch order is drawn from a
generator seeded by `seed`, the models have no dropout, and AdamW on CPU is deterministic, so the same inputs
give bit-identical weights, which is what lets the retrain bank cache and share its entries.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch

from influence.errors import InfluenceError

from .train import lm_loss


@dataclass(frozen=True)
class FinetuneSettings:
    """How each retrain fine-tunes the base model (part of every bank entry's key)."""

    epochs: int = field(default=3, metadata={"help": "passes over the fine-tuning sequences"})
    lr: float = field(
        default=1e-3, metadata={"help": "peak AdamW learning rate (linear warmup, then linear decay to 0)"}
    )
    batch_size: int = field(default=8, metadata={"help": "sequences per step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the matrices"})
    warmup: float = field(default=0.1, metadata={"help": "share of the steps spent warming up"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip per step"})

    def __post_init__(self):
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise InfluenceError(
                f"fine-tuning needs epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not float(self.lr) > 0:
            raise InfluenceError(f"fine-tuning lr={self.lr} must be positive")
        if not 0 <= float(self.warmup) < 1:
            raise InfluenceError(f"fine-tuning warmup={self.warmup} must be in [0, 1)")

    def key(self) -> dict:
        return asdict(self)


def _lr(step: int, total: int, s: FinetuneSettings) -> float:
    warm = max(1, math.ceil(s.warmup * total))
    if step < warm:
        return s.lr * (step + 1) / warm
    return s.lr * max(0.0, (total - step) / max(1, total - warm))


def finetune(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: FinetuneSettings, seed: int):
    """A copy of `model` fine-tuned on the rows (right-padded ids and mask) with the mean token loss."""
    n = int(input_ids.shape[0])
    if n == 0:
        raise InfluenceError("fine-tuning was given no sequences: a subset needs at least one row")
    tuned = copy.deepcopy(model).train()
    for p in tuned.parameters():
        p.requires_grad_(True)
    decay = [p for p in tuned.parameters() if p.dim() >= 2]
    other = [p for p in tuned.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(int(seed))
    per_epoch = math.ceil(n / settings.batch_size)
    total, step = settings.epochs * per_epoch, 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, settings.batch_size):
            rows = order[s : s + settings.batch_size]
            ids, mask = input_ids[rows].long(), attention_mask[rows]  # a memory-mapped shard holds uint16 ids
            width = int(mask.sum(1).max())
            for g in opt.param_groups:
                g["lr"] = _lr(step, total, settings)
            loss = lm_loss(tuned, ids[:, :width], mask[:, :width])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tuned.parameters(), settings.grad_clip)
            opt.step()
            step += 1
    return tuned.eval()
