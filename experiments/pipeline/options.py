"""The typed options of the pipeline: one dataclass per config block, with help, defaults and validation.

`conf/config.yaml`'s `score:` and `scale:` blocks and the `layers` group list exactly these fields, with these
defaults (tests/experiments/test_config.py checks it), so the YAML is what a user reads and edits and the
dataclass is the schema: `typed(ScoreOptions, cfg.score)` merges the block onto it (an unknown key or a value of
the wrong type fails, naming the valid keys) and runs `__post_init__`'s checks. The stages read their options
through `score_options(cfg)` and friends, never with `.get(key, default)`. The filter and the curvature have
their schemas on their own classes (`experiments.pipeline.candidates`, `influence.curvature`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from influence import InfluenceError
from influence.precision import autocast_dtype

T = TypeVar("T")


def _positive(where: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InfluenceError(f"{where}={value!r}: give an integer >= 1" + (" (or null)" if allow_none else ""))


@dataclass
class ScoreOptions:
    """How queries are scored against training sequences (`score:` in conf/config.yaml)."""

    top_k: int = field(default=10, metadata={"help": "Most influential training sequences listed per query."})
    batch_size: int = field(default=16, metadata={"help": "Training sequences per forward/backward while scoring."})
    max_sequences: Optional[int] = field(
        default=None,
        metadata={"help": "Score a reproducible random sample of this many training sequences (null: all of them)."},
    )
    query_rank: Any = field(
        default="auto",
        metadata={
            "help": "Rank of the stored query gradients: an int, null (full rank), or auto (full if it fits "
            "query_memory_mb)."
        },
    )
    query_memory_mb: int = field(default=1024, metadata={"help": "The budget `query_rank: auto` plans against."})
    chunk_batches: int = field(default=8, metadata={"help": "Batches per resumable checkpoint chunk of a scan."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (cuda:<i> per rank under torchrun)."})
    precision: str = field(
        default="float32", metadata={"help": "Scan forward/backward under autocast: float32 (off), bf16 or fp16."}
    )
    num_threads: Optional[int] = field(default=None, metadata={"help": "Torch threads (null: torch's default)."})

    def __post_init__(self):
        for key in ("top_k", "batch_size", "query_memory_mb", "chunk_batches"):
            _positive(f"score.{key}", getattr(self, key))
        _positive("score.max_sequences", self.max_sequences, allow_none=True)
        _positive("score.num_threads", self.num_threads, allow_none=True)
        if self.query_rank not in (None, "auto"):
            _positive("score.query_rank", self.query_rank)
        autocast_dtype(self.precision)  # an unknown precision fails, naming the valid ones


@dataclass
class ScaleOptions:
    """The model sweep of the scale studies (`scale:` in conf/config.yaml)."""

    sizes: list[str] = field(
        default_factory=lambda: ["xs", "s", "m", "l"],
        metadata={
            "help": "Model configs (conf/model) or local checkpoint directories, smallest first (empty: the run's model)."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata={"help": "Training seeds per size: the spread of every scale trend (empty: the run's seed)."},
    )

    def __post_init__(self):
        if len(set(self.sizes)) != len(self.sizes) or len(set(self.seeds)) != len(self.seeds):
            raise InfluenceError(
                f"scale.sizes={list(self.sizes)} and scale.seeds={list(self.seeds)} must not repeat an entry"
            )


@dataclass
class LayerOptions:
    """Which layers influence is computed on (the `layers` group: conf/layers/<option>.yaml)."""

    include_attention: bool = field(
        default=False, metadata={"help": "Also track the attention projections (besides the MLP layers)."}
    )
    modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Explicit module-name regexes to track instead (null: the MLP default, plus attention if asked)."
        },
    )


def typed(schema: type[T], node, where: str) -> T:
    """`node` (a config block) merged onto `schema`'s defaults and validated (its `__post_init__`): an instance of
    `schema`. An unknown key, a value of the wrong type or a failed check raises one InfluenceError line.
    The one reader of every option block: the pipeline's here, each study's through `Study.read_options`."""
    node = {} if node is None else node
    valid = [f.name for f in dataclasses.fields(schema)]
    if not isinstance(node, (Mapping, DictConfig)):
        raise InfluenceError(f"{where}: its options must be a mapping of {valid}, not {node!r}")
    unknown = sorted(set(node) - set(valid))
    if unknown:
        raise InfluenceError(f"{where} has no option(s) {unknown}: valid options are {valid}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise InfluenceError(
            f"{where}.{key}: {msg} (valid keys: {', '.join(valid)})"
            if key
            else f"{where}: {msg} (valid keys: {', '.join(valid)})"
        ) from None


def score_options(cfg: DictConfig) -> ScoreOptions:
    return typed(ScoreOptions, cfg.score, "score")


def scale_options(cfg: DictConfig) -> ScaleOptions:
    return typed(ScaleOptions, cfg.scale, "scale")


def layer_options(cfg: DictConfig) -> LayerOptions:
    return typed(LayerOptions, cfg.layers, "layers")


def check(cfg: DictConfig) -> None:
    """Validate every pipeline block of `cfg` at once: a bad option fails before any work."""
    score_options(cfg), scale_options(cfg), layer_options(cfg)
