"""LiSSA against the exact damped Gauss–Newton solve: converges with minibatches (no noise floor), reports a
residual that means what it says, takes a step stable for every minibatch, and refuses one that is not."""

import pytest
import torch
from torch import nn

from influence import InfluenceError, RegressionTask, find_tracked_layers, fit_curvature
from influence.curvature.lissa import gauss_newton_product

from .test_pbrf import trained


def dense_gauss_newton(model, task, layers, data):
    """G (mean over the rows of `data`) as a dense matrix, and the map from flat vectors to per-layer ones."""
    sizes = [l.shape[0] * l.shape[1] for l in layers]

    def unflat(x):
        out, k = {}, 0
        for l, s in zip(layers, sizes):
            out[l.name] = x[k : k + s].view(l.shape)
            k += s
        return out

    cols = [
        torch.cat([t.flatten() for t in gauss_newton_product(model, task, layers, data, unflat(e)).values()])
        for e in torch.eye(sum(sizes), dtype=torch.float64)
    ]
    return torch.stack(cols, 1), unflat, sizes


def exact_and_lissa(curv, G, unflat, sizes, layers, n_vectors=2):
    lam = torch.cat([torch.full((s,), curv.damping[l.name], dtype=torch.float64) for l, s in zip(layers, sizes)])
    V = torch.randn(n_vectors, G.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pre = curv.ihvp({l.name: torch.stack([unflat(v)[l.name] for v in V]) for l in layers})
    got = torch.cat([pre[l.name].flatten(1) for l in layers], 1)
    exact = torch.linalg.solve(G + torch.diag(lam), V.T).T
    return float(((got - exact).norm(dim=1) / exact.norm(dim=1)).max())


@pytest.fixture(scope="module")
def regression():
    task = RegressionTask()
    model, train, _, layers = trained(task, 1, n=64)
    G, unflat, sizes = dense_gauss_newton(model, task, layers, train)
    return model, task, train, layers, G, unflat, sizes


def test_lissa_with_minibatches_converges_to_the_exact_solve_and_its_residual_says_so(regression):
    """64 rows in 8 minibatches of 8 (the default): cycling fixed batches used to stop 24 % from the solution."""
    model, task, train, layers, G, unflat, sizes = regression
    opts = dict(layers=layers, seed=0, damping_factor=3.0)
    short = fit_curvature(model, task, train, method="lissa", depth=100, **opts)
    assert len(short.batches) == 8
    short_error = exact_and_lissa(short, G, unflat, sizes, layers)
    deep = fit_curvature(model, task, train, method="lissa", depth=250, tolerance=0.03, **opts)
    error = exact_and_lissa(deep, G, unflat, sizes, layers)
    assert error < 0.05, error
    assert deep.diagnostics["relative_residual"] <= 0.03 and deep.diagnostics["depth"] >= 1000
    # the residual tracks the true error: large when cut short, small when converged
    assert short.diagnostics["relative_residual"] > 0.3 and short_error > 0.3
    assert 0.5 < deep.diagnostics["relative_residual"] / error < 2


class Dominated(nn.Module):
    """A small regression net whose first training row, 16x larger, dominates its minibatch's curvature."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 1)])

    def forward(self, x):
        return self.layers[1](torch.tanh(0.1 * self.layers[0](x)))


def test_the_default_step_is_stable_for_every_minibatch_and_a_larger_one_is_refused():
    torch.manual_seed(0)
    model, task = Dominated().double().eval(), RegressionTask()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = find_tracked_layers(model, patterns=[r"^layers\.\d+$"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    x[0] *= 16
    data = {"x": x, "y": torch.randn(64, 1, generator=g, dtype=torch.float64)}
    curv = fit_curvature(model, task, data, method="lissa", layers=layers, depth=20, seed=0)
    G, _, _ = dense_gauss_newton(model, task, layers, data)
    per_batch = [
        float(torch.linalg.eigvalsh(dense_gauss_newton(model, task, layers, b)[0]).max()) for b in curv.batches
    ]
    assert max(per_batch) > 1.1 * float(torch.linalg.eigvalsh(G).max())  # one batch's curvature exceeds the mean's
    assert curv.lambda_max >= 0.95 * max(per_batch)  # power iteration on every batch finds it
    assert curv.scale * (max(per_batch) + max(curv.damping.values())) <= 0.5 / 0.95  # stable with room (< 2)
    v = {l.name: torch.randn(1, *l.shape, generator=g, dtype=torch.float64) for l in layers}
    curv.ihvp(v)  # stable: no error
    unstable = fit_curvature(
        model, task, data, method="lissa", layers=layers, depth=200, seed=0, scale=3.0 / max(per_batch)
    )
    with pytest.raises(InfluenceError, match=r"LiSSA diverges: at step \d+ .*lower curvature\.scale"):
        unstable.ihvp(v)


def test_with_damping_keeps_the_step_stable():
    task = RegressionTask()
    model, train, _, layers = trained(task, 1, n=24)
    curv = fit_curvature(model, task, train, method="lissa", layers=layers, depth=5, seed=0)
    heavier = curv.with_damping({k: 100 * v for k, v in curv.damping.items()})
    assert heavier.scale * (heavier.lambda_max + max(heavier.damping.values())) == pytest.approx(0.5)
    assert heavier.scale < curv.scale and heavier.diagnostics == {}


def test_going_deeper_continues_the_recursion_instead_of_restarting(regression):
    """With one (deterministic) batch, a solve that doubles 25 → 50 → 100 → 200 under `tolerance` returns exactly
    the 200-step recursion's iterate: the later stages continue from where the earlier ones stopped."""
    model, task, train, layers, G, unflat, sizes = regression
    opts = dict(layers=layers, seed=0, damping_factor=3.0, batch_size=64)
    plain = fit_curvature(model, task, train, method="lissa", depth=200, **opts)
    stepped = fit_curvature(model, task, train, method="lissa", depth=25, tolerance=1e-12, max_depth=200, **opts)
    v = {
        l.name: torch.randn(1, *l.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for l in layers
    }
    a, b = plain.ihvp(v), stepped.ihvp(v)
    assert all(torch.allclose(a[k], b[k], rtol=1e-12, atol=0) for k in a)
    assert stepped.diagnostics["depth"] == 200 and stepped.diagnostics["converged"] is False
    assert stepped.diagnostics["relative_residual"] == pytest.approx(plain.diagnostics["relative_residual"])
