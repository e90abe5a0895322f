"""The curvature interface, its typed configs, the registry, and the damping rule shared by all methods.

A method is a class with `fit(...)` and `ihvp(...)`, registered by name, that declares what it needs and
keeps (`stores_factors`, `uses_labels`, `cacheable`, `batched_ihvp`, `memory`): callers branch on these, never
on names.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import InfluenceError
from ..modules import TrackedLayer


@dataclass
class FitConfig:
    """Options every method understands."""

    batch_size: int = field(default=16, metadata={"help": "Training sequences per fitting pass."})
    labels: str = field(
        default="sampled",
        metadata={
            "help": "Targets of the fitted loss: 'sampled' from the model (true Fisher) or 'true' (empirical Fisher)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Keys the sampled labels and the fitting subset."})
    max_sequences: int | None = field(
        default=None, metadata={"help": "Fit on a random subset of this many training sequences (null: all of them)."}
    )
    damping_factor: float = field(
        default=0.1, metadata={"help": "λ_ℓ = damping_factor × the mean eigenvalue of G_ℓ, per tracked layer."}
    )
    damping: float | None = field(
        default=None,
        metadata={"help": "An absolute λ for every layer instead of damping_factor (null: use the factor)."},
    )

    def __post_init__(self):
        if self.labels not in ("sampled", "true"):
            raise InfluenceError(f"labels must be 'sampled' or 'true', got {self.labels!r}")
        if self.damping is not None and self.damping < 0 or self.damping_factor < 0:
            raise InfluenceError("damping must be non-negative")


CURVATURES: dict[str, type["Curvature"]] = {}


def register(cls: type["Curvature"]) -> type["Curvature"]:
    CURVATURES[cls.name] = cls
    return cls


def get_curvature_class(name: str) -> type["Curvature"]:
    if name not in CURVATURES:
        raise InfluenceError(f"unknown curvature {name!r}: choose one of {sorted(CURVATURES)}")
    return CURVATURES[name]


def make_config(cls: type["Curvature"], options: dict) -> FitConfig:
    """Build the method's typed config, refusing keys it does not know."""
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InfluenceError(f"curvature {cls.name!r} has no option(s) {unknown}: valid options are {sorted(fields)}")
    return cls.config_class(**options)


def layer_damping(mean_eigenvalue: float, config: FitConfig) -> float:
    return float(config.damping) if config.damping is not None else config.damping_factor * float(mean_eigenvalue)


class Curvature(ABC):
    """An approximation of (G + λI)⁻¹ for the tracked layers, block-diagonal across layers or not.

    `info` holds strings that describe the fit (counts, conventions); they enter `describe()`, so they key
    cached results and are saved with the factors. Their names must not repeat a config field's.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[FitConfig]] = FitConfig
    #: whether `state()` holds everything needed to rebuild it (then it is cached on disk)
    cacheable: ClassVar[bool] = True
    #: whether the fit keeps per-layer Kronecker factors (A, S, their eigenbases, Λ): see `memory`
    stores_factors: ClassVar[bool] = False
    #: whether fitting backpropagates the training loss with `config.labels` (sampled ones keyed by `config.seed`)
    uses_labels: ClassVar[bool] = False
    #: whether its ihvp of many vectors at once costs about one matrix product per layer, so that it can be applied
    #: to every candidate's gradient (unit-normalized scores need ‖∇L(z_m)‖_M of each); False: a solve per vector
    batched_ihvp: ClassVar[bool] = False

    def __init__(self, layers: list[TrackedLayer], config: FitConfig):
        self.layers = layers
        self.config = config
        self.damping: dict[str, float] = {}
        self.info: dict[str, str] = {}

    @classmethod
    @abstractmethod
    def fit(cls, model, task, data, layers, config, device=None) -> "Curvature":
        """Estimate the curvature from training data."""

    @abstractmethod
    def ihvp(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(G + λI)⁻¹ v for a stack of vectors per layer, each layer's given as (Q, P, M+1)."""

    @classmethod
    def memory(cls, shape: tuple[int, int], num_blocks: int = 1) -> dict[str, int]:
        """Bytes the fitted method keeps for one layer of shape (P, M+1), per part: A, S, eigenvectors, lambda.

        The default keeps nothing per layer (the query gradients are counted by the memory plan itself)."""
        return {"A": 0, "S": 0, "eigenvectors": 0, "lambda": 0}

    @property
    def diagnostics(self) -> dict:
        """How the method's solves went (e.g. LiSSA's convergence); never part of `describe()`. Empty by default."""
        return {}

    def eigendecomposition(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(Q_S, Q_A, Λ) with G_ℓ ≈ (Q_S ⊗ Q_A) diag(vec Λ) (Q_S ⊗ Q_A)ᵀ, Λ of the layer's shape (P, M+1), for
        a method that fits G_ℓ in a Kronecker eigenbasis; None for the others and for untracked layers."""
        return None

    def with_damping(self, damping: float | dict[str, float]) -> "Curvature":
        """A copy that uses an absolute λ: one value for every layer, or one per layer (such as another method's
        `damping`, so that both target the same (G + λI)⁻¹). The fitted state is shared, not copied."""
        if isinstance(damping, dict):
            missing = [l.name for l in self.layers if l.name not in damping]
            if missing:
                raise InfluenceError(f"damping has no λ for layers {missing}: give one per tracked layer")
            per_layer = {l.name: damping[l.name] for l in self.layers}
        else:
            per_layer = {l.name: float(damping) for l in self.layers}
        if any(not v >= 0 for v in per_layer.values()):
            raise InfluenceError("damping must be non-negative")
        new = copy.copy(self)
        if not isinstance(damping, dict):
            new.config = dataclasses.replace(self.config, damping=float(damping))
        new.damping, new.info = per_layer, dict(self.info)
        return new

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state()`."""

    def describe(self) -> dict[str, str]:
        """Metadata written beside every result: method, damping, conventions."""
        return {
            "curvature": self.name,
            **{k: str(v) for k, v in dataclasses.asdict(self.config).items() if k != "damping"},
            "damping_absolute": str(self.config.damping),
            "damping": ";".join(f"{k}={v:.6g}" for k, v in self.damping.items()),
            **self.info,
        }

    @classmethod
    def described_config_keys(cls) -> set[str]:
        """The keys of `describe()` that come from the method and its config, i.e. every key but `info`'s."""
        return {"curvature", "damping_absolute", "damping", *(f.name for f in dataclasses.fields(cls.config_class))}
