"""Memorization (Fig. 22): do the exact passages of famous quotes appear among the quote queries' top sequences?"""
from __future__ import annotations

import pandas as pd

from analysis.memorization import find_passage, memorization_summary, memorization_table
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import top_k_table, top_tokens_table
from . import register


@register("memorization")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("memorization") or {}
    k = int(opts.get("top_k", cfg.score.top_k))
    queries = select_queries(world, "memorization", opts.get("queries"))
    if not opts.get("queries"):  # by tag: the quote queries only
        queries = [q for q in queries if q.tags.get("type") == "quote"]
    if not queries:
        raise InfluenceError("memorization: no quote queries in this run (tags type: quote): add some or name them in memorization.queries")
    search = search_stage(cfg, world, breakdown_k=k)
    pos = {q.name: i for i, q in enumerate(world.queries)}
    tops = [search.tops[pos[q.name]] for q in queries]
    passages = {q.name: q.prompt + q.completion for q in queries}
    top = top_k_table(tops, queries, world.train)
    table = memorization_table(top, passages)
    copies = {q: sum(find_passage(p, t) >= 0 for t in world.train.texts) for q, p in passages.items()}
    summary = memorization_summary(table, copies)
    headline = {"quote_queries": len(queries), "top_k": k,
                "queries_with_passage_at_rank_1": int(summary["top1_contains_passage"].sum()),
                "queries_with_passage_in_top_k": int((summary["copies_in_top_k"] > 0).sum()),
                "queries_with_passage_in_corpus": int((summary["copies_in_corpus"] > 0).sum())}
    return {"memorization": table, "memorization_summary": summary, "top_tokens": top_tokens_table(tops, queries, world),
            "_summary": pd.DataFrame([headline]), "_metadata": metadata(search, world, top_k=k)}
