"""The proximal Bregman response function (PBRF, Bae et al. 2022; paper Eq. 7): the ground truth that
influence estimators approximate (spec §1.1, §5).

For a training example z_m and weight ε, θ(ε) minimizes the proximal Bregman objective

    J_ε(θ) = (1/B) Σ_i D(h(θ, x_i), h(θs, x_i)) + ε·L(z_m, θ) + Σ_ℓ λ_ℓ/2 ‖θ_ℓ − θs_ℓ‖²

over the tracked layers' weights and biases (everything else held fixed), from θs. D is the
Bregman divergence of the task's loss to the original model's outputs: ½‖h − h_s‖² for squared
error, KL(p_s ‖ p_θ) for softmax cross-entropy (summed over loss-bearing tokens for sequences).
Its Hessian at θs is the Gauss–Newton G fitted on the same rows, and λ_ℓ is the estimators' own
per-layer damping, so (G + λI)⁻¹ is the very operator the estimators approximate.

Sign and scale: the PBRF score is the central difference (f(θ(+ε)) − f(θ(−ε)))/(2ε) ≈ df/dε, with
+ε·L meaning z_m is ADDED with weight ε. Since dθ/dε = −(G+λI)⁻¹∇L (Eq. 9), df/dε = −∇fᵀ(G+λI)⁻¹∇L:
exactly the library's convention (`influence.scoring.SCALE_CONVENTION`: no 1/N, positive = adding z_m
raises f), so the PBRF and `compute_scores` agree in sign and scale and correlate positively when
they agree.

Optimization: on w = (θ − θs)/(ε‖∇L(z_m)‖) with the objective divided by (ε‖∇L(z_m)‖)², so the iterate
is O(1) whatever ε and z_m, and Adam's step size (or L-BFGS's line-search tolerances) mean the same
thing for every problem. Converged means the gradient norm
fell to `tol` × its value at θs (‖∇L(z_m)‖); Adam's step size is halved whenever the gradient norm
has not improved for `patience` steps. Not converging within `max_steps` raises InfluenceError, or with
`on_failure="record"` is recorded (`grad_norm`, `converged`) and the scores of that row are still the
central difference at the last iterate: a caller that records must check `converged` before trusting them.

Cost: a solve takes hundreds to thousands of evaluations of J and its gradient, each a forward and backward
pass over the Bregman rows. Those rows are batched by length and trimmed of all-padding columns, and the
softmax KL's value and gradient come from one fused pass with the original model's p_s cached, which on a
small LM (vocabulary-wide tensors dominate) is ~3.3x cheaper in float64 than autograd through the padded
batches (`bench/bench_pbrf.py`).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from .batching import num_rows
from .capture import eval_mode, frozen_parameters
from .curvature.factors import eigenbasis_ihvp
from .errors import InfluenceError
from .modules import TrackedLayer, find_tracked_layers
from .scoring import SCALE_CONVENTION
from .tasks import ClassificationTask, LanguageModelTask, RegressionTask, Task

#: "adam" is the paper's optimizer; "lbfgs" minimizes the same objective to the same tolerance in far fewer
#: evaluations when the damped G is ill-conditioned (Adam stalls there: see the accuracy study's report)
OPTIMIZERS = ("adam", "lbfgs")


@dataclass
class PBRFResult:
    """PBRF scores of Q query rows on N training rows, with the optimizer's diagnostics per (row, ±ε)."""

    scores: torch.Tensor      # (Q, N) central differences, same convention as InfluenceScores.scores
    indices: torch.Tensor     # (N,) training-set rows
    steps: torch.Tensor       # (N, 2) objective/gradient evaluations at +ε and −ε
    grad_norm: torch.Tensor   # (N, 2) final gradient norm relative to its value at θs
    epsilon: float
    seconds: float
    metadata: dict = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return bool((self.grad_norm <= float(self.metadata["tol"])).all())


