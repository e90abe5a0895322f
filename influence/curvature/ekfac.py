"""EK-FAC (George et al. 2018; paper §2.2.3): Kronecker eigenbasis, eigenvalues re-fitted per sequence."""
from __future__ import annotations

from ..precision import with_precision
from .base import Curvature, layer_damping, register
from .factors import (KroneckerConfig, basis_from_state, basis_state, eigenbasis_ihvp,
                      fit_kronecker)


@register
class EKFAC(Curvature):
    name = "ekfac"
    config_class = KroneckerConfig

    def _set_eigenvalues(self, basis, lam):
        self.basis, self.lam = basis, lam
        self.damping = {l.name: layer_damping(lam[l.name].mean(), self.config) for l in self.layers}

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        basis, lam, stats = fit_kronecker(model, with_precision(task, config.precision), data, layers, config, device, eigenvalue_correction=True)
        curv = cls(layers, config)
        curv._set_eigenvalues(basis, lam)
        curv.info = {k: str(v) for k, v in stats.items()}
        return curv

    def ihvp(self, grads):
        out = {}
        for l in self.layers:
            b = self.basis
            denom = self.lam[l.name] + self.damping[l.name]
            out[l.name] = eigenbasis_ihvp(grads[l.name], b.q_s[l.name], b.q_a[l.name], denom.to(b.q_s[l.name].device))
        return out

    def state(self):
        return {**basis_state(self.basis), **{f"{k}/lambda": v for k, v in self.lam.items()}}

    def load_state(self, tensors):
        basis = basis_from_state(tensors, self.layers)
        self._set_eigenvalues(basis, {l.name: tensors[f"{l.name}/lambda"] for l in self.layers})
