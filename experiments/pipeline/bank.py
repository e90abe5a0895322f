"""The retrain bank: fine-tunes of one base model on subsets of a fine-tuning set, each measured on the queries.

Retrains are the cost of every retraining-based check (the linear datamodeling score, proponent removal), so each
is an entry keyed by a fingerprint of what made it (base weights, fine-tuning sequences, the subset, the seed, the
fine-tuning settings) and the queries it was measured on, written atomically with its checksum, skipped when
present, and shared by every method and every run that asks for the same retrain. A bank interrupted at any
point resumes where it stopped and ends with the entries an uninterrupted run writes (fine-tuning is
deterministic: `embedded.finetune`).

Splitting the work: the entries are dealt round-robin over `shards` (job `shard` of them, e.g. one job per value
of a Hydra `-m` sweep on the submitit launcher) and, inside a job, over torchrun ranks; a job then reads every
entry and names the ones still missing (another share not yet run) in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from embedded.finetune import FinetuneSettings, finetune
from influence import InfluenceError, LanguageModelTask
from influence.distributed import barrier
from influence.distributed import shard as rank_share
from influence.fingerprint import config_fingerprint, model_fingerprint, tensors_fingerprint
from influence.storage import CorruptFileError, load_tensors, save_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrain:
    """One fine-tune: the rows of the fine-tuning set it keeps, and its seed."""

    keep: torch.Tensor  # (n,) bool over the fine-tuning set
    seed: int


def completion_log_probs(model, encoded: dict[str, torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """(Q,) log p(completion | prompt) of each encoded query (`influence.encode_queries`), in float64."""
    task, out = LanguageModelTask(), []
    with torch.no_grad():
        for s in range(0, encoded["input_ids"].shape[0], batch_size):
            batch = {k: v[s : s + batch_size] for k, v in encoded.items()}
            logits = task.forward(model, batch).double()
            out += [
                task.measurement(logits[i : i + 1], {k: v[i : i + 1] for k, v in batch.items()})
                for i in range(len(logits))
            ]
    return torch.stack(out)


class RetrainBank:
    """Cached, resumable, shardable fine-tunes of `model` on subsets of (`input_ids`, `attention_mask`)."""

    def __init__(self, root: Path, model, input_ids, attention_mask, settings: FinetuneSettings, queries: dict):
        self.root, self.model, self.settings, self.queries = Path(root), model, settings, queries
        self.ids, self.mask = input_ids, attention_mask
        self._base = config_fingerprint(
            {
                "model": model_fingerprint(model),
                "data": tensors_fingerprint({"ids": input_ids, "mask": attention_mask}),
                "settings": settings.key(),
                "queries": tensors_fingerprint(queries),
            }
        )

    def key(self, r: Retrain) -> str:
        if r.keep.shape != (self.ids.shape[0],):
            raise InfluenceError(
                f"a retrain's subset has {tuple(r.keep.shape)} rows, the fine-tuning set {self.ids.shape[0]}"
            )
        return config_fingerprint(
            {"bank": self._base, "keep": r.keep.nonzero().flatten().tolist(), "seed": int(r.seed)}
        )

    def path(self, r: Retrain) -> Path:
        k = self.key(r)
        return self.root / k[:2] / f"{k}.safetensors"

    def cached(self, r: Retrain) -> torch.Tensor | None:
        """The entry's measurements, or None when it is missing or fails its checksum (then it is redone)."""
        p = self.path(r)
        if not p.exists():
            return None
        try:
            t, _ = load_tensors(p, require_checksum=True, fix="it is fine-tuned again")
        except CorruptFileError as e:
            log.warning("%s", e)
            return None
        return t["log_p"]

    def run(self, r: Retrain) -> torch.Tensor:
        """Fine-tune on the entry's rows, measure every query, write the entry: (Q,) log p."""
        rows = r.keep.nonzero().flatten()
        tuned = finetune(self.model, self.ids[rows], self.mask[rows], self.settings, r.seed)
        log_p = completion_log_probs(tuned, self.queries)
        save_tensors(self.path(r), {"log_p": log_p}, {"rows": str(len(rows)), "seed": str(r.seed)})
        return log_p

    def fill(self, retrains: list[Retrain], shard: int = 0, shards: int = 1, desc: str = "retrain bank") -> int:
        """Fine-tune this job's share of the missing entries (job `shard` of `shards`, then this rank's part):
        the number fine-tuned now."""
        mine = [retrains[i] for i in rank_share(range(shard, len(retrains), shards))]
        todo = [r for r in mine if self.cached(r) is None]
        bar = tqdm(todo, desc=f"{desc}: {len(mine) - len(todo)} of {len(mine)} cached", mininterval=2.0)
        for r in bar:
            self.run(r)
        barrier()
        return len(todo)

    def measurements(self, retrains: list[Retrain]) -> torch.Tensor:
        """(R, Q) log p of every entry; a missing entry fails in one line naming how many are missing."""
        found = [self.cached(r) for r in retrains]
        missing = sum(f is None for f in found)
        if missing:
            raise InfluenceError(
                f"the retrain bank at {self.root} lacks {missing} of {len(retrains)} entries: run the other shares "
                "(lds.shard=<i> for every i below lds.shards) or run once with lds.shards=1"
            )
        return torch.stack(found)


def subset_masks(n: int, count: int, fraction: float, seed: int) -> torch.Tensor:
    """(count, n) bool: `count` seeded random subsets of round(fraction·n) rows each (at least one, not all)."""
    size = min(n - 1, max(1, round(fraction * n))) if n > 1 else 1
    gen = torch.Generator().manual_seed(int(seed))
    masks = torch.zeros(count, n, dtype=torch.bool)
    for s in range(count):
        masks[s, torch.randperm(n, generator=gen)[:size]] = True
    return masks


def without(n: int, rows: torch.Tensor) -> torch.Tensor:
    """(n,) bool: every row but `rows`."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    return keep
