"""G = I without damping: the plain gradient dot product, the baseline every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Curvature, FitConfig, register


@dataclass
class IdentityConfig(FitConfig):
    """The identity fits nothing and is undamped: its λ is 0 whatever `damping` or `damping_factor` say."""

    damping_factor: float = field(default=0.0, metadata={"help": "Unused: the identity is undamped (λ = 0)."})


@register
class Identity(Curvature):
    name = "identity"
    config_class = IdentityConfig
    uses_labels = False
    batched_ihvp = True  # returns its input

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        curv = cls(layers, config)
        curv.damping = {l.name: 0.0 for l in layers}
        return curv

    def ihvp(self, grads):
        return dict(grads)

    def load_state(self, tensors):
        self.damping = {l.name: 0.0 for l in self.layers}  # as fitted, so a cached identity describes itself the same
