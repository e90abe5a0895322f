"""The fit's multiply-add counts (`gram_macs`, `correction_macs`) are what the code does, counted by torch.

bench/bench_core.py turns these counts into the fit's arithmetic floor; a count that drifted from the code
would make that floor wrong without any other test noticing.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from influence.curvature.factors import _correction_from_tokens, _rotation_macs, correction_macs, gram, gram_macs


def _flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("n, m", [(300, 100), (300, 513), (64, 1025)])
def test_gram_macs_count_the_strips(n, m):
    assert _flops(gram, torch.randn(n, m)) == 2 * gram_macs(n, m)
    if m > 256:  # the strips skip the lower triangle's blocks (one matmul elsewhere does all of it)
        assert gram_macs(n, m) < gram_macs(n, m, "cuda") == n * m * m


@pytest.mark.parametrize(
    "b, t, p, m, order",
    [(4, 128, 1024, 257, "tokens"), (3, 300, 257, 257, "grads"), (2, 40, 64, 65, "tokens"), (2, 90, 64, 65, "grads")],
)
def test_correction_takes_the_cheaper_order_and_counts_it(b, t, p, m, order):
    cost = _rotation_macs(t, p, m)
    assert min(cost, key=cost.get) == order
    a, ds, q_a, q_s = torch.randn(b, t, m), torch.randn(b, t, p), torch.randn(m, m), torch.randn(p, p)
    assert _flops(_correction_from_tokens, a, ds, q_a, q_s) == 2 * b * correction_macs(t, p, m) == 2 * b * cost[order]


@pytest.mark.parametrize("t", [40, 90])  # 40 tokens take the tokens-first route, 90 the gradients-first one
def test_both_correction_orders_give_the_same_sum(t):
    """Whichever order the rule picks, Σ_b (Q_Sᵀ DW_b Q_A)² is the same (float64: to rounding)."""
    from influence.capture import sequence_gradients

    g = torch.Generator().manual_seed(t)
    a, ds = (
        torch.randn(3, t, 65, dtype=torch.float64, generator=g),
        torch.randn(3, t, 64, dtype=torch.float64, generator=g),
    )
    q_a = torch.linalg.qr(torch.randn(65, 65, dtype=torch.float64, generator=g))[0]
    q_s = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=g))[0]
    want = ((q_s.T @ sequence_gradients(a, ds) @ q_a) ** 2).sum(0)
    got = _correction_from_tokens(a, ds, q_a, q_s)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-13
