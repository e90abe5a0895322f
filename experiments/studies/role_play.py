"""Role-play vs scale (Figs. 28–29): which kinds of text do the top sequences of role-play queries
(shutdown, paperclips, superintelligent) come from at each model size? The paper finds AI-risk articles and
science fiction about AI self-preservation at 52B: imitation of such text rather than planning."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.figures import figure
from analysis.scale import role_play_trends, share_bars
from analysis.scorecard import Finding, size_trend
from analysis.trends import POINT, at_size, share_of, shares, trend
from influence import InfluenceError

from ..pipeline.sweep import scale_points
from ._sweep import point_metadata, scale_queries, sweep_metadata, top_rows
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "top sequences per query and model")
    queries: list[str] | None = option(None, "null: the queries tagged `role_play`; or a list of names")
    examples: int = option(3, "top sequences per (query, size, seed) shown in the role_play_examples table")

    def __post_init__(self):
        if self.top_k < 1 or self.examples < 0:
            raise InfluenceError(f"role_play needs top_k >= 1 and examples >= 0 (got {self.top_k}, {self.examples})")


def point_table(top: pd.DataFrame) -> pd.DataFrame:
    keys = POINT + ["query"]
    return share_of(top, "category", "ai", "ai_share").merge(
        share_of(top, "kind", "scifi_shutdown", "scifi_share"), on=keys
    )


def summary(points: pd.DataFrame) -> dict:
    return {
        **trend(points, "ai_share", "ai_share", "ai"),
        "scifi_share_smallest": at_size(points, "scifi_share", "smallest"),
        "scifi_share_largest": at_size(points, "scifi_share", "largest"),
    }


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    k, shown = opts.top_k, opts.examples
    queries = scale_queries(world, "role_play", opts.queries)
    frames, metas = [], []
    for point in scale_points(cfg, breakdown_k=k):
        frames.append(pd.DataFrame(top_rows(point, queries, k)))
        metas.append(point_metadata(point))
    top = pd.concat(frames, ignore_index=True)
    points = point_table(top)
    examples = top[top["rank"] <= shown].sort_values(["query", "size_order", "seed", "rank"])
    examples = examples.assign(excerpt=[" ".join(t.split()) for t in examples["text"]])  # the report leaves out `text`
    return {
        "role_play_top": top,
        "role_play_points": points,
        "role_play_categories": shares(top, "category"),
        "role_play_kinds": shares(top, "kind"),
        "role_play_examples": examples[["query", "size", "seed", "rank", "score", "category", "kind", "excerpt"]],
        "_summary": pd.DataFrame([summary(points)]),
        "_metadata": sweep_metadata(cfg, metas, queries, top_k=k),
    }


STUDY = Study(
    name="role_play",
    title="Role-playing",
    where="§5.3.5, Figs. 28–29",
    order=120,
    sweep=True,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig28_role_play_trends",
            role_play_trends,
            "role_play_points",
            caption="Share of AI-themed and science-fiction-shutdown sequences among role-play queries' top "
            "sequences vs model size: the paper finds these shares rising with size.",
        ),
        figure(
            "fig29_role_play_categories",
            share_bars,
            "role_play_categories",
            caption="Categories of the role-play queries' top sequences per model size: look for how the mix shifts "
            "with size.",
        ),
        figure(
            "fig29_role_play_kinds",
            share_bars,
            "role_play_kinds",
            caption="Kinds of the role-play queries' top sequences per model size: look for how the mix shifts with "
            "size.",
        ),
    ),
    findings=(
        Finding(
            "Role-play queries draw on AI-themed text more as models grow",
            "52B: science fiction and AI-risk text",
            "share of `ai` sequences among top k: Spearman ρ with size > 0 and largest > smallest",
            size_trend("ai_share_smallest", "ai_share_largest", "ai_vs_size_spearman", +1),
        ),
    ),
)
