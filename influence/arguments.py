"""Typed options of the library's long-running computations, passed whole (kronfluence's `arguments.py` style).

Each field documents itself in `metadata["help"]`, and `__post_init__` refuses a bad value in one line
that says what to use instead. The curvature methods' options are the configs in `curvature/` (FitConfig
and its subclasses), chosen by method name; these are the options of a scan and of the PBRF.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from .errors import InfluenceError

#: "adam" is the paper's optimizer; "lbfgs" minimizes the same objective to the same tolerance in far fewer
#: evaluations when the damped G is ill-conditioned (Adam stalls there: see the accuracy study's report)
OPTIMIZERS = ("adam", "lbfgs")

#: how scores are normalized: "none" is the influence itself; "unit" divides it by ‖∇f_q‖_M·‖∇L(z_m)‖_M, M the damped
#: inverse curvature, giving the cosine in the preconditioned space (TrackStar, RelatIF), a value in [−1, 1]
NORMALIZATIONS = ("none", "unit")

A = TypeVar("A")


def is_int(value) -> bool:
    """An integer that is not a bool (YAML's `true` would pass `isinstance(v, int)`); numpy's integers count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_device(where: str, device) -> None:
    """Refuse a device this torch build cannot use when the options are read, not at the first `.to(device)`
    deep inside a run (torch's own error there is a traceback about lazy CUDA init or device-string parsing)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InfluenceError(f"{where}={device!r} is not a device: use cpu or cuda (cuda:<i> for one GPU)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InfluenceError(
                f"{where}={device!r} but this torch build has no CUDA (torch.cuda.is_available() is False): "
                f"use {where}=cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InfluenceError(
                f"{where}={device!r} but only {n} CUDA device(s) are visible: use cuda:0 to cuda:{n - 1}"
            )
        return
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise InfluenceError(
            f"{where}={device!r}: no {dev.type} device is available to this torch build: use cpu or cuda"
        )


def check_normalize(value) -> None:
    """Refuse a `normalize` value that is not one of NORMALIZATIONS, in one line listing them."""
    if not isinstance(value, str) or value not in NORMALIZATIONS:
        raise InfluenceError(f"normalize must be one of {list(NORMALIZATIONS)}, got {value!r}")


def from_options(cls: type[A], options: dict) -> A:
    """`cls(**options)`, refusing keys that are not fields of `cls` in one line that lists the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InfluenceError(f"{cls.__name__} has no option(s) {unknown}: valid options are {sorted(fields)}")
    return cls(**options)


@dataclass
class ScanArguments:
    """How `scan` batches, checkpoints and stores the queries; none of these change a score except `query_rank`
    and `normalize`."""

    batch_size: int = field(default=16, metadata={"help": "Training sequences per capture pass."})
    query_rank: int | None = field(
        default=None,
        metadata={
            "help": "Rank r of each layer's stored preconditioned query gradient (truncated SVD, paper §3.2.2); "
            "None keeps it at full rank."
        },
    )
    chunk_batches: int = field(
        default=8,
        metadata={"help": "Batches per checkpointed chunk: a killed scan resumes from its last finished chunk."},
    )
    device: str | None = field(
        default=None, metadata={"help": "Device of the passes (e.g. 'cuda'); None uses the model's."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (main rank only)."})
    normalize: str = field(
        default="none",
        metadata={
            "help": "'none': the influence I; 'unit': I / (‖∇f_q‖_M·‖∇L(z_m)‖_M), the cosine in the preconditioned "
            "space (TrackStar, RelatIF), so that a few high-gradient-norm sequences do not dominate the ranking; "
            "needs a curvature with batched_ihvp."
        },
    )

    def __post_init__(self):
        check_normalize(self.normalize)
        for key in ("batch_size", "chunk_batches"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise InfluenceError(f"scan {key} must be >= 1 (an integer), got {value!r}")
        if self.query_rank is not None and (not is_int(self.query_rank) or self.query_rank < 1):
            raise InfluenceError(
                f"query rank must be a positive integer or null for full rank, got {self.query_rank!r}"
            )
        if self.device is not None:
            check_device("device", self.device)


@dataclass
class PBRFArguments:
    """How `pbrf_scores` solves the proximal Bregman objective; see `influence.pbrf` for the objective itself."""

    epsilon: float = field(
        default=1e-3, metadata={"help": "Weight ε of the training example; the score is the central difference at ±ε."}
    )
    optimizer: str = field(default="adam", metadata={"help": f"One of {list(OPTIMIZERS)}."})
    lr: float = field(default=0.01, metadata={"help": "Adam's initial step size (on the O(1) rescaled iterate)."})
    max_steps: int = field(
        default=2000,
        metadata={"help": "Budget of objective/gradient evaluations per solve (one solve per row and sign of ε)."},
    )
    tol: float = field(
        default=1e-3, metadata={"help": "Converged when the gradient norm falls to tol × its value at θs (‖∇L(z_m)‖)."}
    )
    patience: int = field(
        default=20,
        metadata={"help": "Adam halves its step size after this many steps without a 10% fall of the gradient norm."},
    )
    min_lr_ratio: float = field(default=1e-4, metadata={"help": "Adam's step size never falls below lr × this."})
    batch_size: int = field(default=1024, metadata={"help": "Bregman rows per forward/backward pass."})
    dtype: torch.dtype | None = field(
        default=None,
        metadata={
            "help": "Work on a copy of the model in this dtype (e.g. torch.float64); None works in place and "
            "restores the parameters exactly afterwards."
        },
    )
    history: int = field(default=100, metadata={"help": "L-BFGS's memory (correction pairs)."})
    on_failure: str = field(
        default="raise",
        metadata={
            "help": "A solve that misses tol within max_steps: 'raise' an InfluenceError, or 'record' it in "
            "grad_norm / converged and go on."
        },
    )
    warm_start: str = field(
        default="none",
        metadata={
            "help": "'mirror' starts the −ε solve at the +ε solution reflected through θs (right to first order in "
            "ε); 'none' starts both at θs. Only the optimizer's path changes."
        },
    )

    def __post_init__(self):
        if not (is_number(self.epsilon) and self.epsilon > 0):
            raise InfluenceError(f"epsilon must be a positive number, got {self.epsilon!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InfluenceError(f"unknown PBRF optimizer {self.optimizer!r}: use one of {list(OPTIMIZERS)}")
        if self.warm_start not in ("none", "mirror"):
            raise InfluenceError(f"warm_start must be 'none' or 'mirror', got {self.warm_start!r}")
        if self.on_failure not in ("raise", "record"):
            raise InfluenceError(f"on_failure must be 'raise' or 'record', got {self.on_failure!r}")
        counts = {k: getattr(self, k) for k in ("max_steps", "history", "batch_size", "patience")}
        sizes = {k: getattr(self, k) for k in ("tol", "lr", "min_lr_ratio")}
        bad = [f"{k}={v!r}" for k, v in counts.items() if not (is_int(v) and v >= 1)]
        bad += [f"{k}={v!r}" for k, v in sizes.items() if not (is_number(v) and v > 0)]
        if bad:
            raise InfluenceError(
                f"PBRF optimizer settings must be positive ({', '.join(bad)}): "
                "max_steps, history, batch_size and patience are integers >= 1; tol, lr and min_lr_ratio numbers > 0"
            )
