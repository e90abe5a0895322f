"""Memorization (Fig. 22): do the exact passages of famous quotes appear among the quote queries' top sequences?"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.figures import figure, listings
from analysis.memorization import find_passage, memorization_figure, memorization_summary, memorization_table
from analysis.scorecard import Finding, passages_found
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries, training_set_size
from ..pipeline.tables import top_k_table, top_tokens_table
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "top sequences inspected per quote query")
    queries: list[str] | None = option(None, "null: the quote queries tagged `memorization`; or a list of names")

    def __post_init__(self):
        if self.top_k < 1:
            raise InfluenceError(f"memorization.top_k={self.top_k} must be at least 1")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    k = opts.top_k
    queries = select_queries(world, "memorization", opts.queries)
    if not opts.queries:  # by tag: the quote queries only
        queries = [q for q in queries if q.tags.get("type") == "quote"]
    if not queries:
        raise InfluenceError(
            "memorization: no quote queries in this run (tags type: quote): add some or name them in memorization.queries"
        )
    search = search_stage(cfg, world, breakdown_k=k)
    pos = {q.name: i for i, q in enumerate(world.queries)}
    tops = [search.tops[pos[q.name]] for q in queries]
    passages = {q.name: q.prompt + q.completion for q in queries}
    top = top_k_table(tops, queries, world.train, training_set_size(cfg, world))
    table = memorization_table(top, passages)
    copies = {q: sum(find_passage(p, t) >= 0 for t in world.train.texts) for q, p in passages.items()}
    summary = memorization_summary(table, copies)
    headline = {
        "quote_queries": len(queries),
        "top_k": k,
        "queries_with_passage_at_rank_1": int(summary["top1_contains_passage"].sum()),
        "queries_with_passage_in_top_k": int((summary["copies_in_top_k"] > 0).sum()),
        "queries_with_passage_in_corpus": int((summary["copies_in_corpus"] > 0).sum()),
    }
    return {
        "memorization": table,
        "memorization_summary": summary,
        "top_tokens": top_tokens_table(tops, queries, world),
        "_summary": pd.DataFrame([headline]),
        "_metadata": metadata(search, world, top_k=k),
    }


STUDY = Study(
    name="memorization",
    title="Memorization",
    where="§5.3.3, Fig. 22",
    order=100,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig22_memorization",
            memorization_figure,
            "memorization",
            caption="Rank of each quote query's top sequences, red where the sequence holds the passage verbatim: "
            "look for red at rank 1 (memorized passages found).",
        ),
        *listings("top_tokens"),
    ),
    findings=(
        Finding(
            "Top sequences contain the exact memorized passages",
            "yes",
            "every quote in the corpus is found in its top k",
            passages_found,
        ),
    ),
    long_tables=frozenset({"top_tokens"}),
)
