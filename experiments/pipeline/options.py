"""The typed options of the pipeline: one dataclass per config block, with help, defaults and validation.

`conf/config.yaml`'s `score:` and `scale:` blocks and the `layers` group list exactly these fields, with these
defaults (tests/experiments/test_config.py checks it), so the YAML is what a user reads and edits and the
dataclass is the schema: `typed(ScoreOptions, cfg.score)` merges the block onto it (an unknown key or a value of
the wrong type fails, naming the valid keys) and runs `__post_init__`'s checks. The stages read their options
through `score_options(cfg)` and friends, never with `.get(key, default)`. The filter and the curvature have
their schemas on their own classes (`experiments.pipeline.candidates`, `influence.curvature`).

`check(cfg)`, the first thing a run does, also checks what has no schema here: a `???` left in the config, the
seed, the data and model blocks' values, that `data.path` exists and a `model.path` checkpoint's files are sound,
and the query list, so a bad option fails in one line before a corpus, a model, factors or a scan is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embedded.corpus import FAMILIES
from embedded.hub import locate
from embedded.local_data import corpus_files, local_options
from embedded.models import check_weights, read_config
from embedded.records import candidate_records
from embedded.shards import check_shards
from embedded.tokenizer import MIN_VOCAB, check_tokenizer_files
from embedded.world import load_queries
from influence import InfluenceError
from influence.arguments import check_device, is_int, is_number
from influence.precision import autocast_dtype

T = TypeVar("T")


def _integer(where: str, value, minimum: int, allow_none: bool = False) -> None:
    """An integer >= `minimum` (a bool, a float or a string is refused), or one line naming the key."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < minimum:
        raise InfluenceError(f"{where}={value!r}: give an integer >= {minimum}" + (" (or null)" if allow_none else ""))


def _positive(where: str, value, allow_none: bool = False) -> None:
    _integer(where, value, 1, allow_none)


def _number(where: str, value, low: float, high: float | None = None, strict: bool = False) -> None:
    """A finite number >= `low` (> `low` when `strict`) and <= `high`, or one line naming the key and the range."""
    above = is_number(value) and (value > low if strict else value >= low)
    if not (above and (high is None or value <= high)):
        bound = f"a number {'>' if strict else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise InfluenceError(f"{where}={value!r}: give {bound}")


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
    normalize: str = field(
        default="none",
        metadata={
            "help": "none (influence) or unit: each score divided by the query's and the sequence's gradient norms in "
            "the curvature's metric (cosine in the preconditioned space, as TrackStar and RelatIF)."
        },
    )
    training_set_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Sequences the model was trained on: N in the per-copy unit delta_log_p = I/N, the predicted change "
            "in log p(completion | prompt) from one more copy of a sequence (null: the rows of `data`; a checkpoint "
            "trained elsewhere: its own count, e.g. Pythia's 143,000 steps x 1,024 sequences)."
        },
    )
    dominant_share: float = field(
        default=0.25,
        metadata={
            "help": "A sequence in the top k of at least this share of the queries (and of 2 or more) is flagged in "
            "the report as dominating them (an outlier diagnostic, not a finding)."
        },
    )

    def __post_init__(self):
        _positive("score.training_set_size", self.training_set_size, allow_none=True)
        _number("score.dominant_share", self.dominant_share, 0, 1, strict=True)
        for key in ("top_k", "batch_size", "query_memory_mb", "chunk_batches"):
            _positive(f"score.{key}", getattr(self, key))
        _positive("score.max_sequences", self.max_sequences, allow_none=True)
        _positive("score.num_threads", self.num_threads, allow_none=True)
        if self.query_rank not in (None, "auto") and not (is_int(self.query_rank) and self.query_rank >= 1):
            raise InfluenceError(
                f"score.query_rank={self.query_rank!r}: give an integer >= 1, null (full rank) or auto"
            )
        check_device("score.device", self.device)  # cuda on a CPU-only build fails here, not at model.to()
        autocast_dtype(self.precision)  # an unknown precision fails, naming the valid ones
        if self.normalize not in ("none", "unit"):
            raise InfluenceError(f"score.normalize={self.normalize!r}: use none or unit")


