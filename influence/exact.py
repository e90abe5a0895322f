"""The exact damped Gauss–Newton influence: (G + λI)⁻¹∇f over all tracked layers jointly (spec §5, a reference).

G = (1/N) Σ_n J_nᵀ H_n J_n over the N fitting rows, with the task's exact output Hessian H (no sampled labels)
and every block of it, the cross-layer ones included; λ is per layer, the estimators' own (`Curvature.damping`).
It is the PBRF's linearization: the Hessian of the proximal Bregman objective at θs is G + λI, so the PBRF
and this solve differ only by the PBRF's nonlinearity (ε, the optimizer's tolerance), and an estimator's
distance to it is the estimator's error alone.

Two solvers of (G + λI)x = g, both on Gauss–Newton products Σ_b (n_b/N) J_bᵀH_bJ_b v summed over every fitting
batch (`GaussNewtonOperator`, in float64 on a working copy of the model):
- dense: G built column by column (parameter count ≤ `dense_max_params`), then a Cholesky solve;
- cg: conjugate gradients, preconditioned by a fitted curvature if one is given (EK-FAC with the same λ: the
  same answer in fewer iterations), restarted from the true residual until it is ≤ `tol` or `max_iter` products.
Either way the achieved relative residual max_q ‖(G + λI)x_q − g_q‖/‖g_q‖ is measured by a last product, so
a solve says how exact it is. Vectors are per layer in the canonical (Q, P, M+1) layout, bias folded in.

`ExactGaussNewton` wraps a solver as a `Curvature` (not registered: nothing fits it by name), so that
`compute_scores` scores with it exactly as with any estimator: same sign, scale and layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .batching import by_length, iter_batches, num_rows
from .capture import eval_mode
from .curvature import Curvature, FitConfig
from .errors import InfluenceError
from .gauss_newton import batch_products
from .modules import TrackedLayer
from .passes import resolve_device
from .pbrf.objective import working_copy

METHODS = ("auto", "dense", "cg")


@dataclass
class ExactSolve:
    """The solution of (G + λI)x = g for a stack of Q right-hand sides, and how exact it is."""

    x: dict[str, torch.Tensor]  # per layer (Q, P, M+1), float64
    relative_residual: float  # max over the Q solves of ‖(G + λI)x − g‖/‖g‖
    residuals: torch.Tensor  # (Q,) each solve's
    iterations: int  # conjugate-gradient iterations (dense: 0)
    products: int  # Gauss–Newton products over the whole fitting set (each Q vectors)
    method: str  # dense or cg
    seconds: float
    info: dict = field(default_factory=dict)


class GaussNewtonOperator:
    """v ↦ G v, G = (1/N) Σ_n J_nᵀ H_n J_n over every row of `data`, on flat (Q, n) stacks of canonical vectors.

    Runs on a working copy of the model in `dtype` (float64 by default, so that a solve can reach 1e-10); the
    batches are sorted by length and trimmed of padding once."""

    def __init__(self, model, task, layers, data, batch_size: int = 64, dtype=torch.float64, device=None):
        self.model, self.layers = working_copy(model, layers, dtype)
        self.task, self.dtype = task, dtype
        self.device = resolve_device(self.model, device)
        self.n = num_rows(data)
        task.check_batch(data, "the Gauss–Newton data")
        order = by_length(data, torch.arange(self.n))
        cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
        self.batches = [
            {k: cast(v) for k, v in b.items()} for _, b in iter_batches(data, batch_size, order, self.device)
        ]
        self.sizes = [l.shape[0] * l.shape[1] for l in self.layers]
        self.products = 0

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, vecs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-layer (Q, P, M+1) as (Q, n) in `dtype`."""
        return torch.cat([vecs[l.name].reshape(vecs[l.name].shape[0], -1).to(self.dtype) for l in self.layers], 1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, k = {}, 0
        for l, s in zip(self.layers, self.sizes):
            out[l.name] = flat[:, k : k + s].reshape(flat.shape[0], *l.shape)
            k += s
        return out

    def damping_vector(self, damping: dict[str, float]) -> torch.Tensor:
        missing = [l.name for l in self.layers if l.name not in damping]
        if missing:
            raise InfluenceError(f"damping has no λ for layers {missing}: pass the fitted curvature's `damping` dict")
        return torch.cat(
            [torch.full((s,), float(damping[l.name]), dtype=self.dtype) for l, s in zip(self.layers, self.sizes)]
        ).to(self.device)

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        """G v for each row v of `flat` (Q, n)."""
        flat = flat.to(self.device, self.dtype)
        total = torch.zeros_like(flat)
        with eval_mode(self.model):
            for batch in self.batches:
                total += batch_products(self.model, self.task, self.layers, batch, flat)
        self.products += 1
        return total / self.n

    def matrix(self, chunk: int = 256) -> torch.Tensor:
        """G itself, (n, n), built column by column (symmetrized against rounding)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        g = torch.cat([self(eye[i : i + chunk]) for i in range(0, self.dim, chunk)])
        return (g + g.T) / 2


def _relative_residuals(op, lam, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖(G + λ)x − b‖/‖b‖ per row, by one more product."""
    r = op(x) + lam * x - b
    return r.norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)