def _softmax_kl(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) ‖ softmax(outputs)) over the last axis, accurate when the two are close.

    With δ = outputs − reference centred under p_s (Σ p_s δ = 0), KL = log Σ p_s e^δ = log1p(Σ p_s (e^δ − 1 − δ)):
    no O(δ) terms cancel, so the O(δ²) divergence keeps its relative precision (the textbook
    Σ p_s (log p_s − log p) loses it, and with it the optimizer's line search near the optimum).
    """
    p_s = torch.softmax(reference, -1)
    delta = outputs - reference
    delta = delta - (p_s * delta).sum(-1, keepdim=True)
    return torch.log1p((p_s * (torch.expm1(delta) - delta)).sum(-1))


def bregman_divergence(task: Task, outputs: torch.Tensor, reference: torch.Tensor, batch: dict) -> torch.Tensor:
    """Σ over rows of D(h, h_s), `reference` = the original model's outputs h_s (logits for softmax tasks)."""
    if isinstance(task, RegressionTask):
        return 0.5 * ((outputs - reference) ** 2).sum()
    if isinstance(task, ClassificationTask):
        return _softmax_kl(outputs, reference).sum()
    if isinstance(task, LanguageModelTask):
        mask = task.loss_mask(batch)[:, :-1]
        return (_softmax_kl(outputs[:, :-1], reference[:, :-1]) * mask).sum()
    raise InfluenceError(f"no Bregman divergence for {type(task).__name__}: the PBRF knows RegressionTask, "
                         "ClassificationTask and LanguageModelTask")


class _SoftmaxKL(torch.autograd.Function):
    """Σ_rows KL(p_s ‖ softmax(z)) with its gradient softmax(z) − p_s formed in the forward pass.

    Same cancellation-free value as `_softmax_kl`, and the gradient in the same spirit: with δ centred under
    p_s, e = expm1(δ) and S = Σ p_s e, softmax(z) − p_s = p_s (e − S)/(1 + S). A handful of passes over the
    (rows, vocabulary) tensors instead of autograd's chain of them: these dominate a small LM's evaluation."""

    @staticmethod
    def forward(ctx, z, z_s, p_s):
        d = z - z_s
        d -= torch.einsum("nv,nv->n", p_s, d).unsqueeze(-1)
        e = torch.expm1(d)
        s = torch.einsum("nv,nv->n", p_s, e).unsqueeze(-1)
        kl = torch.log1p(torch.einsum("nv,nv->n", p_s, e - d)).sum()
        ctx.save_for_backward(e.sub_(s).mul_(p_s).div_(1 + s))
        return kl

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None


@dataclass
class _BregmanChunk:
    """One batch of Bregman rows, trimmed of all-padding columns, with the original model's softmax outputs at its
    loss-bearing positions (LM) or rows (classification) precomputed: every evaluation reuses them."""

    batch: dict
    select: torch.Tensor | None  # (B, T) bool loss positions of an LM batch; None: every row
    reference: torch.Tensor      # h_s at the selected positions (logits; predictions for regression)
    p_s: torch.Tensor | None     # softmax(reference) for softmax tasks


def _trim(task: Task, batch: dict) -> dict:
    """Drop the trailing columns that are padding in every sequence: a causal LM's outputs at the other
    positions do not depend on them, so the divergence is unchanged and the vocabulary-wide work shrinks."""
    if not isinstance(task, LanguageModelTask):
        return batch
    t = batch["attention_mask"].shape[1]
    live = batch["attention_mask"].bool().any(0).nonzero()
    keep = int(live.max()) + 1 if len(live) else 1
    return {k: (v[:, :keep] if v.dim() >= 2 and v.shape[1] == t else v) for k, v in batch.items()}


def _bregman_chunks(task: Task, model, data: dict, batch_size: int, cast) -> list[_BregmanChunk]:
    """The Bregman rows in batches, LM sequences sorted by length so that trimming removes most padding."""
    order = torch.arange(num_rows(data))
    if isinstance(task, LanguageModelTask):
        order = torch.argsort(data["attention_mask"].sum(1), stable=True)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = _trim(task, cast({k: v[rows] for k, v in data.items()}))
            out = task.forward(model, batch).detach()
            select = None
            if isinstance(task, LanguageModelTask):
                select = task.loss_mask(batch)
                out = out[select]
            p_s = torch.softmax(out, -1) if isinstance(task, (ClassificationTask, LanguageModelTask)) else None
            chunks.append(_BregmanChunk(batch, select, out, p_s))
    return chunks


def _chunk_divergence(task: Task, model, chunk: _BregmanChunk) -> torch.Tensor:
    """Σ over the chunk's rows of D(h(θ), h_s), differentiable in θ."""
    out = task.forward(model, chunk.batch)
    if chunk.select is not None:
        out = out[chunk.select]
    if chunk.p_s is None:
        return 0.5 * ((out - chunk.reference) ** 2).sum()
    return _SoftmaxKL.apply(out, chunk.reference, chunk.p_s)


def per_row_measurement(model, task: Task, queries: dict) -> torch.Tensor:
    """f of each query row, (Q,)."""
    with torch.no_grad():
        out = task.forward(model, queries)
        n = out.shape[0]
        return torch.stack([task.measurement(out[i : i + 1], {k: v[i : i + 1] for k, v in queries.items()})
                            for i in range(n)])


class _Problem:
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
                d = _chunk_divergence(self.task, self.model, chunk) / self.n
                value += float(d.detach()) / eps ** 2
                for g, gi in zip(grads, torch.autograd.grad(d, self.params)):
                    g.add_(gi)
            out = self.task.forward(self.model, self.row)
            loss = (bregman_divergence(self.task, out, self.row_ref, self.row)
                    + (self.row_grad * (out - self.row_ref)).sum())
            value += sign * float(loss.detach()) / eps
            for g, gi in zip(grads, torch.autograd.grad(loss, self.params)):
                g.add_(gi, alpha=sign * eps)
        value += sum(0.5 * lam * float((du.double() ** 2).sum()) for lam, du in zip(self.lam, u))
        g_u = [(g / eps + lam * du) / c for g, lam, du in zip(grads, self.lam, u)]
        self.true_norm = _norm(g_u)
        return value / c ** 2, m(g_u)


def _norm(ts: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in ts))


