"""What the scale studies (abstraction, math_code, cross_lingual, role_play) share: their queries, the top
sequences of each sweep point as table rows, and one metadata row for the whole sweep."""

from __future__ import annotations

import pandas as pd

from influence import InfluenceError

from ..pipeline.stages import metadata, select_queries
from ..pipeline.sweep import sizes_and_seeds
from ..pipeline.tables import ranked


def scale_queries(world, study: str, names=None) -> list:
    """The queries named in `<study>.queries`, else those tagged for `study`; none at all is an error."""
    if names:
        return select_queries(world, study, list(names))
    tagged = [q for q in world.queries if study in (q.tags.get("study") or [])]
    if not tagged:
        raise InfluenceError(
            f"{study}: no query of this run is tagged `study: [{study}]`: tag some in the queries config "
            f"or list them in {study}.queries"
        )
    return tagged


def text(v) -> str:
    """A metadata cell as text ('' for missing)."""
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def top_rows(point, queries, k: int) -> list[dict]:
    """One row per (query, rank ≤ k) of a sweep point: its top sequences by full-rank score, with their metadata."""
    pos = {q.name: i for i, q in enumerate(point.world.queries)}
    tops = [point.search.tops[pos[q.name]] for q in queries]
    rows = []
    for q, t, rank, j, seq, meta in ranked(tops, queries, point.world.train):
        if rank <= k:
            rows.append(
                {
                    **point.key,
                    "query": q.name,
                    "rank": rank,
                    "row": seq,
                    "sequence_id": int(meta.get("id", seq)),
                    "score": float(t.scores[j]),
                    "category": text(meta.get("category")),
                    "kind": text(meta.get("kind")),
                    "text": point.world.train.texts[seq],
                }
            )
    return rows


def point_metadata(point) -> dict:
    return metadata(point.search, point.world).iloc[0].to_dict()


def sweep_metadata(cfg, points: list[dict], queries, **extra) -> pd.DataFrame:
    """One row: the first point's search metadata (curvature, candidates, ...), every model of the sweep, the queries."""
    sizes, seeds = sizes_and_seeds(cfg)
    return pd.DataFrame(
        [
            {
                **points[0],
                "model": ",".join(p["model"] for p in points),
                "models": len(points),
                "sizes": ",".join(sizes),
                "seeds": ",".join(map(str, seeds)),
                "queries": ",".join(q.name for q in queries),
                **{k: str(v) for k, v in extra.items()},
            }
        ]
    )
