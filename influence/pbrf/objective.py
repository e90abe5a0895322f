"""The proximal Bregman objective of one training row, and the Bregman rows it averages over, in chunks.

J(u) = [B(θ)/n + s·ε·(L(z_m, θ) − L(z_m, θs))]/ε² + Σ λ/2 ‖u‖², θ = θs + ε·u, with B the Bregman term over n
rows. The rows are batched by length and trimmed by the task (`Task.trim`), and the original model's outputs at
their loss-bearing positions (`Task.bregman_positions`) are computed once: every evaluation reuses them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..batching import by_length, num_rows
from ..errors import InfluenceError
from ..modules import TrackedLayer
from ..tasks import Task
from .divergence import DIVERGENCES, SoftmaxKL


@dataclass
class BregmanChunk:
    """One batch of Bregman rows, trimmed of all-padding columns, with the original model's softmax outputs at its
    loss-bearing positions (LM) or rows (classification) precomputed: every evaluation reuses them."""

    batch: dict
    select: torch.Tensor | None  # (B, T) bool loss positions of an LM batch; None: every row
    reference: torch.Tensor  # h_s at the selected positions (logits; predictions for regression)
    p_s: torch.Tensor | None  # softmax(reference) for softmax tasks


def bregman_chunks(task: Task, model, data: dict, batch_size: int, cast) -> list[BregmanChunk]:
    """The Bregman rows in batches, sequences sorted by length so that trimming removes most padding."""
    if task.divergence not in DIVERGENCES:
        raise InfluenceError(
            f"no Bregman divergence for {type(task).__name__}: the PBRF needs a task whose "
            f"`divergence` is one of {list(DIVERGENCES)} (RegressionTask, ClassificationTask, "
            "LanguageModelTask)"
        )
    order = by_length(data, torch.arange(num_rows(data)))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = task.trim(cast({k: v[rows] for k, v in data.items()}))
            out = task.forward(model, batch).detach()
            select = task.bregman_positions(batch)
            if select is not None:
                out = out[select]
            p_s = torch.softmax(out, -1) if task.divergence == "softmax_kl" else None
            chunks.append(BregmanChunk(batch, select, out, p_s))
    return chunks


def chunk_divergence(task: Task, model, chunk: BregmanChunk) -> torch.Tensor:
    """Σ over the chunk's rows of D(h(θ), h_s), differentiable in θ."""
    out = task.forward(model, chunk.batch)
    if chunk.select is not None:
        out = out[chunk.select]
    if chunk.p_s is None:
        return 0.5 * ((out - chunk.reference) ** 2).sum()
    return SoftmaxKL.apply(out, chunk.reference, chunk.p_s)


def per_row_measurement(model, task: Task, queries: dict) -> torch.Tensor:
    """f of each query row, (Q,)."""
    with torch.no_grad():
        out = task.forward(model, queries)
        n = out.shape[0]
        return torch.stack(
            [task.measurement(out[i : i + 1], {k: v[i : i + 1] for k, v in queries.items()}) for i in range(n)]
        )


def norm(ts: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in ts))


class Problem:
    """J(u) = [B(θ)/n + s·ε·(L(z_m, θ) − L(z_m, θs))]/ε² + Σ λ/2 ‖u‖² for one training row, θ = θs + ε·u.

    Every term is computed without cancelling O(1) parts, so J keeps its precision at O(ε²) changes:
    the line search and the convergence test then see the objective, not rounding noise."""

    def __init__(self, model, task, params, theta_s, lam, chunks, n_bregman, row, epsilon):
        self.model, self.task, self.params = model, task, params
        self.theta_s, self.lam, self.chunks, self.n = theta_s, lam, chunks, n_bregman
        self.row, self.epsilon = row, epsilon
        self.evaluations = 0
        self.scale = 1.0  # u = scale·w: set to ‖∇L(z_m)‖ so that the optimizer sees an O(1) problem
        self.precondition = None  # a symmetric positive-definite map M on parameter lists: u = scale·M(w)
        self.true_norm = math.nan
        # L(θ) − L(θs) = D(h, h_s) + ∇_h L(h_s)·(h − h_s) (the Bregman identity): no O(1) terms cancel
        with torch.no_grad():
            self.row_ref = task.forward(model, row).detach()
        with torch.enable_grad():
            ref = self.row_ref.clone().requires_grad_(True)
            self.row_grad = torch.autograd.grad(task.loss(ref, row), ref)[0]

    def set_params(self, u: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, t, du in zip(self.params, self.theta_s, u):
                p.copy_(t + self.epsilon * du)

    def evaluate(self, w: list[torch.Tensor], sign: float) -> tuple[float, list[torch.Tensor]]:
        """J(u)/c² and ∇_w = M(∇_θ[B/n + s·ε·L(z_m)]/ε + λ u)/c at u = c·M(w), c = `scale`, M the preconditioner
        (identity by default). `true_norm` keeps ‖∇_u J‖/c, the unpreconditioned gradient the criterion tests."""
        self.evaluations += 1
        eps, c = self.epsilon, self.scale
        m = self.precondition if self.precondition is not None else (lambda ts: ts)
        u = [c * t for t in m(w)]
        self.set_params(u)
        grads = [torch.zeros_like(p) for p in self.params]
        value = 0.0
        with torch.enable_grad():
            for chunk in self.chunks:
                d = chunk_divergence(self.task, self.model, chunk) / self.n
                value += float(d.detach()) / eps**2
                for g, gi in zip(grads, torch.autograd.grad(d, self.params)):
                    g.add_(gi)
            out = self.task.forward(self.model, self.row)
            loss = self.task.bregman(out, self.row_ref, self.row) + (self.row_grad * (out - self.row_ref)).sum()
            value += sign * float(loss.detach()) / eps
            for g, gi in zip(grads, torch.autograd.grad(loss, self.params)):
                g.add_(gi, alpha=sign * eps)
        value += sum(0.5 * lam * float((du.double() ** 2).sum()) for lam, du in zip(self.lam, u))
        g_u = [(g / eps + lam * du) / c for g, lam, du in zip(grads, self.lam, u)]
        self.true_norm = norm(g_u)
        return value / c**2, m(g_u)


def working_copy(
    model, layers: list[TrackedLayer], dtype: torch.dtype | None, always: bool = False
) -> tuple[object, list[TrackedLayer]]:
    """(model, layers) itself, or (with `always`, or another `dtype`) a copy in `dtype` with its tracked layers
    mapped onto the copy."""
    if not always and (dtype is None or dtype == next(model.parameters()).dtype):
        return model, layers
    work = copy.deepcopy(model).to(dtype if dtype is not None else next(model.parameters()).dtype)
    names = {id(l.module): l.name for l in layers}
    copied = dict(work.named_modules())
    return work, [TrackedLayer(n, copied[n]) for n, mod in model.named_modules() if id(mod) in names]
