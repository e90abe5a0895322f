"""Tasks: what the model computes, its training loss, the measurement f, and how labels are sampled.

One fitting and scoring code path serves language models and the small tabular models of
the accuracy study: everything model-specific lives behind this interface, including the Bregman
divergence of the loss that the PBRF (`influence.pbrf`) needs. Batches are dicts of tensors sharing
their first dimension; "positions" are the token axis of the tracked layers' inputs (a single position
for non-sequence models).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import InfluenceError
from .labels import keyed_normal, keyed_uniform, sample_categorical


def softmax_kl(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) ‖ softmax(outputs)) over the last axis, accurate when the two are close.

    With δ = outputs − reference centred under p_s (Σ p_s δ = 0), KL = log Σ p_s e^δ = log1p(Σ p_s (e^δ − 1 − δ)):
    no O(δ) terms cancel, so the O(δ²) divergence keeps its relative precision (the textbook
    Σ p_s (log p_s − log p) loses it, and with it the optimizer's line search near the optimum).
    """
    p_s = torch.softmax(reference, -1)
    delta = outputs - reference
    delta = delta - (p_s * delta).sum(-1, keepdim=True)
    return torch.log1p((p_s * (torch.expm1(delta) - delta)).sum(-1))


class Task(ABC):
    """The training loss L (summed over positions), the measurement f, and the Fisher's label model."""

    #: batch keys a training batch must have
    train_keys: tuple[str, ...] = ()
    #: the Bregman divergence of the loss in the outputs, D(h, h_s): "squared_error" (½‖h − h_s‖²), "softmax_kl"
    #: (KL(softmax h_s ‖ softmax h) of logits), or None when the task has none (the PBRF then refuses it)
    divergence: ClassVar[str | None] = None

    @abstractmethod
    def forward(self, model, batch: dict) -> torch.Tensor:
        """The model's outputs (logits or predictions)."""

    @abstractmethod
    def loss_mask(self, batch: dict) -> torch.Tensor:
        """(B, T) bool: positions whose output carries a loss term (these enter A and S)."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, batch: dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss summed over sequences and positions; `labels=None` means the true targets."""

    @abstractmethod
    def sample_labels(self, outputs: torch.Tensor, batch: dict, indices: torch.Tensor, seed: int) -> torch.Tensor:
        """Labels drawn from the model's predictive distribution, keyed by (seed, sequence index)."""

    @abstractmethod
    def measurement(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Σ over rows of f(row): each row's f depends only on that row, so one backward gives every query's gradient."""

    @abstractmethod
    def output_hvp(self, outputs: torch.Tensor, batch: dict, u: torch.Tensor) -> torch.Tensor:
        """H u with H the Hessian of the summed loss w.r.t. the outputs (the Gauss–Newton middle factor)."""

    def loss_output_grad(self, outputs: torch.Tensor, batch: dict, labels: torch.Tensor | None = None):
        """dL/d outputs in closed form, or None to let autograd differentiate `loss` (the default)."""
        return None

    def sampled_loss_output_grad(self, outputs: torch.Tensor, batch: dict, indices: torch.Tensor, seed: int):
        """(labels, dL/d outputs for them or None): the fitting pass's sampling and loss gradient together, so a
        task can share work between them (the default does them one after the other)."""
        labels = self.sample_labels(outputs, batch, indices, seed)
        return labels, self.loss_output_grad(outputs, batch, labels)

    def check_batch(self, batch: dict, what: str = "training data") -> None:
        missing = [k for k in self.train_keys if k not in batch]
        if missing:
            raise InfluenceError(f"{what} lacks {missing}: {type(self).__name__} needs keys {list(self.train_keys)}")

    def bregman(self, outputs: torch.Tensor, reference: torch.Tensor, batch: dict) -> torch.Tensor:
        """Σ over rows (and loss-bearing positions) of D(h, h_s), the Bregman divergence of the loss.

        Args:
            outputs: the model's outputs h on `batch` (differentiable).
            reference: the original model's outputs h_s on the same batch (logits for softmax tasks).
        """
        raise InfluenceError(
            f"no Bregman divergence for {type(self).__name__}: the PBRF needs a task with "
            "`bregman` and `divergence` (RegressionTask, ClassificationTask, LanguageModelTask)"
        )

    def bregman_positions(self, batch: dict) -> torch.Tensor | None:
        """(B, T) bool: the output positions `bregman` sums over, or None when each row is one term."""
        return None

    def trim(self, batch: dict) -> dict:
        """`batch` without columns that change no output the loss reads (the default keeps it whole)."""
        return batch


class LanguageModelTask(Task):
    """Causal LM: L = Σ_t CE(z_{t+1} | z_≤t) over non-padding targets; f = log p(completion | prompt)."""

    train_keys = ("input_ids", "attention_mask")
    divergence = "softmax_kl"

    def forward(self, model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss_mask(self, batch):
        m = batch["attention_mask"].bool()
        out = torch.zeros_like(m)
        out[:, :-1] = m[:, :-1] & m[:, 1:]
        return out

    def _ce(self, outputs, targets, mask):
        logits = outputs[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return (ce.view(targets.shape) * mask[:, :-1]).sum()

    def loss(self, outputs, batch, labels=None):
        targets = batch["input_ids"][:, 1:] if labels is None else labels
        return self._ce(outputs, targets, self.loss_mask(batch))

    def loss_output_grad(self, outputs, batch, labels=None):
        """softmax − one-hot(target) at loss positions, 0 elsewhere: the summed CE's logit gradient with no CE graph.

        Capture passes need only this gradient, so they skip the log-softmax forward/backward and the
        copies that slicing the logits costs (the vocabulary-wide tensors dominate small models)."""
        targets = batch["input_ids"][:, 1:] if labels is None else labels
        return self._minus_one_hot(torch.softmax(outputs.detach(), dim=-1), targets, batch)

    def _minus_one_hot(self, probs, targets, batch):
        """softmax − one-hot(target), masked to the loss positions, in place in `probs`."""
        ones = torch.full_like(targets, -1, dtype=probs.dtype).unsqueeze(-1)
        probs[:, :-1].scatter_add_(-1, targets.unsqueeze(-1), ones)
        return probs.mul_(self.loss_mask(batch).unsqueeze(-1))

    def sample_labels(self, outputs, batch, indices, seed):
        logits = outputs[:, :-1].detach()
        u = keyed_uniform(indices, logits.shape[1], seed).to(logits.device)
        return sample_categorical(logits, u)

    def sampled_loss_output_grad(self, outputs, batch, indices, seed):
        """One softmax for both: the labels are drawn from the same probabilities the gradient is built from
        (`sample_labels` and `loss_output_grad` would each compute one over the whole vocabulary)."""
        probs = torch.softmax(outputs.detach(), dim=-1)
        u = keyed_uniform(indices, outputs.shape[1] - 1, seed).to(outputs.device)
        labels = sample_categorical(None, u, probs=probs[:, :-1])
        return labels, self._minus_one_hot(probs, labels, batch)

    def measurement(self, outputs, batch):
        if "completion_mask" not in batch:
            raise InfluenceError("query batch lacks completion_mask: encode queries with influence.encode_queries")
        mask = batch["completion_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
        logp = torch.log_softmax(outputs[:, :-1], dim=-1)
        tok = logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        return (tok * mask).sum()

    def output_hvp(self, outputs, batch, u):
        p = torch.softmax(outputs[:, :-1].detach(), dim=-1)
        v = u[:, :-1]
        hv = p * v - p * (p * v).sum(-1, keepdim=True)
        hv = hv * self.loss_mask(batch)[:, :-1].unsqueeze(-1)
        return torch.cat([hv, torch.zeros_like(u[:, -1:])], dim=1)

    def bregman(self, outputs, reference, batch):
        """Σ_t KL(p_s,t ‖ p_t) over the loss-bearing positions."""
        mask = self.loss_mask(batch)[:, :-1]
        return (softmax_kl(outputs[:, :-1], reference[:, :-1]) * mask).sum()

    def bregman_positions(self, batch):
        return self.loss_mask(batch)

    def trim(self, batch):
        """Drop the trailing columns that are padding in every sequence: a causal LM's outputs at the other
        positions do not depend on them, so the loss and the divergence are unchanged and the vocabulary-wide
        work shrinks."""
        t = batch["attention_mask"].shape[1]
        live = batch["attention_mask"].bool().any(0).nonzero()
        keep = int(live.max()) + 1 if len(live) else 1
        return {k: (v[:, :keep] if v.dim() >= 2 and v.shape[1] == t else v) for k, v in batch.items()}


class TabularTask(Task):
    """Models of one input row → one output: a single "position" per example, f = loss on the query rows."""

    train_keys = ("x", "y")

    def __init__(self, measurement: str = "loss"):
        if measurement not in ("loss", "neg_loss"):
            raise InfluenceError(f"unknown measurement {measurement!r}: use 'loss' or 'neg_loss'")
        self._sign = 1.0 if measurement == "loss" else -1.0

    def forward(self, model, batch):
        return model(batch["x"])

    def loss_mask(self, batch):
        return torch.ones(batch["x"].shape[0], 1, dtype=torch.bool, device=batch["x"].device)

    def measurement(self, outputs, batch):
        return self._sign * self.loss(outputs, batch)


class RegressionTask(TabularTask):
    """Squared error L = ½ Σ (y − h(x))², a unit-variance Gaussian likelihood, so H_out = I and ŷ ~ N(h, 1).

    f is the loss on the query points (the paper's accuracy study), or −loss with `measurement="neg_loss"`.
    """

    divergence = "squared_error"

    def loss(self, outputs, batch, labels=None):
        y = batch["y"] if labels is None else labels
        return 0.5 * ((outputs - y.view_as(outputs)) ** 2).sum()

    def sample_labels(self, outputs, batch, indices, seed):
        noise = keyed_normal(indices, tuple(outputs.shape[1:]), seed).to(outputs)
        return outputs.detach() + noise

    def output_hvp(self, outputs, batch, u):
        return u

    def bregman(self, outputs, reference, batch):
        return 0.5 * ((outputs - reference) ** 2).sum()


class ClassificationTask(TabularTask):
    """Softmax cross-entropy over classes; labels sampled from the predicted class distribution."""

    divergence = "softmax_kl"

    def loss(self, outputs, batch, labels=None):
        y = batch["y"] if labels is None else labels
        return F.cross_entropy(outputs, y, reduction="sum")

    def sample_labels(self, outputs, batch, indices, seed):
        u = keyed_uniform(indices, 1, seed).to(outputs.device).squeeze(1)
        return sample_categorical(outputs.detach(), u)

    def output_hvp(self, outputs, batch, u):
        p = torch.softmax(outputs.detach(), dim=-1)
        return p * u - p * (p * u).sum(-1, keepdim=True)

    def bregman(self, outputs, reference, batch):
        return softmax_kl(outputs, reference).sum()
