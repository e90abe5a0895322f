"""EK-FAC, K-FAC and LiSSA against the damped Gauss–Newton/Fisher matrix built explicitly (spec §8)."""

import math

import pytest
import torch

from influence import LanguageModelTask, find_tracked_layers, fit_curvature
from influence.curvature import gauss_newton_product
from influence.gradients import query_gradients

from .tiny import neox, query_batch, token_data


def explicit_sequence_grads(model, task, layers, data, seed):
    """Per-sequence gradients by plain autograd on the parameters, with the fit's sampled labels."""
    params = [p for l in layers for p in l.parameters()]
    rows = []
    for i in range(data["input_ids"].shape[0]):
        batch = {k: v[i : i + 1] for k, v in data.items()}
        out = task.forward(model, batch)
        labels = task.sample_labels(out, batch, torch.tensor([i]), seed)
        grads = torch.autograd.grad(task.loss(out, batch, labels), params)
        k, row = 0, {}
        for l in layers:
            n = len(l.parameters())
            row[l.name] = l.from_parameter_grads(list(grads[k : k + n]))
            k += n
        rows.append(row)
    return rows


def explicit_fisher(rows, name):
    g = torch.stack([r[name].flatten() for r in rows])
    return g.T @ g / len(rows)


def test_ekfac_and_kfac_equal_exact_damped_inverse_for_one_token():
    model = neox()
    task = LanguageModelTask()
    data = token_data(1, 2, ragged=False)  # one sequence, one predicted token
    layers = find_tracked_layers(model)
    assert [l.name for l in layers] == [
        f"gpt_neox.layers.{i}.mlp.{n}" for i in range(2) for n in ("dense_h_to_4h", "dense_4h_to_h")
    ]
    rows = explicit_sequence_grads(model, task, layers, data, seed=3)
    q = query_gradients(model, task, layers, query_batch(3, 3, 2))
    for method in ("ekfac", "kfac"):
        curv = fit_curvature(model, task, data, method=method, seed=3)
        pre = curv.ihvp(q)
        for l in layers:
            G = explicit_fisher(rows, l.name)
            lam = 0.1 * torch.trace(G) / G.shape[0]
            assert math.isclose(curv.damping[l.name], float(lam), rel_tol=1e-10)
            exact = torch.linalg.solve(G + lam * torch.eye(G.shape[0], dtype=G.dtype), q[l.name].flatten(1).T).T
            err = (pre[l.name].flatten(1) - exact).norm() / exact.norm()
            assert err < 1e-6, (method, l.name, float(err))


def test_ekfac_eigenvalues_are_the_explicit_fisher_diagonal_in_the_kronecker_basis():
    model = neox()
    task = LanguageModelTask()
    data = token_data(6, 7)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, data, method="ekfac", seed=11, batch_size=4)
    rows = explicit_sequence_grads(model, task, layers, data, seed=11)
    for l in layers:
        G = explicit_fisher(rows, l.name)
        K = torch.kron(curv.basis.q_s[l.name], curv.basis.q_a[l.name])
        diag = torch.diagonal(K.T @ G @ K)
        assert torch.allclose(curv.lam[l.name].flatten(), diag, rtol=1e-9, atol=1e-14 * float(diag.abs().max()))
        # Σ Λ = trace(G): the damping is 0.1 × the mean eigenvalue of the exact Fisher block.
        assert math.isclose(float(curv.lam[l.name].sum()), float(torch.trace(G)), rel_tol=1e-9)


@pytest.mark.parametrize("length", [6, 40])  # short: per-sequence gradients are kept; long: the captures are
def test_gradient_cache_and_second_pass_give_the_same_eigenvalues(length):
    model = neox()
    task = LanguageModelTask()
    data = token_data(5, length)
    one = fit_curvature(model, task, data, method="ekfac", batch_size=2)
    two = fit_curvature(model, task, data, method="ekfac", batch_size=2, gradient_cache_mb=0)
    assert one.info["correction_passes"].startswith("1") and two.info["correction_passes"] == "2"
    for name in one.lam:
        assert torch.allclose(one.lam[name], two.lam[name], rtol=1e-10)


def test_lissa_converges_to_the_exact_damped_inverse_of_its_gauss_newton_products():
    model = neox(hidden=4, inter=8, layers=1, heads=1)
    task = LanguageModelTask()
    data = token_data(4, 5)
    layers = find_tracked_layers(model)
    dims = [l.shape for l in layers]
    sizes = [p * m for p, m in dims]
    n = sum(sizes)

    def unflat(x):
        out, k = {}, 0
        for l, s in zip(layers, sizes):
            out[l.name] = x[k : k + s].view(l.shape)
            k += s
        return out

    G = torch.stack(
        [
            torch.cat([v.flatten() for v in gauss_newton_product(model, task, layers, data, unflat(e)).values()])
            for e in torch.eye(n, dtype=torch.float64)
        ],
        1,
    )
    assert torch.allclose(G, G.T, atol=1e-10 * float(G.abs().max()))
    lam_value = float(torch.linalg.eigvalsh(G).max()) / 10  # any damping works; this one keeps the test short
    M = G + lam_value * torch.eye(n, dtype=G.dtype)
    ev = torch.linalg.eigvalsh(M)
    scale = 1.0 / float(ev.max())
    depth = int(math.log(1e-10) / math.log(1 - scale * float(ev.min()))) + 1
    curv = fit_curvature(model, task, data, method="lissa", batch_size=4, depth=depth, damping=lam_value, scale=scale)
    q = query_gradients(model, task, layers, query_batch(2, 3, 2))
    pre = curv.ihvp(q)
    flat_q = torch.cat([q[l.name].flatten(1) for l in layers], 1)
    exact = torch.linalg.solve(M, flat_q.T).T
    got = torch.cat([pre[l.name].flatten(1) for l in layers], 1)
    assert (got - exact).norm() / exact.norm() < 1e-6
    # the reported residual ‖(G + λ)x − v‖/‖v‖: tiny when converged, large when the recursion is cut short
    assert curv.diagnostics["solves"] == 2 and curv.diagnostics["relative_residual"] < 1e-8
    short = fit_curvature(model, task, data, method="lissa", batch_size=4, depth=3, damping=lam_value, scale=scale)
    short.ihvp(q)
    assert short.diagnostics["relative_residual"] > 1e-2


def test_lissa_runs_on_gpt2_with_fused_attention_in_float32():
    """GPT-2's default SDPA attention has no double backward: the GN products must fall back to the math kernel."""
    from .tiny import gpt2

    model, task = gpt2(dtype=torch.float32), LanguageModelTask()
    assert model.config._attn_implementation == "sdpa"
    data = token_data(8, 9)
    curv = fit_curvature(model, task, data, method="lissa", batch_size=4, depth=3, power_iterations=2)
    v = {l.name: torch.randn(1, *l.shape) for l in curv.layers}
    out = curv.ihvp(v)
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in out.values())


@pytest.mark.parametrize("width", [257, 512, 513, 1025])  # wider than one strip: the strip path
def test_gram_by_strips_is_the_full_product(width):
    """A and S come from `gram`: on CPU its strips of the upper triangle, mirrored, must be xᵀx itself."""
    from influence.curvature.factors import gram

    x = torch.randn(300, width, dtype=torch.float64, generator=torch.Generator().manual_seed(width))
    got, want = gram(x), x.T @ x
    assert float((got - want).abs().max() / want.abs().max()) < 1e-14
