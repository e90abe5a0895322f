"""EK-FAC (George et al. 2018; paper §2.2.3): Kronecker eigenbasis, eigenvalues re-fitted per sequence."""

from __future__ import annotations

from ..precision import with_precision
from .base import layer_damping, register
from .factors import KroneckerCurvature, basis_from_state, basis_state, fit_kronecker


@register
class EKFAC(KroneckerCurvature):
    name = "ekfac"
    batched_ihvp = True  # four matrix products per layer in the Kronecker eigenbasis

    def _set_eigenvalues(self, basis, lam):
        self.basis, self.lam = basis, lam
        self.damping = {l.name: layer_damping(lam[l.name].mean(), self.config) for l in self.layers}

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        basis, lam, stats = fit_kronecker(
            model, with_precision(task, config.precision), data, layers, config, device, eigenvalue_correction=True
        )
        curv = cls(layers, config)
        curv._set_eigenvalues(basis, lam)
        curv.info = {k: str(v) for k, v in stats.items()}
        return curv

    def state(self):
        return {**basis_state(self.basis), **{f"{k}/lambda": v for k, v in self.lam.items()}}

    def load_state(self, tensors):
        basis = basis_from_state(tensors, self.layers)
        self._set_eigenvalues(basis, {l.name: tensors[f"{l.name}/lambda"] for l in self.layers})