def _adam(problem, sign, u, g0, lr, max_steps, tol, patience, min_lr_ratio) -> float:
    """Adam (the paper's optimizer); its step size halves after `patience` steps without 10% progress."""
    opt = torch.optim.Adam(u, lr=lr)
    _, g = problem.evaluate([t.detach() for t in u], sign)
    best, since, rel = math.inf, 0, 1.0
    while problem.evaluations < max_steps:
        for t, gi in zip(u, g):
            t.grad = gi
        opt.step()
        _, g = problem.evaluate([t.detach() for t in u], sign)
        rel = problem.true_norm / g0
        if rel <= tol or not math.isfinite(rel):
            break
        if rel < 0.9 * best:
            best, since = rel, 0
        else:
            since += 1
            if since >= patience:
                for group in opt.param_groups:
                    group["lr"] = max(group["lr"] * 0.5, lr * min_lr_ratio)
                since, best = 0, rel
    return rel


def _lbfgs(problem, sign, u, g0, max_steps, tol, history: int = 100, inner: int = 10) -> float:
    """L-BFGS with a strong-Wolfe line search on the same objective; the criterion is checked every `inner` iterations."""
    opt = torch.optim.LBFGS(u, lr=1.0, max_iter=inner, history_size=history, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        value, g = problem.evaluate([t.detach() for t in u], sign)
        for t, gi in zip(u, g):
            t.grad = gi
        return torch.tensor(value, dtype=torch.float64)

    rel = 1.0
    while problem.evaluations < max_steps:
        opt.step(closure)
        problem.evaluate([t.detach() for t in u], sign)
        rel = problem.true_norm / g0
        if rel <= tol or not math.isfinite(rel):
            break
    return rel


def _minimize(problem: _Problem, sign: float, optimizer: str, lr: float, max_steps: int, tol: float, patience: int,
              min_lr_ratio: float, history: int = 100,
              start: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], int, float]:
    """Minimize J until ‖∇J‖ ≤ tol·‖∇J(0)‖ (= tol·‖∇L(z_m)‖), from u = 0 (θs) or from `start`; returns
    (u, evaluations, final ratio). The criterion is relative to the gradient at θs whatever the start."""
    u = [torch.zeros_like(p, requires_grad=True) for p in problem.params]
    problem.evaluations, problem.scale = 0, 1.0
    precondition, problem.precondition = problem.precondition, None
    g0 = _norm(problem.evaluate([t.detach() for t in u], sign)[1])
    problem.precondition = precondition
    if g0 == 0.0:
        return [t.detach() for t in u], problem.evaluations, 0.0
    problem.scale = g0  # from here on the iterate is w = u/‖∇L(z_m)‖ and the gradient at w = 0 has norm 1
    g0 = 1.0
    if start is not None:  # w = M⁻¹(u)/c
        inverse = precondition.inverse if precondition is not None else (lambda ts: ts)
        with torch.no_grad():
            for t, w0 in zip(u, inverse([x / problem.scale for x in start])):
                t.copy_(w0)
    if optimizer == "adam":
        rel = _adam(problem, sign, u, g0, lr, max_steps, tol, patience, min_lr_ratio)
    else:
        rel = _lbfgs(problem, sign, u, g0, max_steps, tol, history=history)
    m = problem.precondition if problem.precondition is not None else (lambda ts: ts)
    return [problem.scale * t for t in m([t.detach() for t in u])], problem.evaluations, rel