@dataclass
class CandidateOptions:
    """Texts scored as hypothetical training sequences beside the training set (`candidates:` in conf/config.yaml)."""

    path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A .jsonl/.json/.yaml file of {text, name?, any labels} records, or a .txt file (one text per "
            "blank-line-separated paragraph): each text is scored like a training row it is not (null: none)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "The records' key holding the text."})

    def __post_init__(self):
        if self.path is not None and not str(self.path).strip():
            raise InfluenceError("candidates.path is empty: give a file of texts, or null")


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


def candidate_options(cfg: DictConfig) -> CandidateOptions:
    return typed(CandidateOptions, cfg.get("candidates") or {}, "candidates")


def scale_options(cfg: DictConfig) -> ScaleOptions:
    return typed(ScaleOptions, cfg.scale, "scale")


def layer_options(cfg: DictConfig) -> LayerOptions:
    return typed(LayerOptions, cfg.layers, "layers")


def check_required(cfg: DictConfig) -> None:
    """A `???` left in the config fails naming its key, before a key deep in the run trips over it
    (`data=local` without `data.path` used to fail on "Key 'seed' is not in struct")."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    if missing == ["data.path"]:
        raise InfluenceError(
            f"data.path is required by data={cfg.data.get('name')}: give data.path=/path/to/corpus "
            "(a .txt, .jsonl or .parquet file, or a folder of them)"
        )
    raise InfluenceError(
        f"{', '.join(missing)} must be given (the config leaves them ???): set them on the command line"
    )


#: integer keys of the data blocks (conf/data) and their least valid values
DATA_INTEGERS = {"seq_len": 8, "n_docs": 1, "n_heldout": 0, "seed": 0, "fact_repeats": 1}
#: keys of the data blocks that are shares in [0, 1]
DATA_FRACTIONS = ("val_fraction", "translated_fraction")


def _check_quote_copies(value) -> None:
    copies = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
    if not (copies and len(copies) == 2 and all(is_int(c) for c in copies) and 1 <= copies[0] <= copies[1]):
        raise InfluenceError(f"data.quote_copies={value!r}: give [low, high], integers with 1 <= low <= high")


def _check_mix(value) -> None:
    if not isinstance(value, (Mapping, DictConfig)):
        raise InfluenceError(f"data.mix={value!r}: give a mapping of corpus families to shares")
    unknown = sorted(set(value) - set(FAMILIES))
    if unknown:
        raise InfluenceError(f"data.mix has unknown families {unknown}: use {', '.join(FAMILIES)}")
    for family, share in value.items():
        _number(f"data.mix.{family}", share, 0)
    if sum(value.values()) <= 0:
        raise InfluenceError(f"data.mix={dict(value)} has no positive share: give at least one family a share > 0")


def check_data(cfg: DictConfig) -> None:
    """The data block's values (`int(...)` deep in corpus preparation used to be their only check), and that
    `data.path` names an existing corpus: all before the corpus is generated, read or tokenized."""
    d = cfg.data
    for key, minimum in DATA_INTEGERS.items():
        if key in d:
            _integer(f"data.{key}", d[key], minimum)
    for key in DATA_FRACTIONS:
        if key in d:
            _number(f"data.{key}", d[key], 0, 1)
    if "vocab_size" in d and not cfg.model.get("path"):  # a tokenizer is trained: BPE keeps every byte
        _integer("data.vocab_size", d.vocab_size, MIN_VOCAB)
    if "quote_copies" in d:
        _check_quote_copies(d.quote_copies)
    if "mix" in d:
        _check_mix(d.mix)
    if d.get("text_column") is not None and not isinstance(d.text_column, str):
        raise InfluenceError(f"data.text_column={d.text_column!r}: give a column name, or null to guess it")
    if d.get("name") == "shards":  # a token shard: its index and sizes, model.path and its context (no token read)
        check_shards(cfg)
    elif d.get("path"):
        corpus_files(str(d.path))  # a missing path or a folder without corpus files fails now
        local_options(d)  # the row mode and the label columns' names


#: integer keys of a model built here (conf/model) and of its training (`model.train`)
MODEL_INTEGERS = ("n_layer", "n_embd", "n_head", "max_length")
TRAIN_INTEGERS = ("tokens", "batch_size", "n_evals", "eval_docs")


def check_model(cfg: DictConfig) -> None:
    """The architecture and training values of a model trained here, or a `model.path` checkpoint's files (a
    corrupt or missing one, or a config that is no causal LM): a bad one fails before the corpus is generated."""
    m = cfg.model
    if m.get("path"):  # its config, weight headers and tokenizer files: read in milliseconds, no weights loaded
        path = str(locate(str(m.path), m.get("revision")).path)  # a hub id: its cached (or downloaded) snapshot
        read_config(path), check_weights(path), check_tokenizer_files(path, f"model.path={path}")
        return
    for key in MODEL_INTEGERS:
        if key in m:
            _integer(f"model.{key}", m[key], 1)
    if "n_embd" in m and "n_head" in m and m.n_embd % m.n_head:
        raise InfluenceError(
            f"model.n_embd={m.n_embd} is not a multiple of model.n_head={m.n_head}: each head needs n_embd / n_head "
            "dimensions"
        )
    if "max_length" in m and "seq_len" in cfg.data and cfg.data.seq_len > m.max_length:
        raise InfluenceError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_length={m.max_length}: lower one or raise the other"
        )
    t = m.get("train") or {}
    for key in TRAIN_INTEGERS:
        if key in t:
            _integer(f"model.train.{key}", t[key], 1)
    if "threads" in t:
        _integer("model.train.threads", t.threads, 1, allow_none=True)
    for key in ("lr", "grad_clip"):
        if key in t:
            _number(f"model.train.{key}", t[key], 0, strict=True)
    for key in ("warmup", "min_lr_ratio"):
        if key in t:
            _number(f"model.train.{key}", t[key], 0, 1)
    if "weight_decay" in t:
        _number("model.train.weight_decay", t.weight_decay, 0)


def check(cfg: DictConfig) -> None:
    """Validate every block of `cfg` at once: a bad option, a missing corpus or a bad query list fails in one
    line before any work (the corpus, the training, the fit, the scan)."""
    check_required(cfg)
    score_options(cfg), scale_options(cfg), layer_options(cfg)
    candidates = candidate_options(cfg)
    if candidates.path is not None:  # a missing or malformed file fails before any work
        candidate_records(candidates.path, candidates.text_column)
    if "seed" in cfg:
        _integer("seed", cfg.seed, 0)
    if "model" in cfg and "data" in cfg:
        check_data(cfg)
        check_model(cfg)
    if "queries" in cfg:
        load_queries(cfg.queries)  # an unknown, repeated or empty list of names, or a malformed item
