"""G = I without damping: the plain gradient dot product, the baseline every method is compared with."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Curvature, FitConfig, register


@dataclass
class IdentityConfig(FitConfig):
    damping_factor: float = 0.0


@register
class Identity(Curvature):
    name = "identity"
    config_class = IdentityConfig

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        curv = cls(layers, config)
        curv.damping = {l.name: 0.0 for l in layers}
        return curv

    def ihvp(self, grads):
        return dict(grads)
