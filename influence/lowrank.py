"""Query batching (paper §3.2.2): each layer's preconditioned query gradient kept at rank r by truncated SVD.

Memory per layer per query falls from P·M to r·(P+M) floats, so many queries share one pass
over the training set. Scores at rank r need no dense matrix: token t's share is
−Σ_k (Ds_t·u_k)(ā_t·v_k). That factored form costs T·Q·r·(P+M) per sequence, several times the full-rank
scan's for wide layers, so where it is cheaper a layer's queries are densified for one batch at a time
(`densify_for_batch`: transient, one layer, bounded) and scored like full-rank ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InfluenceError
from .threads import SMALL, single_thread


@dataclass
class LowRank:
    """Q̃ ≈ left @ rightᵀ per query: left (Q, P, r) carries the singular values, right (Q, M, r)."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[-1]

    def dense(self) -> torch.Tensor:
        return self.left @ self.right.transpose(-1, -2)

    def to(self, *args, **kwargs) -> "LowRank":
        return LowRank(self.left.to(*args, **kwargs), self.right.to(*args, **kwargs))


def truncate(mat: torch.Tensor, rank: int) -> LowRank:
    """Best rank-r approximation (Eckart–Young) of each (P, M) matrix in a (Q, P, M) stack."""
    if rank < 1:
        raise InfluenceError(f"query rank must be a positive integer or null for full rank, got {rank}")
    r = min(rank, mat.shape[-2], mat.shape[-1])
    with single_thread(max(mat.shape[-2:]) <= SMALL):
        # in the gradients' own precision (float32 at least): float64 doubled the rank-r scan's fixed cost, and
        # float32 singular vectors are as exact as the float32 scores they feed
        work = mat if mat.dtype in (torch.float32, torch.float64) else mat.float()
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
    left = (u[..., :r] * s[..., None, :r]).to(mat.dtype)
    return LowRank(left, vh[..., :r, :].transpose(-1, -2).to(mat.dtype))


def low_rank_queries(pre: dict[str, torch.Tensor], rank: int | None) -> dict[str, torch.Tensor | LowRank]:
    """Rank-r versions of every layer's preconditioned query gradients (`rank=None`: unchanged, full rank)."""
    if rank is None:
        return dict(pre)
    out = {}
    for name, m in pre.items():
        # a rank at or above min(P, M) is exact: keep the dense matrix, it is cheaper to score
        out[name] = m if rank >= min(m.shape[-2], m.shape[-1]) else truncate(m, rank)
    return out


#: the most bytes one layer's queries may take when densified for one batch (see `densify_for_batch`)
DENSE_BATCH_BYTES = 256 * 2**20


def factored_cost(batch: int, tokens: int, queries: int, rank: int, p: int, m: int) -> int:
    """Multiply-adds of scoring one batch against rank-r queries factored: −Σ_k (Ds_t·u_k)(ā_t·v_k) per token."""
    return batch * tokens * queries * rank * (p + m)


def densified_cost(batch: int, tokens: int, queries: int, rank: int, p: int, m: int) -> int:
    """Multiply-adds of densifying the queries (left @ rightᵀ), forming each sequence's DW and one matmul."""
    return queries * p * m * rank + batch * tokens * p * m + batch * p * m * queries


def densify_for_batch(q: LowRank, batch: int, tokens: int, max_bytes: int = DENSE_BATCH_BYTES) -> bool:
    """Whether scoring one (batch, tokens) batch is cheaper with this layer's rank-r queries densified for the
    batch (held only while the layer is scored, at most `max_bytes`) than factored. Which is cheaper turns on
    the layer's width, the query count and the rank: with T·Q·r·(P+M) against P·M·(Q·r + B·T + B·Q) the
    factored form wins for narrow layers and few queries, the dense one for wide layers."""
    nq, p, r = q.left.shape
    m = q.right.shape[1]
    fits = nq * p * m * q.left.element_size() <= max_bytes
    return fits and densified_cost(batch, tokens, nq, r, p, m) < factored_cost(batch, tokens, nq, r, p, m)


def query_bytes(shapes: list[tuple[int, int]], num_queries: int, rank: int | None, bytes_per_float: int = 4) -> int:
    """Memory of the stored query gradients: P·M (full) or r·(P+M) (rank r) floats per layer per query."""
    total = 0
    for p, m in shapes:
        total += p * m if rank is None or rank >= min(p, m) else rank * (p + m)
    return total * num_queries * bytes_per_float


def plan_query_rank(shapes: list[tuple[int, int]], num_queries: int, budget_bytes: int, ranks=(128, 64, 32, 16, 8)):
    """Full rank when it fits the budget, else the largest rank that does (None = full rank)."""
    if query_bytes(shapes, num_queries, None) <= budget_bytes:
        return None
    for r in ranks:
        if query_bytes(shapes, num_queries, r) <= budget_bytes:
            return r
    raise InfluenceError(
        f"{num_queries} queries do not fit {budget_bytes / 2**20:.0f} MiB even at rank {ranks[-1]}: "
        f"raise the memory budget or score fewer queries per pass"
    )
