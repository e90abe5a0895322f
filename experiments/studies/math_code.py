"""Math and code vs scale (Figs. 13–14): are the top sequences of math and code queries spurious token matches
(small models, in the paper) or related solutions, also in other programming languages (large models)?

Each top sequence is classified from the corpus metadata (analysis.relatedness): for a code query, whose
algorithm is the query's name, by algorithm and programming language; for a math query, word problem or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.figures import figure
from analysis.relatedness import RELATED, classify
from analysis.scale import math_code_trends, share_bars
from analysis.scorecard import Finding, size_trend
from analysis.trends import POINT, share_of, shares, trend
from influence import InfluenceError

from ..pipeline.sweep import scale_points
from ..pipeline.tables import query_type
from ._sweep import point_metadata, scale_queries, sweep_metadata, top_rows
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "top sequences per query and model")
    queries: list[str] | None = option(
        None, "null: the queries tagged `math_code` (math and code types only); or a list of names"
    )

    def __post_init__(self):
        if self.top_k < 1:
            raise InfluenceError(f"math_code.top_k={self.top_k} must be at least 1")


def check_types(queries) -> None:
    bad = [f"{q.name} ({query_type(q)})" for q in queries if query_type(q) not in ("math", "code")]
    if bad:
        raise InfluenceError(
            f"math_code: queries {bad} are neither type math nor code: "
            "list only math or code queries in math_code.queries"
        )


def relation_column(top: pd.DataFrame, meta: pd.DataFrame, queries) -> pd.DataFrame:
    """`top` with each row's `relation` to its query, from the training metadata `meta` (rows indexed by training row)."""
    by_name = {q.name: q for q in queries}
    rel = [
        classify(
            meta.iloc[int(r.row)],
            query_type(by_name[r.query]),
            algorithm=r.query,
            language=str(by_name[r.query].tags.get("language", "")),
        )
        for r in top.itertuples()
    ]
    return top.assign(relation=rel)


def point_table(top: pd.DataFrame) -> pd.DataFrame:
    keys = POINT + ["query"]
    out = share_of(top, "relation", "spurious", "spurious_share").merge(
        share_of(top, "relation", list(RELATED), "related_share"), on=keys
    )
    types = top.drop_duplicates("query").set_index("query")["type"]
    return out.assign(type=out["query"].map(types))


def summary(points: pd.DataFrame) -> dict:
    return {
        **trend(points, "spurious_share", "spurious_share", "spurious"),
        **trend(points, "related_share", "related_share", "related"),
    }


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    k = opts.top_k
    queries = scale_queries(world, "math_code", opts.queries)
    check_types(queries)
    types = {q.name: query_type(q) for q in queries}
    frames, metas = [], []
    for point in scale_points(cfg, breakdown_k=k):
        top = pd.DataFrame(top_rows(point, queries, k))
        frames.append(relation_column(top.assign(type=top["query"].map(types)), point.world.train.meta, queries))
        metas.append(point_metadata(point))
    top = pd.concat(frames, ignore_index=True)
    points = point_table(top)
    cols = [c for c in top.columns if c != "text"] + ["text"]
    return {
        "math_code_top": top[cols],
        "math_code_points": points,
        "math_code_relations": shares(top, "relation"),
        "_summary": pd.DataFrame([summary(points)]),
        "_metadata": sweep_metadata(cfg, metas, queries, top_k=k),
    }


STUDY = Study(
    name="math_code",
    title="Math and code",
    where="§5.3.1, Figs. 13–14",
    order=70,
    sweep=True,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig13_math_code_trends",
            math_code_trends,
            "math_code_points",
            caption="Spurious and related shares of math and code queries' top sequences vs model size: the paper "
            "finds related shares rising with size.",
        ),
        figure(
            "fig14_math_code_relations",
            share_bars,
            "math_code_relations",
            caption="How the top sequences relate to each math/code query per model size: look for the shift from "
            "spurious to related sequences.",
        ),
    ),
    findings=(
        Finding(
            "Spurious token matches give way to related solutions with size",
            "small: spurious; large: related solutions",
            "spurious share: Spearman ρ with size < 0 and largest < smallest",
            size_trend("spurious_share_smallest", "spurious_share_largest", "spurious_vs_size_spearman", -1),
        ),
    ),
)