def _eigenbasis_preconditioner(curvature, layers: list[TrackedLayer], damping: dict[str, float]):
    """M(ts) = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ)^½] Q_Aᵀ per layer, V the layer's [W | b] block of the parameter list ts."""
    basis, lam = getattr(curvature, "basis", None), getattr(curvature, "lam", None)
    if basis is None or not isinstance(lam, dict) or any(l.name not in lam for l in layers):
        raise InfluenceError("the PBRF preconditioner must be a fitted EK-FAC curvature on the same layers")
    blocks = []
    for l in layers:
        q_s, q_a = basis.q_s[l.name], basis.q_a[l.name]
        if lam[l.name].shape != l.shape:
            raise InfluenceError(f"the PBRF preconditioner's eigenvalues for {l.name} have shape "
                                 f"{tuple(lam[l.name].shape)}, not the layer's {l.shape}: use a fitted EK-FAC")
        blocks.append((l, len(l.parameters()), q_s, q_a, (lam[l.name].double() + float(damping[l.name])).sqrt()))

    def apply(ts: list[torch.Tensor], power: float = 1.0) -> list[torch.Tensor]:
        out, i = [], 0
        for l, k, q_s, q_a, root in blocks:
            mat = l.from_parameter_grads(ts[i : i + k])
            dev = mat.device
            out += l.to_parameter_grads(eigenbasis_ihvp(mat, q_s.to(dev), q_a.to(dev), root.to(dev) ** power))
            i += k
        return [t.contiguous() for t in out]

    apply.inverse = lambda ts: apply(ts, -1.0)  # M⁻¹, to start the optimizer at a given u
    return apply


def working_copy(model, layers: list[TrackedLayer], dtype: torch.dtype | None,
                 always: bool = False) -> tuple[object, list[TrackedLayer]]:
    """(model, layers) itself, or (with `always`, or another `dtype`) a copy in `dtype` with its tracked layers
    mapped onto the copy."""
    if not always and (dtype is None or dtype == next(model.parameters()).dtype):
        return model, layers
    work = copy.deepcopy(model).to(dtype if dtype is not None else next(model.parameters()).dtype)
    names = {id(l.module): l.name for l in layers}
    copied = dict(work.named_modules())
    return work, [TrackedLayer(n, copied[n]) for n, mod in model.named_modules() if id(mod) in names]