def _pcg(op, lam, b, x, precondition, tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    """Preconditioned conjugate gradients on (G + λ)x = b from x, every row at once, each stopping at its own
    recursive relative residual ≤ tol; (x, iterations)."""
    r = b - (op(x) + lam * x)
    b_norm = b.norm(dim=1).clamp_min(1e-300)
    z = precondition(r)
    p, rz = z.clone(), (r * z).sum(1)
    active = (r.norm(dim=1) / b_norm > tol).nonzero().flatten()
    it = 0
    while len(active) and it < max_iter:
        pa = p[active]
        ap = op(pa) + lam * pa
        alpha = rz[active] / (pa * ap).sum(1)
        x[active] += alpha[:, None] * pa
        r[active] -= alpha[:, None] * ap
        it += 1
        done = r[active].norm(dim=1) / b_norm[active] <= tol
        keep = active[~done]
        if len(keep):
            z_k = precondition(r[keep])
            rz_new = (r[keep] * z_k).sum(1)
            p[keep] = z_k + (rz_new / rz[keep])[:, None] * p[keep]
            rz[keep] = rz_new
        active = keep
    return x, it


def _solve_cg(op, lam, b, precondition, tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """CG restarted from the true residual while it exceeds tol and iterations remain; (x, residuals, iterations)."""
    x, used = torch.zeros_like(b), 0
    res = torch.ones(b.shape[0], dtype=b.dtype)
    for _ in range(10):
        x, it = _pcg(op, lam, b, x, precondition, tol, max_iter - used)
        used += it
        res = _relative_residuals(op, lam, x, b).cpu()
        if bool((res <= tol).all()) or used >= max_iter or it == 0:
            break
    return x, res, used


def _preconditioner(op: GaussNewtonOperator, curvature: Curvature | None):
    """r ↦ M r with M the fitted curvature's (G̃ + λ)⁻¹ (symmetric positive definite), or the identity."""
    if curvature is None:
        return lambda r: r.clone()
    return lambda r: op.flatten(curvature.ihvp(op.unflatten(r.to(op.dtype)))).to(op.device)


def exact_solve(
    op: GaussNewtonOperator,
    grads: dict[str, torch.Tensor],
    damping: dict[str, float],
    method: str = "auto",
    tol: float = 1e-10,
    max_iter: int = 1000,
    preconditioner: Curvature | None = None,
    dense_max_params: int = 2000,
    dense_matrix: torch.Tensor | None = None,
) -> ExactSolve:
    """(G + λI)⁻¹ g for every query's g (per layer (Q, P, M+1)) with an operator already built; see `exact_ihvp`.
    `dense_matrix`: G from `op.matrix()`, to reuse it across dampings."""
    if method not in METHODS:
        raise InfluenceError(f"exact method {method!r}: use one of {', '.join(METHODS)}")
    if method == "auto":
        method = "dense" if op.dim <= dense_max_params else "cg"
    lam = op.damping_vector(damping)
    t0 = time.perf_counter()
    b = op.flatten(grads).to(op.device)
    before = op.products
    if method == "dense":
        g = dense_matrix if dense_matrix is not None else op.matrix()
        x = torch.linalg.solve(g + torch.diag(lam), b.T).T
        res, iterations = _relative_residuals(op, lam, x, b).cpu(), 0
    else:
        precondition = _preconditioner(op, preconditioner)
        x, res, iterations = _solve_cg(op, lam, b, precondition, tol, max_iter)
    if not torch.isfinite(x).all():
        raise InfluenceError("the exact Gauss–Newton solve is not finite: raise the damping")
    return ExactSolve(
        x=op.unflatten(x),
        relative_residual=float(res.max()) if len(res) else 0.0,
        residuals=res,
        iterations=iterations,
        products=op.products - before,
        method=method,
        seconds=time.perf_counter() - t0,
        info={"preconditioner": preconditioner.name if preconditioner is not None else "none", "n_params": op.dim},
    )


def exact_ihvp(
    model,
    task,
    layers: list[TrackedLayer],
    data: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    damping: dict[str, float],
    method: str = "auto",
    tol: float = 1e-10,
    max_iter: int = 1000,
    preconditioner: Curvature | None = None,
    batch_size: int = 64,
    dense_max_params: int = 2000,
) -> ExactSolve:
    """(G + λI)⁻¹ g over all tracked `layers` jointly, G the exact Gauss–Newton over the rows of `data`.

    `grads`: per layer (Q, P, M+1), e.g. `influence.gradients.query_gradients`; `damping`: λ per layer (a fitted
    curvature's `damping`). `method`: dense (≤ `dense_max_params` parameters under auto), cg (to relative residual
    `tol`, at most `max_iter` iterations, preconditioned by a fitted `preconditioner` if given). The result's `x`
    is float64; `relative_residual` is measured, not assumed."""
    op = GaussNewtonOperator(model, task, layers, data, batch_size)
    return exact_solve(op, grads, damping, method, tol, max_iter, preconditioner, dense_max_params)


class ExactGaussNewton(Curvature):
    """The exact damped Gauss–Newton inverse as a `Curvature`: `ihvp` solves (G + λI)x = g over every tracked layer
    jointly. `diagnostics`: `relative_residual` (max over its solves), `solves`, `iterations`, `products`, `method`."""

    name = "exact_gn"
    cacheable = False
    batched_ihvp = False  # a joint solve per call, its residual measured with products over the whole fitting set

    @classmethod
    def fit(cls, model, task, data, layers, config=None, device=None, damping=None, **solver):
        """On the rows of `data`, with λ per layer `damping` (required); `solver`: `exact_solve`'s options and
        `batch_size`. `preconditioner` (an attribute, settable per damping): a fitted curvature with the same λ."""
        if damping is None:
            raise InfluenceError("the exact Gauss–Newton needs a damping dict: pass a fitted curvature's `damping`")
        curv = cls(layers, config if config is not None else FitConfig())
        curv.operator = GaussNewtonOperator(model, task, layers, data, solver.pop("batch_size", 64), device=device)
        curv.preconditioner = solver.pop("preconditioner", None)  # set it per damping: a curvature with the same λ
        curv.solver, curv._cache = solver, {}  # the dense G, shared by the copies `with_damping` makes
        curv.damping = {l.name: float(damping[l.name]) for l in layers}
        curv._diagnostics = {}
        curv.info = {"gauss_newton": "exact output Hessian, all tracked layers jointly (cross-layer blocks kept)"}
        return curv

    @property
    def diagnostics(self) -> dict:
        return self._diagnostics

    def with_damping(self, damping):
        new = super().with_damping(damping)
        new._diagnostics = {}
        return new

    def ihvp(self, grads):
        op, opts = self.operator, dict(self.solver)
        method = opts.get("method", "auto")
        if method == "dense" or (method == "auto" and op.dim <= opts.get("dense_max_params", 2000)):
            if "G" not in self._cache:
                self._cache["G"] = op.matrix()
            opts["dense_matrix"] = self._cache["G"]
        sol = exact_solve(op, grads, self.damping, preconditioner=self.preconditioner, **opts)
        d = self._diagnostics
        d["relative_residual"] = max(d.get("relative_residual", 0.0), sol.relative_residual)
        d["solves"] = d.get("solves", 0) + len(sol.residuals)
        d["iterations"] = d.get("iterations", 0) + sol.iterations
        d["products"] = d.get("products", 0) + sol.products
        d["method"] = sol.method
        dtype = next(iter(grads.values())).dtype
        return {k: v.to(dtype) for k, v in sol.x.items()}
