"""Role-play vs scale (Figs. 28–29): which kinds of text do the top sequences of role-play queries
(shutdown, paperclips, superintelligent) come from at each model size? The paper finds AI-risk articles and
science fiction about AI self-preservation at 52B: imitation of such text rather than planning."""
from __future__ import annotations

import pandas as pd

from analysis.trends import POINT, at_size, share_of, shares, trend

from ..pipeline.sweep import scale_points
from . import register
from ._sweep import point_metadata, scale_queries, sweep_metadata, top_rows


def point_table(top: pd.DataFrame) -> pd.DataFrame:
    keys = POINT + ["query"]
    return share_of(top, "category", "ai", "ai_share").merge(share_of(top, "kind", "scifi_shutdown", "scifi_share"), on=keys)


def summary(points: pd.DataFrame) -> dict:
    return {**trend(points, "ai_share", "ai_share", "ai"),
            "scifi_share_smallest": at_size(points, "scifi_share", "smallest"),
            "scifi_share_largest": at_size(points, "scifi_share", "largest")}


@register("role_play")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("role_play") or {}
    k, shown = int(opts.get("top_k", 10)), int(opts.get("examples", 3))
    queries = scale_queries(world, "role_play", opts.get("queries"))
    frames, metas = [], []
    for point in scale_points(cfg, breakdown_k=k):
        frames.append(pd.DataFrame(top_rows(point, queries, k)))
        metas.append(point_metadata(point))
    top = pd.concat(frames, ignore_index=True)
    points = point_table(top)
    examples = top[top["rank"] <= shown].sort_values(["query", "size_order", "seed", "rank"])
    examples = examples.assign(excerpt=[" ".join(t.split()) for t in examples["text"]])  # the report leaves out `text`
    return {"role_play_top": top, "role_play_points": points, "role_play_categories": shares(top, "category"),
            "role_play_kinds": shares(top, "kind"),
            "role_play_examples": examples[["query", "size", "seed", "rank", "score", "category", "kind", "excerpt"]],
            "_summary": pd.DataFrame([summary(points)]), "_metadata": sweep_metadata(cfg, metas, queries, top_k=k)}
