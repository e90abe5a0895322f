"""The curvature interface, its typed configs, the registry, and the damping rule shared by all methods.

A method is a class with `fit(...)` and `ihvp(...)`, registered by name: adding one touches
one file and one config, and no caller.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InfluenceError
from ..modules import TrackedLayer


@dataclass
class FitConfig:
    """Options every method understands."""

    batch_size: int = 16
    labels: str = "sampled"          # "sampled" from the model (true Fisher) or "true" (empirical Fisher)
    seed: int = 0                    # keys the sampled labels and the fitting subset
    max_sequences: int | None = None  # fit on a random subset of this size
    damping_factor: float = 0.1      # λ_ℓ = damping_factor · mean eigenvalue of G_ℓ
    damping: float | None = None     # absolute λ for every layer instead of the factor

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
    """An approximation of (G + λI)⁻¹ for the tracked layers, block-diagonal across layers or not."""

    name: ClassVar[str]
    config_class: ClassVar[type[FitConfig]] = FitConfig
    #: whether `state()` holds everything needed to rebuild it (then it is cached on disk)
    cacheable: ClassVar[bool] = True

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
