"""Memory planning: what a fit's factors and the stored query gradients will occupy, from layer shapes alone.

Computed before any work so that a user sees whether a large model fits (a 1B-parameter model's MLP
factors run to GiBs). Sizes follow what the code allocates: each method says what it keeps per tracked
layer of shape (P, M+1) (`Curvature.memory`: for EK-FAC and K-FAC, A, S, their eigenvector matrices and Λ
in float64), and the query gradients are float32 at the chosen rank.
"""

from __future__ import annotations

from .curvature import get_curvature_class
from .errors import InfluenceError
from .lowrank import DENSE_BATCH_BYTES, query_bytes

MIB = 2**20
PARTS = ("A", "S", "eigenvectors", "lambda", "queries")


def layer_memory(
    shape: tuple[int, int], num_queries: int, query_rank: int | None, method: str = "ekfac", num_blocks: int = 1
) -> dict[str, float]:
    """MiB per part for one layer of shape (P, M+1): what `method` keeps for it (`Curvature.memory`) and the
    queries' gradients."""
    out = {k: v / MIB for k, v in get_curvature_class(method).memory(shape, num_blocks).items()}
    out["queries"] = query_bytes([shape], num_queries, query_rank) / MIB
    out["total"] = sum(out[k] for k in PARTS)
    return out


def memory_plan(
    layers: dict[str, tuple[int, int]],
    num_queries: int,
    query_rank: int | None = None,
    method: str = "ekfac",
    num_blocks: int = 1,
) -> dict:
    """Per-layer and total MiB of every part, for tracked layers given as {name: (P, M+1)}."""
    if num_blocks < 1:
        raise InfluenceError(f"num_blocks must be >= 1, got {num_blocks}")
    per_layer = {
        name: layer_memory(shape, num_queries, query_rank, method, num_blocks) for name, shape in layers.items()
    }
    total = {k: sum(l[k] for l in per_layer.values()) for k in (*PARTS, "total")}
    return {
        "transient_queries": transient_query_mib(list(layers.values()), num_queries, query_rank),
        "method": method,
        "num_blocks": num_blocks,
        "num_queries": num_queries,
        "query_rank": query_rank,
        "layers": per_layer,
        "total": total,
    }


def transient_query_mib(shapes: list[tuple[int, int]], num_queries: int, query_rank: int | None) -> float:
    """MiB the scan may hold besides the plan's parts: one rank-r layer's queries densified for a batch where that
    is cheaper (`lowrank.densify_for_batch`), never above `DENSE_BATCH_BYTES`; 0 at full rank."""
    if query_rank is None:
        return 0.0
    dense = [query_bytes([(p, m)], num_queries, None) for p, m in shapes if query_rank < min(p, m)]
    return max([b for b in dense if b <= DENSE_BATCH_BYTES], default=0) / MIB


def format_memory_plan(plan: dict) -> str:
    """The plan as a table, one row per layer and a total row, in MiB."""
    rank = "full" if plan["query_rank"] is None else plan["query_rank"]
    head = (
        f"memory plan (MiB): {plan['method']}, {len(plan['layers'])} layers, blocks={plan['num_blocks']}, "
        f"{plan['num_queries']} queries at rank {rank}; factors float64, query gradients float32"
    )
    width = max([len(n) for n in plan["layers"]] + [5])
    cols = ("A", "S", "eigenvectors", "lambda", "queries", "total")
    rows = [f"{'layer':<{width}} " + " ".join(f"{c:>12}" for c in cols)]
    for name, mem in [*plan["layers"].items(), ("total", plan["total"])]:
        rows.append(f"{name:<{width}} " + " ".join(f"{mem[c]:>12.2f}" for c in cols))
    if plan.get("transient_queries"):
        rows.append(f"scan: up to {plan['transient_queries']:.2f} more while one layer's queries are densified")
    return "\n".join([head, *rows])
