"""Token overlap between a query and a training sequence, scale-free: is a top sequence a surface match?

The paper's small models pick sequences that share the query's tokens; large ones pick thematic matches
(Figs. 1, 10–12). Two measures: the Jaccard index of token-id sets, and the percentile of the sequence's
BM25 score among all candidates of the query (a percentile, so it compares across corpora and queries).
"""

from __future__ import annotations

import numpy as np


def token_jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of the distinct token ids of two sequences (0 when both are empty)."""
    sa, sb = set(np.asarray(a).reshape(-1).tolist()), set(np.asarray(b).reshape(-1).tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def score_percentiles(pool, values) -> np.ndarray:
    """Percentile of each value within `pool`: 100 × (share below + half the share tied), as
    scipy.stats.percentileofscore(kind="mean"), vectorised."""
    pool = np.sort(np.asarray(pool, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    below = np.searchsorted(pool, values, side="left")
    upto = np.searchsorted(pool, values, side="right")
    return 100.0 * (below + upto) / (2.0 * len(pool))


def bm25_percentiles(index, query_ids, candidates, rows) -> np.ndarray:
    """Percentile of the BM25 score of each of `rows` among the BM25 scores of all `candidates` for one query.

    `index` is an influence.filtering.BM25Index over the training set; rows and candidates are training rows.
    """
    scores = index.scores(np.asarray(query_ids))
    return score_percentiles(scores[np.asarray(candidates)], scores[np.asarray(rows)])
