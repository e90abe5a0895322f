"""Candidate selection: which training sequences a scan scores for each query (the `filter` group).

A filter is a class that `conf/filter/<option>.yaml` names by `_target_`, built with `hydra.utils.instantiate`
(`make_filter`); its fields are its options, with their defaults and checks. `candidates(world, encoded, queries)`
returns each query's training rows, or None: every row (or the random sample `score.max_sequences` draws).
`name` is the option's name, kept in the config for presets and the scan's metadata; it must match the class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from influence import InfluenceError
from influence.filtering import BM25Index

from .components import build_component

log = logging.getLogger(__name__)


def _check_name(filt, option: str) -> None:
    if filt.name != option:
        raise InfluenceError(
            f"filter.name={filt.name!r} but filter._target_ builds the {option!r} filter: choose the "
            "filter with filter=<option> (a preset with `defaults: [override /filter: <option>]`)"
        )


@dataclass
class NoFilter:
    """Unfiltered candidates: every training sequence (or the random sample of `score.max_sequences`)."""

    name: str = field(default="none", metadata={"help": "The option's name: none."})

    def __post_init__(self):
        _check_name(self, "none")

    def candidates(self, world, encoded, queries) -> list[torch.Tensor] | None:
        return None

    def describe(self) -> str:
        return "none"


@dataclass
class BM25Filter:
    """TF-IDF candidates per query: the top `top_k` training rows by BM25 (paper Eqs. 28-29) over the query's
    prompt and completion tokens, on the model tokenizer's tokens."""

    name: str = field(default="tfidf", metadata={"help": "The option's name: tfidf."})
    top_k: Any = field(
        default=10000,
        metadata={"help": "Candidates per query (paper: 10,000); a float in (0, 1] is a fraction of the corpus."},
    )
    mode: str = field(
        default="binary",
        metadata={"help": "Term weighting: binary presence (the paper) or count (saturating term count)."},
    )
    k1: float = field(default=1.5, metadata={"help": "BM25 term-count saturation (count mode only)."})

    def __post_init__(self):
        _check_name(self, "tfidf")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, float)) or self.top_k <= 0:
            raise InfluenceError(f"filter.top_k={self.top_k!r}: give a count >= 1 or a fraction in (0, 1]")
        if self.mode not in ("binary", "count"):
            raise InfluenceError(f"filter.mode={self.mode!r}: use binary or count")
        if not self.k1 >= 0:
            raise InfluenceError(f"filter.k1={self.k1!r} must be non-negative")

    def candidates(self, world, encoded, queries) -> list[torch.Tensor]:
        index = BM25Index.build(
            world.train.input_ids,
            vocab_size=len(world.tokenizer),
            mode=self.mode,
            k1=float(self.k1),
            attention_mask=world.train.attention_mask,
        )
        tops = index.top_k_many(encoded["input_ids"], self.top_k, attention_mask=encoded["attention_mask"])
        for q, t in zip(queries, tops):
            if t.no_overlap:
                log.warning(
                    "query %s shares no token with the corpus: the TF-IDF filter gives it no candidates", q.name
                )
        return [torch.as_tensor(t.indices, dtype=torch.long) for t in tops]

    def describe(self) -> str:
        return f"tfidf top_k={self.top_k} mode={self.mode}"


def make_filter(cfg: DictConfig):
    """The filter `cfg.filter` configures (its `_target_` with its options); a bad config fails here."""
    return build_component(cfg.filter, "filter", "candidates", "filter=none or filter=tfidf")
