"""Fig. 3: how well rank-r query gradients reproduce full-rank scores, for every query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.figures import figure
from analysis.ranks import rank_correlation
from analysis.scorecard import Finding, rank32_pearson
from influence import InfluenceError, LanguageModelTask
from influence.scan import scores_at_ranks

from ..pipeline.stages import candidate_rows, encode_stage, fit_stage, training_data
from .registry import Study, option


@dataclass
class Options:
    ranks: list[int] = option(help="query-gradient ranks compared with full rank", factory=lambda: [8, 16, 32, 64, 128])

    def __post_init__(self):
        if not self.ranks or min(self.ranks) < 1:
            raise InfluenceError(f"query_rank.ranks={self.ranks} must be a non-empty list of ranks >= 1")


def rank_table(scores: dict, names: list[str], shapes: list[tuple[int, int]]) -> pd.DataFrame:
    """Pearson r per (query, rank) against full rank; ranks beyond the layers' dimensions are exact and skipped."""
    full = scores[None].numpy()
    cap = max(min(p, m) for p, m in shapes)
    rows = []
    for r, s in scores.items():
        if r is None or r > cap:
            continue
        for qi, name in enumerate(names):
            rows.append(
                {
                    "query": name,
                    "rank": r,
                    "pearson": float(np.corrcoef(s[qi].numpy(), full[qi])[0, 1]),
                    "memory_ratio": float(sum(r * (p + m) for p, m in shapes) / sum(p * m for p, m in shapes)),
                }
            )
    return pd.DataFrame(rows)


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    encoded = encode_stage(world)
    curvature = fit_stage(cfg, world)
    ranks = [int(r) for r in opts.ranks]
    scores = scores_at_ranks(
        world.model,
        LanguageModelTask(),
        curvature,
        encoded,
        training_data(world),
        [None, *ranks],
        indices=candidate_rows(cfg, world),
        batch_size=int(cfg.score.batch_size),
        device=cfg.score.device,
    )
    table = rank_table(scores, [q.name for q in world.queries], [l.shape for l in curvature.layers])
    return {"query_rank": table}


STUDY = Study(
    name="query_rank",
    title="Query batching: low-rank query gradients",
    where="§3.2.2, Fig. 3",
    order=10,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig3_query_rank",
            rank_correlation,
            "query_rank",
            caption="Correlation of rank-r with full-rank query-gradient scores, per query, against r: look for the "
            "rank at which it nears 1 (the paper: rank 32 is enough).",
        ),
    ),
    findings=(
        Finding("Rank-32 query gradients match full rank", "Pearson 0.995", "mean Pearson ≥ 0.99", rank32_pearson),
    ),
)
