"""Fact tracing: for every fact the corpus states, do the methods rank the sequences that state it first?

The retrieval check of attribution on a language model (DATE-LM's factual task, TrackStar): the queries are
built from the corpus metadata — every generated fact asked forward (subject → object) and flipped
(object → subject) — and each query's relevant set is the training sequences that state that fact (in any
wording, order or language). Every method ranks the same candidates: all sequences stating a traced fact plus a
seeded random sample of the rest. MRR and Recall@k per method, split by query direction and by whether the
fact is also stated in flipped order.

Without the embedded corpus's facts, the queries are the run's queries tagged `fact_id` (e.g. from
`queries.path`) and the relevant rows those whose metadata column `fact_id` matches: a local corpus labels its
documents with a `fact_id` column (`data=local`, carried into the rows' metadata; with `data.rows=documents` one
row per document, with chunks each row takes the label of the document holding most of its tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from analysis.attribution import COMPARISON_FIGURE, method_comparison, retrieval_summary, retrieval_table
from embedded.prepare import prepare_data
from influence import InfluenceError, Query
from influence.batching import sample_indices

from ..pipeline.attribution import (
    METHODS,
    OVERRIDES_HELP,
    check_methods,
    check_overrides,
    default_overrides,
    method_scores,
    study_worlds,
)
from .registry import Study, option


@dataclass
class Options:
    methods: list[str] = option(
        help=f"methods compared, from {', '.join(METHODS)}; lissa is left out by default: its recursion per query "
        "vector took 53 of the 79 minutes of the default run on model s (160 queries)",
        factory=lambda: [m for m in METHODS if m != "lissa"],
    )
    directions: list[str] = option(
        help="query directions: forward asks for the object, flipped for the subject",
        factory=lambda: ["forward", "flipped"],
    )
    max_facts: int | None = option(None, "trace the first this many facts (null: every fact the corpus states)")
    distractors: int | None = option(2000, "candidates not stating any traced fact, a seeded sample (null: all)")
    ks: list[int] = option(help="the k of Recall@k", factory=lambda: [10, 50])
    method_overrides: dict = option(help=OVERRIDES_HELP, factory=default_overrides)

    def __post_init__(self):
        check_methods(self.methods, "fact_tracing")
        check_overrides(self.method_overrides, "fact_tracing")
        if not self.directions or set(self.directions) - {"forward", "flipped"}:
            raise InfluenceError(f"fact_tracing.directions={self.directions}: use forward and/or flipped")
        if self.max_facts is not None and self.max_facts < 1:
            raise InfluenceError(f"fact_tracing.max_facts={self.max_facts} must be at least 1 (or null)")
        if self.distractors is not None and self.distractors < 0:
            raise InfluenceError(f"fact_tracing.distractors={self.distractors} must be >= 0 (or null)")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise InfluenceError(f"fact_tracing.ks={self.ks}: give positive integers")


def fact_queries(cfg, world, opts: Options) -> tuple[list[Query], pd.DataFrame]:
    """The tracing queries and one row per query: query, fact_id, direction, both_orders, relation."""
    facts = prepare_data(cfg, tokenizer=world.tokenizer if cfg.model.get("path") else None).facts or []
    queries = []
    for f in facts[: opts.max_facts]:
        for direction in opts.directions:
            prompt, answer = f.prompt_and_answer() if direction == "forward" else f.flipped_prompt_and_answer()
            tags = {"fact_id": f.fact_id, "direction": direction, "both_orders": f.both_orders, "relation": f.relation}
            queries.append(Query(f"{f.fact_id}:{direction}", prompt, answer, tags))
    if not facts:  # a local corpus: the run's queries that name a fact
        queries = [q for q in world.queries if q.tags.get("fact_id")][: opts.max_facts]
    if not queries:
        raise InfluenceError(
            "fact_tracing: no facts to trace: use the embedded corpus, or give queries tagged fact_id with a corpus "
            "whose metadata has a fact_id column"
        )
    info = pd.DataFrame(
        [
            {
                "query": q.name,
                "fact_id": q.tags["fact_id"],
                "direction": q.tags.get("direction", "forward"),
                "both_orders": q.tags.get("both_orders"),
                "relation": q.tags.get("relation"),
            }
            for q in queries
        ]
    )
    return queries, info


def relevant_rows(world, info: pd.DataFrame) -> pd.DataFrame:
    """query, row: the training rows stating each query's fact."""
    meta = world.train.meta
    if "fact_id" not in meta:
        raise InfluenceError(
            "fact_tracing: the training metadata has no fact_id column: give the local corpus's records a fact_id "
            "column (data=local data.rows=documents)"
        )
    rows = meta.reset_index(drop=True)
    by_fact = {k: g.index.to_numpy() for k, g in rows.groupby("fact_id")}
    out = [(q, int(r)) for q, fid in zip(info["query"], info["fact_id"]) for r in by_fact.get(fid, [])]
    return pd.DataFrame(out, columns=["query", "row"])


