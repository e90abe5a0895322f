"""LiSSA (Agarwal et al. 2017; paper Eq. 10): r_j = v + (I − α(G̃_j + λI)) r_{j−1}, (G + λI)⁻¹v ≈ α r.

G̃_j is a minibatch Gauss–Newton product Jᵀ H J v through autograd, over all tracked layers at once (LiSSA keeps
the cross-layer blocks that EK-FAC drops). Damping matches EK-FAC's rule, λ_ℓ = factor · trace(G_ℓ)/dim_ℓ, with
trace(G_ℓ) = E_seq‖∇_ℓ L(ŷ)‖² from sampled labels, so both target the same damped G.

Three things make the estimate trustworthy rather than merely cheap:
- **A step stable for every minibatch.** The fitting set is split once into fixed minibatches; α defaults to
  margin/(max_b λ_max(G_b) + max_ℓ λ_ℓ), with λ_max(G_b) from power iteration on each batch, so that
  ‖I − α(G_b + λ)‖ ≤ 1 for every batch a step can draw (λ_max of the *mean* G, which a few cycled batches
  estimate, can be several times smaller than a single batch's, and then the recursion diverges).
- **An unbiased recursion, averaged.** Each step draws one fixed batch at random, with probability ∝ its rows, so
  E[G̃_j] = G and the iterates scatter around the solution instead of converging to the fixed point of one cycle
  (which is not the solution); the returned vector averages the final `averaging` share of the iterates and
  `repeats` independent recursions. One batch (a fitting set no larger than `batch_size`) is deterministic.
- **Its own error, measured.** Every solve reports the relative residual ‖(G + λ)x − v‖/‖v‖ of what it returns,
  from exact products over the whole fitting set (`diagnostics`); with `tolerance` the recursion goes on,
  doubling its depth, until the residual meets it (or `max_depth`; `diagnostics["converged"]` says which). A step
  whose iterate grows faster than a stable recursion can (‖r_j‖ > ‖r_{j−1}‖ + ‖v‖)
  is refused at once, naming the step size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..batching import by_length, iter_batches, num_rows, sample_indices
from ..capture import eval_mode, sequence_gradients
from ..errors import InfluenceError
from ..gauss_newton import gauss_newton_product
from ..passes import capture_batches, resolve_device
from .base import Curvature, FitConfig, layer_damping, register


@dataclass
class LissaConfig(FitConfig):
    """Options of the LiSSA recursion r_j = v + (I − α(G̃_j + λI)) r_{j−1}."""

    batch_size: int = field(
        default=8,
        metadata={
            "help": "Sequences per fixed minibatch: the fitting set is split once into such batches and each step "
            "draws one at random (a fitting set no larger than this is one batch: the recursion is then exact)."
        },
    )
    depth: int = field(default=200, metadata={"help": "Recursion steps J per solve (per repeat)."})
    scale: float | None = field(
        default=None,
        metadata={
            "help": "The step α; null: α = margin/(max_b λ_max(G_b) + max_ℓ λ_ℓ), λ_max(G_b) from "
            "`power_iterations` steps on each fixed minibatch b and λ_ℓ the per-layer damping."
        },
    )
    labels: str = field(
        default="sampled",
        metadata={"keyed_when_changed": True, "help": "Targets of the damping's trace pass: 'sampled' or 'true'."},
    )
    power_iterations: int = field(
        default=10,
        metadata={"keyed_when_changed": True, "help": "Power-iteration steps per fixed minibatch (default scale)."},
    )
    margin: float = field(
        default=0.5,
        metadata={
            "help": "α·(λ_max + λ) of the default step, in (0, 2): below 2 is stable, and 0.5 leaves room for "
            "power iteration's underestimate of λ_max."
        },
    )
    averaging: float = field(
        default=0.5,
        metadata={
            "help": "With several minibatches: the final share of the iterates averaged into the solution "
            "(0: the last iterate only)."
        },
    )
    repeats: int = field(default=1, metadata={"help": "Independent recursions averaged per solve."})
    tolerance: float | None = field(
        default=None,
        metadata={
            "help": "Double the depth (up to max_depth) until the relative residual ‖(G+λ)x − v‖/‖v‖ is at "
            "most this; null: `depth` steps, the residual only reported."
        },
    )
    max_depth: int = field(default=6400, metadata={"help": "The most steps `tolerance` may take a solve to."})

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.margin < 2:
            raise InfluenceError(f"lissa margin={self.margin}: give a number in (0, 2) (2 is the stability limit)")
        if not 0 <= self.averaging < 1:
            raise InfluenceError(f"lissa averaging={self.averaging}: give a share in [0, 1)")
        for key in ("batch_size", "depth", "power_iterations", "repeats", "max_depth"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise InfluenceError(f"lissa {key}={getattr(self, key)!r}: give an integer >= 1")
        if self.tolerance is not None and not self.tolerance > 0:
            raise InfluenceError(f"lissa tolerance={self.tolerance}: give a number > 0, or null")


def _dot(a, b):
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def _norm(a) -> float:
    return math.sqrt(_dot(a, a))


@register
class LiSSA(Curvature):
    name = "lissa"
    config_class = LissaConfig
    cacheable = False
    uses_labels = True  # the damping's trace E_seq‖∇_ℓ L(ŷ)‖²
    batched_ihvp = False  # a recursion of `depth` Gauss–Newton products per vector

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        curv = cls(layers, config)
        curv.model, curv.task, curv.data = model, task, data
        curv.device = resolve_device(model, device)
        curv.indices = by_length(data, sample_indices(num_rows(data), config.max_sequences, config.seed))
        parts = list(iter_batches(data, config.batch_size, curv.indices, curv.device))
        curv.batches = [b for _, b in parts]
        curv.weights = torch.tensor([len(sel) for sel, _ in parts], dtype=torch.float64) / len(curv.indices)
        curv._fit_damping()
        curv.lambda_max = curv._batch_lambda_max() if config.scale is None else float("nan")
        curv.scale = curv._step()
        curv._diagnostics = {}  # per-solve convergence, kept out of `info` (which keys cached results)
        curv.info = {
            "scale": f"{curv.scale:.6g}",
            "n_sequences": str(len(curv.indices)),
            "n_batches": str(len(curv.batches)),
            "batch_lambda_max": f"{curv.lambda_max:.6g}",
            "gauss_newton": "exact output Hessian; each step draws one fixed minibatch, probability ∝ its rows",
        }
        return curv

    @property
    def diagnostics(self) -> dict:
        """`relative_residual`: the largest ‖(G + λ)x − v‖/‖v‖ of the solutions returned so far (exact products over
        the fitting set); `depth`: the most steps a solve took; `solves`: how many."""
        return self._diagnostics

    def with_damping(self, damping):
        new = super().with_damping(damping)
        new.scale = new._step()  # stable for the new damping too
        new.info["scale"] = f"{new.scale:.6g}"
        new._diagnostics = {}  # the copy's own solves
        return new

    def _step(self) -> float:
        if self.config.scale is not None:
            return float(self.config.scale)
        return self.config.margin / (self.lambda_max + max(self.damping.values()) + 1e-30)

    def _fit_damping(self):
        trace = {l.name: 0.0 for l in self.layers}
        cfg = self.config
        passes = capture_batches(
            self.model,
            self.task,
            self.layers,
            self.data,
            cfg.batch_size,
            self.indices,
            self.device,
            cfg.labels,
            cfg.seed,
        )
        for _, _, a, ds in passes:
            for l in self.layers:
                trace[l.name] += float((sequence_gradients(a[l.name], ds[l.name]).double() ** 2).sum())
        n = len(self.indices)
        self.damping = {l.name: layer_damping(trace[l.name] / n / (l.shape[0] * l.shape[1]), cfg) for l in self.layers}

    def _product(self, batch, x):
        return gauss_newton_product(self.model, self.task, self.layers, batch, x)

    def _batch_lambda_max(self) -> float:
        """max_b λ_max(G_b): the largest Rayleigh quotient of power iteration on each fixed minibatch."""
        g = torch.Generator().manual_seed(self.config.seed)
        dtype = next(self.model.parameters()).dtype
        top = 0.0
        with eval_mode(self.model):
            for batch in self.batches:
                x = {l.name: torch.randn(l.shape, generator=g, dtype=torch.float64) for l in self.layers}
                for _ in range(self.config.power_iterations):
                    norm = _norm(x)
                    if norm == 0.0:
                        break
                    x = {k: (v / norm).to(dtype).to(self.device) for k, v in x.items()}
                    gx = self._product(batch, x)
                    top = max(top, _dot(x, gx))
                    x = gx
        return top

    def damped_product(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(G + λ)x with G the mean Gauss–Newton over the whole fitting set (every fixed batch, weighted by rows)."""
        out = {k: self.damping[k] * t for k, t in x.items()}
        with eval_mode(self.model):
            for w, batch in zip(self.weights.tolist(), self.batches):
                for k, t in self._product(batch, x).items():
                    out[k] = out[k] + w * t
        return out

    def relative_residual(self, x: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> float:
        ax = self.damped_product(x)
        return _norm({k: ax[k] - v[k] for k in v}) / max(_norm(v), 1e-300)

    def ihvp(self, grads):
        q = next(iter(grads.values())).shape[0]
        rows = [self._solve({k: v[i] for k, v in grads.items()}, i) for i in range(q)]
        return {k: torch.stack([r[k] for r in rows]) for k in grads}

    def _solve(self, v: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        """α·r for one vector: `repeats` recursions of `depth` steps; while above `tolerance`, each recursion goes on
        for as many steps again (continued, not restarted) and the solution is the average of the new steps'
        final `averaging` share, so doubling the depth costs the new steps only."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        runs = [_Recursion(self, v, g) for _ in range(cfg.repeats)]
        depth = cfg.depth
        while True:
            for run in runs:
                run.advance(depth)
            x = {k: sum(r.solution[k] for r in runs) / len(runs) for k in v}
            residual = self.relative_residual(x, v)
            if cfg.tolerance is None or residual <= cfg.tolerance or 2 * depth > cfg.max_depth:
                break
            depth *= 2
        d = self._diagnostics
        d["relative_residual"] = max(d.get("relative_residual", 0.0), residual)
        d["depth"], d["solves"] = max(d.get("depth", 0), depth), d.get("solves", 0) + 1
        if cfg.tolerance is not None:
            d["converged"] = d.get("converged", True) and residual <= cfg.tolerance
        return x


class _Recursion:
    """One LiSSA recursion r_j = v + (I − α(G̃_j + λI)) r_{j−1} that can be continued: `advance(depth)` runs it to
    `depth` steps in all and sets `solution` to α × the mean of the final `averaging` share of the steps taken in
    this call (the last iterate alone with one deterministic batch)."""

    def __init__(self, curv: LiSSA, v: dict[str, torch.Tensor], g: torch.Generator):
        self.curv, self.v, self.g = curv, v, g
        self.v_norm = _norm(v)
        self.r, self.norm, self.steps = {k: t.clone() for k, t in v.items()}, self.v_norm, 0
        self.solution = None

    def advance(self, depth: int) -> None:
        curv, v, alpha = self.curv, self.v, self.curv.scale
        stochastic = len(curv.batches) > 1
        window = max(1, int(curv.config.averaging * depth)) if stochastic else 1
        start = max(depth - window, self.steps)
        total, r = None, self.r
        with eval_mode(curv.model):
            for j in range(self.steps, depth):
                b = int(torch.multinomial(curv.weights, 1, generator=self.g)) if stochastic else 0
                gr = curv._product(curv.batches[b], r)
                r = {k: v[k] + r[k] - alpha * (gr[k] + curv.damping[k] * r[k]) for k in r}
                norm = _norm(r)
                if not math.isfinite(norm) or norm > (1 + 1e-3) * (self.norm + self.v_norm):
                    raise InfluenceError(
                        f"LiSSA diverges: at step {j + 1} ‖r‖ grew from {self.norm:.3g} to {norm:.3g}, faster than a "
                        f"stable step allows: lower curvature.scale (now {alpha:.3g}) or curvature.margin, or raise "
                        "the damping"
                    )
                self.norm = norm
                if j >= start:
                    total = r if total is None else {k: total[k] + r[k] for k in r}
        self.r, self.steps = r, depth
        self.solution = {k: alpha * t / (depth - start) for k, t in total.items()}
