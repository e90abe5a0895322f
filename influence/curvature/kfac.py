"""K-FAC: eigenvalues λ_S λ_Aᵀ of the Kronecker factors, scaled by T̄ (mean loss-bearing tokens per sequence).

A ⊗ S approximates the Fisher of one token; the per-sequence G that EK-FAC estimates is
≈ T̄ · A ⊗ S under token independence, so both methods target the same G and damping.
"""

from __future__ import annotations

import torch

from ..precision import with_precision
from .base import layer_damping, register
from .factors import KroneckerCurvature, basis_from_state, basis_state, fit_kronecker


@register
class KFAC(KroneckerCurvature):
    name = "kfac"
    batched_ihvp = True  # four matrix products per layer in the Kronecker eigenbasis

    def _set(self, basis, tokens_per_sequence: float):
        self.basis, self.tokens_per_sequence = basis, float(tokens_per_sequence)
        self.lam = {
            l.name: self.tokens_per_sequence * torch.outer(basis.lam_s[l.name], basis.lam_a[l.name])
            for l in self.layers
        }
        self.damping = {l.name: layer_damping(self.lam[l.name].mean(), self.config) for l in self.layers}
        self.info["eigenvalue_scale"] = f"mean loss-bearing tokens per sequence = {self.tokens_per_sequence:.6g}"

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        basis, _, stats = fit_kronecker(
            model, with_precision(task, config.precision), data, layers, config, device, eigenvalue_correction=False
        )
        curv = cls(layers, config)
        curv.info = {k: str(v) for k, v in stats.items()}
        curv._set(basis, stats["mean_tokens_per_sequence"])
        return curv

    def state(self):
        return {
            **basis_state(self.basis),
            "tokens_per_sequence": torch.tensor(self.tokens_per_sequence, dtype=torch.float64),
        }

    def load_state(self, tensors):
        self._set(basis_from_state(tensors, self.layers), float(tensors["tokens_per_sequence"]))
