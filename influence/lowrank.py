"""Query batching (paper §3.2.2): each layer's preconditioned query gradient kept at rank r by truncated SVD.

Memory per layer per query falls from P·M to r·(P+M) floats, so many queries share one pass
over the training set. Scores at rank r need no dense matrix: token t's share is
−Σ_k (Ds_t·u_k)(ā_t·v_k).
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
        u, s, vh = torch.linalg.svd(mat.double(), full_matrices=False)
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
