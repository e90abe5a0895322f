"""Fig. 3: how well rank-r query gradients reproduce full-rank scores, for every query."""
from __future__ import annotations

import numpy as np
import pandas as pd

from influence import LanguageModelTask
from influence.scan import scores_at_ranks

from ..pipeline.stages import candidate_rows, encode_stage, fit_stage, training_data
from . import register

RANKS = (8, 16, 32, 64, 128)


def rank_table(scores: dict, names: list[str], shapes: list[tuple[int, int]]) -> pd.DataFrame:
    """Pearson r per (query, rank) against full rank; ranks beyond the layers' dimensions are exact and skipped."""
    full = scores[None].numpy()
    cap = max(min(p, m) for p, m in shapes)
    rows = []
    for r, s in scores.items():
        if r is None or r > cap:
            continue
        for qi, name in enumerate(names):
            rows.append({"query": name, "rank": r, "pearson": float(np.corrcoef(s[qi].numpy(), full[qi])[0, 1]),
                         "memory_ratio": float(sum(r * (p + m) for p, m in shapes) / sum(p * m for p, m in shapes))})
    return pd.DataFrame(rows)


@register("query_rank")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    encoded = encode_stage(world)
    curvature = fit_stage(cfg, world)
    ranks = [int(r) for r in cfg.get("ranks", RANKS)]
    scores = scores_at_ranks(world.model, LanguageModelTask(), curvature, encoded, training_data(world),
                             [None, *ranks], indices=candidate_rows(cfg, world), batch_size=int(cfg.score.batch_size),
                             device=cfg.score.device)
    table = rank_table(scores, [q.name for q in world.queries], [l.shape for l in curvature.layers])
    return {"query_rank": table}