def pbrf_scores(
    model,
    task: Task,
    train_data: dict[str, torch.Tensor],
    queries: dict[str, torch.Tensor],
    damping: dict[str, float],
    bregman_data: dict[str, torch.Tensor] | None = None,
    indices: torch.Tensor | None = None,
    layers: list[TrackedLayer] | None = None,
    epsilon: float = 1e-3,
    optimizer: str = "adam",
    lr: float = 0.01,
    max_steps: int = 2000,
    tol: float = 1e-3,
    patience: int = 20,
    min_lr_ratio: float = 1e-4,
    batch_size: int = 1024,
    dtype: torch.dtype | None = None,
    history: int = 100,
    on_failure: str = "raise",
    preconditioner=None,
    warm_start: str = "none",
    progress=None,
) -> PBRFResult:
    """PBRF influence of training rows `indices` (default: all) on each query row's f; see the module docstring.

    `damping` maps tracked-layer names to λ_ℓ (pass the estimators' `curvature.damping`); the Bregman term
    averages over `bregman_data` (default: `train_data`). With `dtype` the work is done on a copy of the model
    in that precision; otherwise in place, and the parameters are restored exactly afterwards. `history` is
    L-BFGS's memory. A solve that misses `tol` within `max_steps` raises InfluenceError (`on_failure="raise"`)
    or is recorded in `grad_norm` / `converged` and the next row goes on (`on_failure="record"`).
    `preconditioner`, a fitted EK-FAC, changes only the optimizer's variables (u = M w with M = (Λ + λ)^(-1/2) in
    its eigenbasis, which makes an ill-conditioned objective near-spherical): the objective, its minimizer and
    the convergence test on the unpreconditioned gradient are unchanged. `warm_start="mirror"` starts the −ε
    solve at the +ε solution reflected through θs (θs − (θ(+ε) − θs), right to first order in ε) instead of at
    θs: again the objective, its minimizer and the test are unchanged; only the optimizer's path is shorter.
    """
    n_train = num_rows(train_data)
    task.check_batch(train_data)
    bregman_data = train_data if bregman_data is None else bregman_data
    n_bregman = num_rows(bregman_data)
    task.check_batch(bregman_data, "the Bregman data")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise InfluenceError(f"epsilon must be a positive number, got {epsilon}")
    if optimizer not in OPTIMIZERS:
        raise InfluenceError(f"unknown PBRF optimizer {optimizer!r}: use one of {list(OPTIMIZERS)}")
    if warm_start not in ("none", "mirror"):
        raise InfluenceError(f"warm_start must be 'none' or 'mirror', got {warm_start!r}")
    if on_failure not in ("raise", "record"):
        raise InfluenceError(f"on_failure must be 'raise' or 'record', got {on_failure!r}")
    if max_steps < 1 or not tol > 0 or not lr > 0 or history < 1:
        raise InfluenceError(f"PBRF optimizer settings must be positive (max_steps={max_steps}, tol={tol}, lr={lr})")
    layers = layers if layers is not None else find_tracked_layers(model)
    missing = [l.name for l in layers if l.name not in damping]
    if missing:
        raise InfluenceError(f"damping has no λ for layers {missing}: pass the fitted curvature's `damping` dict")
    if any(not damping[l.name] >= 0 for l in layers):
        raise InfluenceError("damping values must be non-negative")
    indices = torch.arange(n_train) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    work, layers = working_copy(model, layers, dtype)
    wdt = next(work.parameters()).dtype
    dev = next(work.parameters()).device

    def cast(b):
        return {k: (v.to(dev, wdt) if v.is_floating_point() else v.to(dev)) for k, v in b.items()}

    precondition = _eigenbasis_preconditioner(preconditioner, layers, damping) if preconditioner is not None else None
    params = [p for l in layers for p in l.parameters()]
    lam = [float(damping[l.name]) for l in layers for _ in l.parameters()]
    theta_s = [p.detach().clone() for p in params]
    queries = cast(queries)
    t0 = time.perf_counter()
    scores = torch.zeros(num_rows(queries), len(indices), dtype=torch.float64)
    steps = torch.zeros(len(indices), 2, dtype=torch.long)
    rel = torch.zeros(len(indices), 2, dtype=torch.float64)
    try:
        with eval_mode(work), frozen_parameters(work):
            for p in params:
                p.requires_grad_(True)
            chunks = _bregman_chunks(task, work, bregman_data, batch_size, cast)
            for j, m in enumerate(indices.tolist()):
                row = _trim(task, cast({k: v[m : m + 1] for k, v in train_data.items()}))
                problem = _Problem(work, task, params, theta_s, lam, chunks, n_bregman, row, epsilon)
                problem.precondition = precondition
                f, u = [], None
                for k, sign in enumerate((1.0, -1.0)):
                    start = [-t for t in u] if (u is not None and warm_start == "mirror") else None
                    u, steps[j, k], rel[j, k] = _minimize(problem, sign, optimizer, lr, max_steps, tol, patience,
                                                          min_lr_ratio, history, start)
                    if not rel[j, k] <= tol and on_failure == "raise":
                        raise InfluenceError(
                            f"PBRF did not converge for training row {m} at {'+' if sign > 0 else '-'}ε: gradient norm "
                            f"{float(rel[j, k]):.3g} × its start after {int(steps[j, k])} {optimizer} evaluations (tol {tol:g}): "
                            f"raise max_steps, change lr or the optimizer, or lower epsilon")
                    problem.set_params(u)
                    f.append(per_row_measurement(work, task, queries).double())
                scores[:, j] = (f[0] - f[1]) / (2 * epsilon)
                problem.set_params([torch.zeros_like(t) for t in theta_s])  # θs again for the next row's reference
                if progress is not None:
                    progress(1)
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta_s):
                p.copy_(t)
    return PBRFResult(
        scores=scores, indices=indices, steps=steps, grad_norm=rel, epsilon=epsilon,
        seconds=time.perf_counter() - t0,
        metadata={"epsilon": epsilon, "optimizer": optimizer, "tol": tol, "lr": lr, "max_steps": max_steps, "patience": patience,
                  "history": history, "on_failure": on_failure, "warm_start": warm_start,
                  "preconditioner": getattr(preconditioner, "name", "none") if preconditioner is not None else "none",
                  "n_bregman": n_bregman, "dtype": str(wdt), "layers": ",".join(l.name for l in layers),
                  "damping": ";".join(f"{l.name}={damping[l.name]:.6g}" for l in layers),
                  "scale_convention": "PBRF central difference (f(θ(+ε)) − f(θ(−ε)))/(2ε); " + SCALE_CONVENTION},
    )