def candidates(world, relevant: pd.DataFrame, distractors: int | None, seed: int) -> torch.Tensor:
    """Every relevant row, plus a seeded sample of `distractors` other rows (null: all of them), sorted."""
    n = world.train.input_ids.shape[0]
    rel = torch.as_tensor(sorted(set(relevant["row"])), dtype=torch.long)
    others = torch.ones(n, dtype=torch.bool)
    others[rel] = False
    rest = others.nonzero().flatten()
    rest = rest[sample_indices(len(rest), distractors, seed)] if distractors is not None else rest
    return torch.sort(torch.cat([rel, rest])).values


def long_scores(method: str, queries: list[Query], rows: torch.Tensor, scores: torch.Tensor) -> pd.DataFrame:
    q, r = torch.meshgrid(torch.arange(len(queries)), torch.arange(len(rows)), indexing="ij")
    return pd.DataFrame(
        {
            "method": method,
            "query": [queries[i].name for i in q.flatten().tolist()],
            "row": rows[r.flatten()].numpy(),
            "score": scores.flatten().numpy(),
        }
    )


def trace(cfg, world, opts: Options, labels: dict) -> dict[str, pd.DataFrame]:
    """One model's tables: per (method, query) retrieval rows, per method seconds."""
    queries, info = fact_queries(cfg, world, opts)
    relevant = relevant_rows(world, info)
    rows = candidates(world, relevant, opts.distractors, int(cfg.seed))
    per_query, seconds = [], []
    for m in check_methods(opts.methods, "fact_tracing"):
        scores, s = method_scores(cfg, world, m, queries, rows, opts.method_overrides.get(m.name))
        table = retrieval_table(long_scores(m.name, queries, rows, scores), relevant, ks=tuple(opts.ks))
        per_query.append(table.merge(info, on="query", how="left").assign(**labels))
        seconds.append({"method": m.name, "seconds": s, "n_candidates": len(rows), "n_queries": len(queries), **labels})
    return {"per_query": pd.concat(per_query, ignore_index=True), "seconds": pd.DataFrame(seconds)}


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    parts = [trace(c, w, opts, labels) for labels, c, w in study_worlds(cfg, world)]
    per_query = pd.concat([p["per_query"] for p in parts], ignore_index=True)
    seconds = pd.concat([p["seconds"] for p in parts], ignore_index=True)
    models = ["model"] if per_query["model"].nunique() > 1 else []
    by_method = retrieval_summary(per_query, by=(*models, "method"))
    by_split = retrieval_summary(per_query, by=(*models, "method", "direction", "both_orders"))
    comparison = method_comparison(by_method, None, None, seconds[[*models, "method", "seconds"]])
    best = by_method.sort_values("mrr", ascending=False).iloc[0]
    return {
        "fact_tracing": per_query,
        "fact_tracing_summary": by_method,
        "fact_tracing_splits": by_split,
        "attribution_comparison": comparison,
        "_summary": pd.DataFrame(
            [
                {
                    "facts": int(per_query["fact_id"].nunique()),
                    "queries": int(per_query["query"].nunique()),
                    "candidates": int(seconds["n_candidates"].iloc[0]),
                    "best_method_by_mrr": best["method"],
                    "best_mrr": float(best["mrr"]),
                    **{f"mrr_{r.method}": float(r.mrr) for r in by_method.itertuples() if not models},
                }
            ]
        ),
        "_metadata": pd.DataFrame([{"models": ",".join(seconds["model"].unique()), "methods": ",".join(opts.methods)}]),
    }


STUDY = Study(
    name="fact_tracing",
    title="Fact tracing: do the methods find the sequences that state a fact?",
    where="beyond the paper: DATE-LM's factual attribution, TrackStar",
    run=run,
    options=Options,
    figures=(COMPARISON_FIGURE,),
    long_tables=frozenset({"fact_tracing", "fact_tracing_splits"}),
)
