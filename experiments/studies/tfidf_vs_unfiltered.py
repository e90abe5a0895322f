"""Paper §5.2.2: TF-IDF candidates vs an unfiltered scan.

Per query: how much of the unfiltered top k the TF-IDF candidates' own top k recovers, and, from a
power law fitted to the unfiltered tail, how many unfiltered sequences one must scan to expect 10
as influential as the 10th best TF-IDF candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from analysis.tails import fit_power_law_tail, sequences_needed
from influence import InfluenceError

from ..pipeline.stages import encode_stage, fit_stage, scan_stage, tfidf_candidates, tfidf_filter
from .registry import Study, option


@dataclass
class Options:
    tail: int = option(500, "top sequences per query whose power-law tail sizes the search (sequences_needed)")

    def __post_init__(self):
        if self.tail < 2:
            raise InfluenceError(f"tfidf_vs_unfiltered.tail={self.tail} is too short to fit a power-law tail")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    encoded = encode_stage(world)
    curvature = fit_stage(cfg, world)
    result = scan_stage(cfg, world, curvature, indices=torch.arange(world.train.input_ids.shape[0]))
    candidates = tfidf_candidates(cfg, world, encoded)
    k = int(cfg.score.top_k)
    tail = opts.tail
    rows = []
    for qi, q in enumerate(world.queries):
        scores = result.scores[qi].numpy()
        order = np.argsort(-scores, kind="stable")
        unfiltered_top = set(order[:k].tolist())
        cand = candidates[qi].numpy()
        cand_scores = scores[cand]
        cand_top = cand[np.argsort(-cand_scores, kind="stable")[:k]]
        tenth = float(np.sort(cand_scores)[::-1][min(10, len(cand_scores)) - 1]) if len(cand_scores) else float("nan")
        alpha, x_min, _ = fit_power_law_tail(scores, tail)
        rows.append(
            {
                "query": q.name,
                "candidates": len(cand),
                "scanned": len(scores),
                "k": k,
                "overlap_at_k": len(unfiltered_top & set(cand_top.tolist())) / k,
                "tfidf_10th_score": tenth,
                "unfiltered_10th_score": float(scores[order[min(10, len(order)) - 1]]),
                "power_law_alpha": alpha,
                "tail_x_min": x_min,
                "unfiltered_needed_for_10": sequences_needed(scores, tenth, 10, tail)
                if np.isfinite(tenth)
                else float("nan"),
            }
        )
    return {
        "tfidf_vs_unfiltered": pd.DataFrame(rows),
        "_metadata": pd.DataFrame(
            [{**result.metadata, "model": world.name, "filter": f"tfidf top_k={tfidf_filter(cfg).top_k}", "tail": tail}]
        ),
    }


STUDY = Study(
    name="tfidf_vs_unfiltered",
    title="TF-IDF filtering vs unfiltered scans",
    where="§3.2.1",
    order=20,
    run=run,
    options=Options,
)
