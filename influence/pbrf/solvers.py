"""Minimizing the proximal objective: Adam (the paper's optimizer) or L-BFGS, to a relative gradient tolerance.

Both work on w = u/‖∇L(z_m)‖ (`Problem.scale`), optionally through a preconditioner M (u = c·M(w)); the
criterion is always the unpreconditioned gradient norm relative to its value at θs.
"""

from __future__ import annotations

import math

import torch

from ..arguments import PBRFArguments
from .objective import Problem, norm


def adam(
    problem: Problem,
    sign: float,
    u,
    g0: float,
    lr: float,
    max_steps: int,
    tol: float,
    patience: int,
    min_lr_ratio: float,
) -> float:
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


def lbfgs(
    problem: Problem, sign: float, u, g0: float, max_steps: int, tol: float, history: int = 100, inner: int = 10
) -> float:
    """L-BFGS with a strong-Wolfe line search on the same objective; the criterion is checked every `inner`
    iterations."""
    opt = torch.optim.LBFGS(
        u,
        lr=1.0,
        max_iter=inner,
        history_size=history,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

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


def minimize(
    problem: Problem, sign: float, args: PBRFArguments, start: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], int, float]:
    """Minimize J until ‖∇J‖ ≤ tol·‖∇J(0)‖ (= tol·‖∇L(z_m)‖), from u = 0 (θs) or from `start`; returns
    (u, evaluations, final ratio). The criterion is relative to the gradient at θs whatever the start."""
    u = [torch.zeros_like(p, requires_grad=True) for p in problem.params]
    problem.evaluations, problem.scale = 0, 1.0
    precondition, problem.precondition = problem.precondition, None
    g0 = norm(problem.evaluate([t.detach() for t in u], sign)[1])
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
    if args.optimizer == "adam":
        rel = adam(problem, sign, u, g0, args.lr, args.max_steps, args.tol, args.patience, args.min_lr_ratio)
    else:
        rel = lbfgs(problem, sign, u, g0, args.max_steps, args.tol, history=args.history)
    m = problem.precondition if problem.precondition is not None else (lambda ts: ts)
    return [problem.scale * t for t in m([t.detach() for t in u])], problem.evaluations, rel
