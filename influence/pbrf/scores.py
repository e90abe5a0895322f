"""The PBRF driver: for each training row, solve the objective at +ε and −ε and take the central difference."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..arguments import PBRFArguments
from ..batching import num_rows
from ..capture import eval_mode, frozen_parameters
from ..errors import InfluenceError
from ..modules import TrackedLayer, find_tracked_layers
from ..scoring import SCALE_CONVENTION
from ..tasks import Task
from .objective import Problem, bregman_chunks, per_row_measurement, working_copy
from .preconditioner import eigenbasis_preconditioner
from .solvers import minimize


@dataclass
class PBRFResult:
    """PBRF scores of Q query rows on N training rows, with the optimizer's diagnostics per (row, ±ε)."""

    scores: torch.Tensor  # (Q, N) central differences, same convention as InfluenceScores.scores
    indices: torch.Tensor  # (N,) training-set rows
    steps: torch.Tensor  # (N, 2) objective/gradient evaluations at +ε and −ε
    grad_norm: torch.Tensor  # (N, 2) final gradient norm relative to its value at θs
    epsilon: float
    seconds: float
    metadata: dict = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return bool((self.grad_norm <= float(self.metadata["tol"])).all())


def _checked_inputs(model, task: Task, train_data, bregman_data, damping, layers, indices):
    """(Bregman data, layers, training rows) with their defaults filled in, each refused in one line if unusable."""
    n_train = num_rows(train_data)
    task.check_batch(train_data)
    bregman_data = train_data if bregman_data is None else bregman_data
    num_rows(bregman_data)
    task.check_batch(bregman_data, "the Bregman data")
    layers = layers if layers is not None else find_tracked_layers(model)
    missing = [l.name for l in layers if l.name not in damping]
    if missing:
        raise InfluenceError(f"damping has no λ for layers {missing}: pass the fitted curvature's `damping` dict")
    if any(not damping[l.name] >= 0 for l in layers):
        raise InfluenceError("damping values must be non-negative")
    indices = torch.arange(n_train) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    return bregman_data, layers, indices


def _solve_row(
    problem: Problem,
    work,
    task: Task,
    queries: dict,
    row: int,
    args: PBRFArguments,
    steps: torch.Tensor,
    rel: torch.Tensor,
) -> torch.Tensor:
    """(f(θ(+ε)) − f(θ(−ε)))/(2ε) for every query, filling this row's `steps` and `rel` (each of shape (2,))."""
    f, u = [], None
    for k, sign in enumerate((1.0, -1.0)):
        start = [-t for t in u] if (u is not None and args.warm_start == "mirror") else None
        u, steps[k], rel[k] = minimize(problem, sign, args, start)
        if not rel[k] <= args.tol and args.on_failure == "raise":
            raise InfluenceError(
                f"PBRF did not converge for training row {row} at {'+' if sign > 0 else '-'}ε: gradient norm "
                f"{float(rel[k]):.3g} × its start after {int(steps[k])} {args.optimizer} evaluations "
                f"(tol {args.tol:g}): raise max_steps, change lr or the optimizer, or lower epsilon"
            )
        problem.set_params(u)
        f.append(per_row_measurement(work, task, queries).double())
    return (f[0] - f[1]) / (2 * args.epsilon)


def _metadata(args: PBRFArguments, preconditioner, n_bregman: int, dtype, layers, damping) -> dict:
    return {
        "epsilon": args.epsilon,
        "optimizer": args.optimizer,
        "tol": args.tol,
        "lr": args.lr,
        "max_steps": args.max_steps,
        "patience": args.patience,
        "history": args.history,
        "on_failure": args.on_failure,
        "warm_start": args.warm_start,
        "batch_size": args.batch_size,
        "preconditioner": preconditioner.name if preconditioner is not None else "none",
        "n_bregman": n_bregman,
        "dtype": str(dtype),
        "layers": ",".join(l.name for l in layers),
        "damping": ";".join(f"{l.name}={damping[l.name]:.6g}" for l in layers),
        "scale_convention": "PBRF central difference (f(θ(+ε)) − f(θ(−ε)))/(2ε); " + SCALE_CONVENTION,
    }


@contextmanager
def restored(params: list[torch.Tensor]):
    """Yield a copy of `params` (θs); put it back into them afterwards, however the block ends."""
    theta_s = [p.detach().clone() for p in params]
    try:
        yield theta_s
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta_s):
                p.copy_(t)


def pbrf_scores(
    model,
    task: Task,
    train_data: dict[str, torch.Tensor],
    queries: dict[str, torch.Tensor],
    damping: dict[str, float],
    args: PBRFArguments | None = None,
    *,
    bregman_data: dict[str, torch.Tensor] | None = None,
    indices: torch.Tensor | None = None,
    layers: list[TrackedLayer] | None = None,
    preconditioner=None,
    progress=None,
) -> PBRFResult:
    """PBRF influence of training rows `indices` (default: all) on each query row's f; see `influence.pbrf`.

    `damping` maps tracked-layer names to λ_ℓ (pass the estimators' `curvature.damping`); the Bregman term
    averages over `bregman_data` (default: `train_data`). How each solve runs is `args` (`PBRFArguments`).
    `preconditioner`, a fitted EK-FAC (or K-FAC), changes only the optimizer's variables (u = M w with
    M = (Λ + λ)^(-1/2) in its eigenbasis). `progress`, if given, is called with 1 after each row.
    """
    args = args if args is not None else PBRFArguments()
    bregman_data, layers, indices = _checked_inputs(model, task, train_data, bregman_data, damping, layers, indices)
    n_bregman = num_rows(bregman_data)
    work, layers = working_copy(model, layers, args.dtype)
    wdt, dev = next(work.parameters()).dtype, next(work.parameters()).device

    def cast(b):
        return {k: (v.to(dev, wdt) if v.is_floating_point() else v.to(dev)) for k, v in b.items()}

    precondition = eigenbasis_preconditioner(preconditioner, layers, damping) if preconditioner is not None else None
    params = [p for l in layers for p in l.parameters()]
    lam = [float(damping[l.name]) for l in layers for _ in l.parameters()]
    queries = cast(queries)
    t0 = time.perf_counter()
    scores = torch.zeros(num_rows(queries), len(indices), dtype=torch.float64)
    steps = torch.zeros(len(indices), 2, dtype=torch.long)
    rel = torch.zeros(len(indices), 2, dtype=torch.float64)
    with restored(params) as theta_s, eval_mode(work), frozen_parameters(work):
        for p in params:
            p.requires_grad_(True)
        chunks = bregman_chunks(task, work, bregman_data, args.batch_size, cast)
        for j, m in enumerate(indices.tolist()):
            row = task.trim(cast({k: v[m : m + 1] for k, v in train_data.items()}))
            problem = Problem(work, task, params, theta_s, lam, chunks, n_bregman, row, args.epsilon)
            problem.precondition = precondition
            scores[:, j] = _solve_row(problem, work, task, queries, m, args, steps[j], rel[j])
            problem.set_params([torch.zeros_like(t) for t in theta_s])  # θs again for the next row's reference
            if progress is not None:
                progress(1)
    meta = _metadata(args, preconditioner, n_bregman, wdt, layers, damping)
    return PBRFResult(scores, indices, steps, rel, args.epsilon, time.perf_counter() - t0, meta)
