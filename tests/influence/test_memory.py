"""The memory plan's arithmetic, on layer shapes small enough to count by hand."""

import pytest

from influence import InfluenceError
from influence.memory import MIB, format_memory_plan, layer_memory, memory_plan


def _bytes(mem):
    return {k: round(v * MIB) for k, v in mem.items()}


def test_one_layer_counted_by_hand():
    # P=3 outputs, M+1=5 inputs: A 5x5, S 3x3, Q_A + Q_S, Λ 3x5 in float64; 2 queries' 3x5 gradients in float32
    assert _bytes(layer_memory((3, 5), 2, None)) == {
        "A": 200,
        "S": 72,
        "eigenvectors": 272,
        "lambda": 120,
        "queries": 120,
        "total": 784,
    }
    # rank 1 < min(3, 5): r(P+M) floats per query
    assert _bytes(layer_memory((3, 5), 2, 1))["queries"] == 64
    # 2 blocks: A's blocks 2+3 (4+9 floats), S's 2+1 (4+1 floats); eigenvectors are stored dense
    blocks = _bytes(layer_memory((3, 5), 2, None, num_blocks=2))
    assert (blocks["A"], blocks["S"], blocks["eigenvectors"]) == (104, 40, 272)
    # methods without Kronecker factors keep only the query gradients
    assert _bytes(layer_memory((3, 5), 2, None, method="lissa")) == {
        "A": 0,
        "S": 0,
        "eigenvectors": 0,
        "lambda": 0,
        "queries": 120,
        "total": 120,
    }


def test_plan_totals_and_table():
    plan = memory_plan({"up": (3, 5), "down": (5, 4)}, 1, None, method="kfac")
    down = _bytes(plan["layers"]["down"])
    assert down == {"A": 128, "S": 200, "eigenvectors": 328, "lambda": 160, "queries": 80, "total": 896}
    assert _bytes(plan["total"])["total"] == 896 + 784 - 60  # one query instead of two for "up"
    text = format_memory_plan(plan)
    assert "kfac, 2 layers" in text and "1 queries at rank full" in text and text.splitlines()[-1].startswith("total")
    with pytest.raises(InfluenceError, match="num_blocks must be >= 1"):
        memory_plan({"up": (3, 5)}, 1, num_blocks=0)


def test_a_rank_r_plan_counts_one_layer_densified_for_a_batch():
    """The scan may densify one rank-r layer's queries for a batch: the plan names the largest such layer's MiB
    (Q·P·M float32), none at full rank or where the rank is already the layer's full rank."""
    plan = memory_plan({"up": (40, 9), "down": (8, 41)}, 3, 4, method="kfac")
    assert plan["transient_queries"] == pytest.approx(3 * 40 * 9 * 4 / MIB)
    assert "more while one layer's queries are densified" in format_memory_plan(plan).splitlines()[-1]
    assert memory_plan({"up": (40, 9)}, 3, None)["transient_queries"] == 0
    assert memory_plan({"up": (40, 3)}, 3, 4)["transient_queries"] == 0  # rank 4 >= min(P, M): kept dense anyway
