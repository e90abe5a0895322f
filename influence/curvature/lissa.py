"""LiSSA (Agarwal et al. 2017; paper Eq. 10): r_j = v + (I − α(G̃ + λI)) r_{j−1}, (G + λI)⁻¹v ≈ α r_J.

G̃ is a minibatch Gauss–Newton product Jᵀ H J v through autograd, over all tracked layers
at once (LiSSA keeps the cross-layer blocks that EK-FAC drops). Damping matches EK-FAC's
rule, λ_ℓ = factor · trace(G_ℓ)/dim_ℓ, with trace(G_ℓ) = E_seq‖∇_ℓ L(ŷ)‖² from sampled labels,
so both target the same damped G. The step α defaults to 0.5/(λ_max(G) + max_ℓ λ_ℓ), λ_max(G) estimated by
power iteration on minibatch products.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from ..batching import by_length, iter_batches, num_rows, sample_indices
from ..capture import eval_mode, frozen_parameters, sequence_gradients
from ..errors import InfluenceError
from ..passes import capture_batches, resolve_device
from .base import Curvature, FitConfig, layer_damping, register


@dataclass
class LissaConfig(FitConfig):
    """Options of the LiSSA recursion r_j = v + (I − α(G̃ + λI)) r_{j−1}."""

    batch_size: int = field(
        default=8,
        metadata={
            "help": "Sequences per minibatch: each Gauss–Newton product G̃ takes one, cycling over the fitting set "
            "(the damping's trace pass uses the same batches)."
        },
    )
    depth: int = field(default=200, metadata={"help": "Recursion steps J per solve: (G + λI)⁻¹v ≈ α r_J."})
    scale: float | None = field(
        default=None,
        metadata={
            "help": "The step α; null: α = 0.5/(λ_max + max_ℓ λ_ℓ), with λ_max the largest Rayleigh quotient of "
            "`power_iterations` power-iteration steps on minibatch Gauss–Newton products and λ_ℓ the fitted "
            "per-layer damping."
        },
    )
    labels: str = field(
        default="sampled",
        metadata={
            "keyed_when_changed": True,
            "help": "Targets of the damping's trace pass: 'sampled' from the model or 'true'.",
        },
    )
    power_iterations: int = field(
        default=20,
        metadata={
            "keyed_when_changed": True,
            "help": "Power-iteration steps that estimate λ_max for the default scale (unused when scale is set).",
        },
    )
    divergence_factor: float = field(
        default=10.0,
        metadata={
            "keyed_when_changed": True,
            "help": "A solve stops as diverged once ‖r‖ exceeds this × ‖v‖/(α·min_ℓ λ_ℓ).",
        },
    )


def gauss_newton_product(model, task, layers, batch, vec: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(1/B) Σ_b J_bᵀ H_b J_b v on one batch, v and the result in canonical (P, M+1) layout."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = [p for l in layers for p in l.parameters()]
    # the double-backward trick needs twice-differentiable attention: fused SDPA kernels are not, MATH is
    with frozen_parameters(model), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        for p in params:
            p.requires_grad_(True)
        out = task.forward(model, batch)
        w = torch.zeros_like(out, requires_grad=True)
        jt_w = torch.autograd.grad(out, params, grad_outputs=w, create_graph=True)
        v_params = [t.to(p.dtype) for l in layers for t, p in zip(l.to_parameter_grads(vec[l.name]), l.parameters())]
        jv = torch.autograd.grad(jt_w, w, grad_outputs=v_params)[0]
        hjv = task.output_hvp(out, batch, jv)
        res = torch.autograd.grad(out, params, grad_outputs=hjv)
    n = next(iter(batch.values())).shape[0]
    out_vec, i = {}, 0
    for l in layers:
        k = len(l.parameters())
        out_vec[l.name] = l.from_parameter_grads(list(res[i : i + k])) / n
        i += k
    return out_vec


def _dot(a, b):
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


@register
class LiSSA(Curvature):
    name = "lissa"
    config_class = LissaConfig
    cacheable = False
    uses_labels = True  # the damping's trace E_seq‖∇_ℓ L(ŷ)‖²

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        curv = cls(layers, config)
        curv.model, curv.task, curv.data = model, task, data
        curv.device = resolve_device(model, device)
        curv.indices = by_length(data, sample_indices(num_rows(data), config.max_sequences, config.seed))
        curv._fit_damping()
        curv.scale = config.scale if config.scale is not None else curv._auto_scale()
        curv._diagnostics = {}  # per-solve convergence, kept out of `info` (which keys cached results)
        curv.info = {
            "scale": f"{curv.scale:.6g}",
            "n_sequences": str(len(curv.indices)),
            "gauss_newton": "exact output Hessian, minibatches cycled over the fitting set",
        }
        return curv

    @property
    def diagnostics(self) -> dict:
        """`final_relative_step`: the largest ‖r_J − r_{J−1}‖/‖r_J‖ over the solves so far; `solves`: how many."""
        return self._diagnostics

    def with_damping(self, damping):
        new = super().with_damping(damping)
        new._diagnostics = {}  # the copy's own solves
        return new

    def _batches(self):
        return itertools.cycle(
            [b for _, b in iter_batches(self.data, self.config.batch_size, self.indices, self.device)]
        )

    def _fit_damping(self):
        trace = {l.name: 0.0 for l in self.layers}
        for _, _, a, ds in capture_batches(
            self.model,
            self.task,
            self.layers,
            self.data,
            self.config.batch_size,
            self.indices,
            self.device,
            self.config.labels,
            self.config.seed,
        ):
            for l in self.layers:
                trace[l.name] += float((sequence_gradients(a[l.name], ds[l.name]).double() ** 2).sum())
        n = len(self.indices)
        self.damping = {
            l.name: layer_damping(trace[l.name] / n / (l.shape[0] * l.shape[1]), self.config) for l in self.layers
        }

    def _auto_scale(self) -> float:
        g = torch.Generator().manual_seed(self.config.seed)
        x = {l.name: torch.randn(l.shape, generator=g, dtype=torch.float64) for l in self.layers}
        dtype = next(self.model.parameters()).dtype
        top = 0.0
        batches = self._batches()
        with eval_mode(self.model):
            for _ in range(self.config.power_iterations):
                norm = math.sqrt(_dot(x, x))
                x = {k: (v / norm).to(dtype).to(self.device) for k, v in x.items()}
                gx = gauss_newton_product(self.model, self.task, self.layers, next(batches), x)
                top = max(top, _dot(x, gx))
                x = gx
                if math.sqrt(_dot(x, x)) == 0.0:
                    break
        return 0.5 / (top + max(self.damping.values()) + 1e-30)

    def ihvp(self, grads):
        q = next(iter(grads.values())).shape[0]
        rows = [self._solve({k: v[i] for k, v in grads.items()}) for i in range(q)]
        return {k: torch.stack([r[k] for r in rows]) for k in grads}

    def _solve(self, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        alpha = self.scale
        v_norm = math.sqrt(_dot(v, v))
        limit = self.config.divergence_factor * v_norm / (alpha * max(min(self.damping.values()), 1e-30))
        r = {k: t.clone() for k, t in v.items()}
        batches = self._batches()
        step = float("nan")
        with eval_mode(self.model):
            for j in range(self.config.depth):
                gr = gauss_newton_product(self.model, self.task, self.layers, next(batches), r)
                new = {k: v[k] + r[k] - alpha * (gr[k] + self.damping[k] * r[k]) for k in r}
                if j == self.config.depth - 1:
                    last = {k: new[k] - r[k] for k in r}
                    step = math.sqrt(_dot(last, last))
                r = new
                norm = math.sqrt(_dot(r, r))
                if not math.isfinite(norm) or norm > limit:
                    raise InfluenceError(
                        f"LiSSA diverged at step {j + 1} (‖r‖={norm:.3g} > {limit:.3g}): lower curvature.scale "
                        f"(now {alpha:.3g}) or raise the damping"
                    )
        # how far from converged the recursion stopped: ‖r_J − r_{J−1}‖/‖r_J‖ (it shrinks like (1 − αλ)^J)
        step /= max(norm, 1e-300)
        self._diagnostics["final_relative_step"] = max(self._diagnostics.get("final_relative_step", 0.0), step)
        self._diagnostics["solves"] = self._diagnostics.get("solves", 0) + 1
        return {k: alpha * t for k, t in r.items()}
