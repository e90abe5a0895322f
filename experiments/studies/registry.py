"""A study is one descriptor, `STUDY = Study(...)` at the end of its module: what it is called, where it sits in
the paper, its options schema, its run function, the figures drawn from its tables, the findings the scorecard
checks on them, and which tables are too long for a report. The runner, `experiment=paper`, the report and the
scorecard read these descriptors; nothing else lists studies.

Options: each study's `<name>:` config block is merged once over its `options` dataclass (the only place its
defaults live; `conf/experiment/<name>.yaml` lists the same fields, checked by the tests) and handed to `run` as a
typed object. A misspelt key or a value of the wrong type fails here, in one line, before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from analysis.figures import FigureSpec
from analysis.scorecard import Finding

from ..pipeline.knowledge import model_knowledge
from ..pipeline.options import typed

Tables = dict[str, Any]  # table name -> DataFrame (or a dict of tensors); `_summary` / `_metadata`: one row each


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A field of a study's options dataclass: its default (or `factory` for a list or dict) and its help text."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class NoOptions:
    """The options of a study that has none."""


def read_options(cfg: DictConfig, key: str, schema: type) -> Any:
    """`cfg.<key>` merged over the dataclass `schema`'s defaults and validated (its `__post_init__`): an instance of
    `schema`. An unknown key, a value of the wrong type or a failed check raises one InfluenceError line."""
    return typed(schema, cfg.get(key), key)


@dataclass(frozen=True)
class Study:
    """One study of the paper, self-described.

    Attributes:
        name: the study's name: its module, its preset `conf/experiment/<name>.yaml` and its options block `<name>:`.
        title: the section title in the paper's report.
        where: where in the paper, e.g. "§5.2, Fig. 8, Table 1".
        run: `(cfg, world, options) -> tables`; `options` is an instance of `options`.
        options: the dataclass of its options (field help in `metadata={"help": ...}`, checks in `__post_init__`).
        order: its place in `experiment=paper` (ascending); None: not a section of the paper.
        sweep: it sweeps model sizes and seeds (`scale.*`): `experiment=paper` adds `paper.scale_overrides`.
        figures: what is drawn from its tables (analysis.figures.FigureSpec), in this order.
        findings: the paper's findings checked on its tables (analysis.scorecard.Finding), in this order.
        long_tables: its tables too long to be shown in a report (they stay in the run directory).
    """

    name: str
    title: str
    where: str
    run: Callable[[DictConfig, Any, Any], Tables]
    options: type = NoOptions
    order: int | None = None
    sweep: bool = False
    figures: tuple[FigureSpec, ...] = ()
    findings: tuple[Finding, ...] = ()
    long_tables: frozenset[str] = field(default_factory=frozenset)

    def read_options(self, cfg: DictConfig) -> Any:
        """The `<name>:` block of `cfg` over the options' defaults, validated: an instance of `options`."""
        return read_options(cfg, self.name, self.options)

    def __call__(self, cfg: DictConfig, world) -> Tables:
        """Run the study on `world` with the options of `cfg`: {table name: DataFrame}, with `_knowledge`, what the
        model knows of the material (its fact, quote and cross-lingual recall), which every report opens with."""
        tables = self.run(cfg, world, self.read_options(cfg))
        tables.setdefault("_knowledge", model_knowledge(cfg, world))
        return tables
