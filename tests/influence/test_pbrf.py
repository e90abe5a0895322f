"""PBRF ground truth: equals the exact damped Gauss–Newton influence to first order, is in its linear regime,
converges (or says it did not), restores the model, and agrees in sign and scale with compute_scores."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from influence import (
    ClassificationTask,
    InfluenceError,
    LanguageModelTask,
    RegressionTask,
    compute_scores,
    find_tracked_layers,
    fit_curvature,
)
from influence.pbrf import PBRFArguments, pbrf_scores
from influence.pbrf.objective import bregman_chunks, chunk_divergence
from influence.precision import with_precision

from .tiny import gpt2, query_batch, token_data


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    def __init__(self, d_in=4, hidden=12, d_out=1):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, d_out)])

    def forward(self, x):
        for i, l in enumerate(self.layers):
            x = l(x)
            x = torch.tanh(x) if i < len(self.layers) - 1 else x
        return x


def trained(task, d_out, n=40, seed=0, steps=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 5, 4, generator=g, dtype=torch.float64)
    if d_out == 1:
        y = torch.sin(x[:, :1] * 2) + 0.3 * x[:, 1:2] + 0.1 * torch.randn(n + 5, 1, generator=g, dtype=torch.float64)
    else:
        y = (x[:, 0] + 0.5 * torch.randn(n + 5, generator=g, dtype=torch.float64) > 0).long() + (x[:, 1] > 1).long()
    torch.manual_seed(seed)
    model = Net(d_out=d_out).double()
    train, test = {"x": x[:n], "y": y[:n]}, {"x": x[n:], "y": y[n:]}
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = task.loss(model(train["x"]), train) / n + 1e-3 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), train, test, find_tracked_layers(model, patterns=[r"^layers\.\d+$"])


def exact_influence(model, task, layers, train, queries, damping):
    """−∇fᵀ(G+λI)⁻¹∇L with the dense Gauss–Newton G = (1/n) Σ JᵢᵀHᵢJᵢ over the training rows."""
    params = [p for l in layers for p in l.parameters()]
    lam = torch.cat(
        [torch.full((p.numel(),), damping[l.name], dtype=torch.float64) for l in layers for p in l.parameters()]
    )

    def flat_grad(scalar):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params, retain_graph=True)])

    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        n = train["x"].shape[0]
        G = torch.zeros(len(lam), len(lam), dtype=torch.float64)
        for i in range(n):
            out = model(train["x"][i : i + 1]).reshape(-1)
            J = torch.stack([flat_grad(o) for o in out])  # (outputs, params)
            H = (
                task.output_hvp(out.detach().unsqueeze(0), {}, torch.eye(len(out), dtype=torch.float64)).squeeze(0)
                if isinstance(task, ClassificationTask)
                else torch.eye(len(out), dtype=torch.float64)
            )
            G += J.T @ H @ J / n
        gl = torch.stack(
            [
                flat_grad(task.loss(model(train["x"][i : i + 1]), {k: v[i : i + 1] for k, v in train.items()}))
                for i in range(n)
            ]
        )
        gf = torch.stack(
            [
                flat_grad(
                    task.measurement(model(queries["x"][q : q + 1]), {k: v[q : q + 1] for k, v in queries.items()})
                )
                for q in range(queries["x"].shape[0])
            ]
        )
        for p in params:
            p.requires_grad_(False)
    return -gf @ torch.linalg.solve(G + torch.diag(lam), gl.T)


@pytest.mark.parametrize("task", [RegressionTask(), ClassificationTask()], ids=["regression", "classification"])
def test_pbrf_matches_the_exact_damped_gauss_newton_influence(task):
    model, train, test, layers = trained(task, 1 if isinstance(task, RegressionTask) else 3)
    damping = {l.name: 1e-2 for l in layers}
    rows = torch.arange(10)
    res = pbrf_scores(
        model,
        task,
        train,
        test,
        damping,
        PBRFArguments(epsilon=1e-3, optimizer="lbfgs", tol=1e-5, max_steps=2000),
        indices=rows,
        layers=layers,
    )
    assert res.converged and (res.grad_norm <= 1e-5).all() and (res.steps > 1).all()
    exact = exact_influence(model, task, layers, train, test, damping)[:, rows]
    err = (res.scores - exact).norm() / exact.norm()
    assert err < 1e-3, err
    # the library's estimators share the sign and scale: positive correlation, same magnitude for EK-FAC here
    ek = compute_scores(
        model, task, fit_curvature(model, task, train, method="ekfac", layers=layers), test, train, indices=rows
    ).scores
    assert torch.corrcoef(torch.stack([ek.flatten(), res.scores.flatten()]))[0, 1] > 0.5


def test_ekfac_preconditioning_changes_the_path_not_the_answer():
    task = RegressionTask()
    model, train, test, layers = trained(task, 1)
    damping = {l.name: 1e-3 for l in layers}
    ek = fit_curvature(model, task, train, method="ekfac", layers=layers)
    rows = torch.arange(4)
    args, kw = (
        PBRFArguments(epsilon=1e-3, optimizer="lbfgs", tol=1e-5, max_steps=3000),
        dict(indices=rows, layers=layers),
    )
    res = pbrf_scores(model, task, train, test, damping, args, preconditioner=ek, **kw)
    assert res.converged and res.metadata["preconditioner"] == "ekfac"
    exact = exact_influence(model, task, layers, train, test, damping)[:, rows]
    assert (res.scores - exact).norm() / exact.norm() < 1e-3
    with pytest.raises(InfluenceError, match="preconditioner must be a fitted EK-FAC"):
        pbrf_scores(
            model,
            task,
            train,
            test,
            damping,
            args,
            preconditioner=fit_curvature(model, task, train, method="identity", layers=layers),
            **kw,
        )


@pytest.mark.parametrize("precondition", [False, True], ids=["plain", "ekfac"])
def test_mirrored_warm_start_shortens_the_minus_epsilon_solve_not_its_answer(precondition):
    task = RegressionTask()
    model, train, test, layers = trained(task, 1)
    damping = {l.name: 1e-3 for l in layers}
    ek = fit_curvature(model, task, train, method="ekfac", layers=layers) if precondition else None
    args = PBRFArguments(epsilon=1e-3, optimizer="lbfgs", tol=1e-5, max_steps=3000)
    kw = dict(indices=torch.arange(4), layers=layers, preconditioner=ek)
    cold = pbrf_scores(model, task, train, test, damping, args, **kw)
    warm = pbrf_scores(model, task, train, test, damping, replace(args, warm_start="mirror"), **kw)
    assert cold.converged and warm.converged and warm.metadata["warm_start"] == "mirror"
    assert (warm.scores - cold.scores).norm() / cold.scores.norm() < 1e-3
    assert torch.equal(warm.steps[:, 0], cold.steps[:, 0])  # +ε starts at θs either way
    assert warm.steps[:, 1].sum() < cold.steps[:, 1].sum()
    with pytest.raises(InfluenceError, match="warm_start must be"):
        replace(args, warm_start="linear")


def test_central_differences_at_epsilon_and_half_agree_and_parameters_are_restored():
    task = RegressionTask()
    model, train, test, layers = trained(task, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    damping = {l.name: 1e-3 for l in layers}
    kw = dict(indices=torch.arange(6), layers=layers)
    a = pbrf_scores(model, task, train, test, damping, PBRFArguments(2e-3, "lbfgs", tol=1e-5, max_steps=3000), **kw)
    b = pbrf_scores(model, task, train, test, damping, PBRFArguments(1e-3, "lbfgs", tol=1e-5, max_steps=3000), **kw)
    assert a.converged and b.converged
    assert (a.scores - b.scores).norm() / b.scores.norm() < 1e-2  # O(ε²) relative: linear regime
    assert b.scores.abs().max() > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_adam_converges_on_a_well_conditioned_problem_and_non_convergence_raises():
    task = RegressionTask()
    model, train, test, layers = trained(task, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    damping = {l.name: 1.0 for l in layers}  # strong damping: a well-conditioned objective
    kw = dict(indices=torch.arange(3), layers=layers)
    res = pbrf_scores(
        model,
        task,
        train,
        test,
        damping,
        PBRFArguments(epsilon=1e-3, optimizer="adam", lr=0.02, tol=1e-4, max_steps=3000),
        **kw,
    )
    assert res.converged and res.grad_norm.max() <= 1e-4
    ref = pbrf_scores(model, task, train, test, damping, PBRFArguments(epsilon=1e-3, optimizer="lbfgs", tol=1e-5), **kw)
    assert (res.scores - ref.scores).norm() / ref.scores.norm() < 1e-2
    with pytest.raises(InfluenceError, match="PBRF did not converge for training row 0"):
        pbrf_scores(
            model,
            task,
            train,
            test,
            {l.name: 1e-4 for l in layers},
            PBRFArguments(optimizer="adam", tol=1e-5, max_steps=20),
            **kw,
        )
    for k, v in model.state_dict().items():  # restored after the failure too
        assert torch.equal(v, before[k]), k


def _lm_setup():
    """A tiny float32 GPT-2 with EK-FAC fitted, its data and queries, and a copy of its weights."""
    model = gpt2(dtype=torch.float32, seed=3)
    task = LanguageModelTask()
    data = token_data(6, 10, seed=2)
    queries = query_batch(2, 4, 3, seed=5)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, data, method="ekfac", layers=layers)
    return model, task, data, queries, layers, curv, {k: v.clone() for k, v in model.state_dict().items()}


def test_language_model_pbrf_that_misses_its_budget_is_recorded_and_leaves_the_model_untouched():
    model, task, data, queries, layers, curv, before = _lm_setup()
    args = PBRFArguments(epsilon=1e-3, optimizer="lbfgs", tol=1e-6, max_steps=8, dtype=torch.float64)
    kw = dict(indices=torch.arange(2), layers=layers)
    with pytest.raises(InfluenceError, match="PBRF did not converge for training row 0"):
        pbrf_scores(model, task, data, queries, curv.damping, args, **kw)
    res = pbrf_scores(model, task, data, queries, curv.damping, replace(args, on_failure="record"), **kw)
    assert not res.converged and (res.grad_norm > 1e-6).all() and (res.grad_norm < 1).all()
    assert (res.steps >= 8).all() and res.metadata["dtype"] == "torch.float64"
    assert res.metadata["on_failure"] == "record" and torch.isfinite(res.scores).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow  # minutes, and fails: see the xfail reason
@pytest.mark.xfail(
    strict=True,
    reason="the LM PBRF stalls (L-BFGS: gradient ratio ~3e-5 after 6000 evaluations, "
    "tol 1e-5); the accuracy study records such a task as unverified instead",
)
def test_language_model_pbrf_in_float64_copy_is_linear_and_leaves_the_model_untouched():
    model, task, data, queries, layers, curv, before = _lm_setup()
    args = PBRFArguments(optimizer="lbfgs", tol=1e-5, max_steps=6000, dtype=torch.float64)
    kw = dict(indices=torch.arange(2), layers=layers)
    a = pbrf_scores(model, task, data, queries, curv.damping, replace(args, epsilon=1e-2), **kw)
    b = pbrf_scores(model, task, data, queries, curv.damping, replace(args, epsilon=5e-3), **kw)
    assert a.converged and b.converged and a.metadata["dtype"] == "torch.float64"
    assert (a.scores - b.scores).norm() / b.scores.norm() < 2e-2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ek = compute_scores(model, task, curv, queries, data, indices=torch.arange(2)).scores.double()
    assert torch.sign(ek).eq(torch.sign(a.scores)).float().mean() >= 0.5


def test_fast_bregman_term_equals_the_plain_divergence_on_ragged_sequences_and_classes():
    """Sorting by length, trimming all-padding columns and the fused KL change neither the value nor its gradient."""
    classifier, table, _, _ = trained(ClassificationTask(), 3, steps=5)
    for task, model, data in [
        (LanguageModelTask(), gpt2(seed=4), token_data(7, 12, seed=8)),
        (ClassificationTask(), classifier, table),
    ]:
        params = [
            p
            for l in find_tracked_layers(
                model, patterns=[r"^layers\.\d+$"] if isinstance(task, ClassificationTask) else None
            )
            for p in l.parameters()
        ]
        chunks = bregman_chunks(task, model, data, 3, lambda b: b)
        if isinstance(task, LanguageModelTask):  # trimmed: the longest sequence of each chunk sets its width
            assert any(c.batch["input_ids"].shape[1] < 12 for c in chunks)
        with torch.no_grad():
            ref = task.forward(model, data)
            for p in params:
                p.add_(1e-2 * torch.randn_like(p))
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            plain = task.bregman(task.forward(model, data), ref, data)
            fast = sum(chunk_divergence(task, model, c) for c in chunks)
            g_plain = torch.autograd.grad(plain, params)
            g_fast = torch.autograd.grad(fast, params)
            for p in params:
                p.requires_grad_(False)
        assert plain > 0 and torch.allclose(fast, plain, rtol=1e-10, atol=0)
        for a, b in zip(g_fast, g_plain):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)


def test_bad_inputs_are_refused_in_one_line():
    task = RegressionTask()
    model, train, test, layers = trained(task, 1, steps=5)
    with pytest.raises(InfluenceError, match="damping has no λ for layers"):
        pbrf_scores(model, task, train, test, {"layers.0": 1.0}, layers=layers)
    with pytest.raises(InfluenceError, match="epsilon must be a positive number"):
        PBRFArguments(epsilon=0.0)
    with pytest.raises(InfluenceError, match="on_failure must be"):
        PBRFArguments(on_failure="ignore")
    with pytest.raises(InfluenceError, match="unknown PBRF optimizer"):
        PBRFArguments(optimizer="sgd")
    with pytest.raises(InfluenceError, match="no Bregman divergence for NoDivergence"):
        pbrf_scores(model, NoDivergence(), train, test, {l.name: 1.0 for l in layers}, layers=layers)


class NoDivergence(RegressionTask):
    """A task that declares no Bregman divergence: the PBRF refuses it before any work."""

    divergence = None


def test_a_task_under_autocast_keeps_its_bregman_divergence_and_trimming():
    """`with_precision` wraps the task; the wrapper hands the PBRF the wrapped task's divergence, positions and
    trimming unchanged (only the model's forward runs under autocast), so the PBRF runs on a bf16 task."""
    plain, wrapped = LanguageModelTask(), with_precision(LanguageModelTask(), "bf16")
    data = {k: torch.cat([v, torch.zeros(5, 3, dtype=v.dtype)], 1) for k, v in token_data(5, 9, seed=8).items()}
    g = torch.Generator().manual_seed(0)
    out, ref = torch.randn(5, 12, 32, generator=g), torch.randn(5, 12, 32, generator=g)
    assert wrapped.divergence == plain.divergence == "softmax_kl"
    assert torch.equal(wrapped.bregman(out, ref, data), plain.bregman(out, ref, data))
    assert torch.equal(wrapped.bregman_positions(data), plain.bregman_positions(data))
    trimmed, plain_trimmed = wrapped.trim(data), plain.trim(data)
    assert trimmed["input_ids"].shape[1] < 12 and trimmed.keys() == plain_trimmed.keys()
    assert all(torch.equal(trimmed[k], plain_trimmed[k]) for k in trimmed)
    model = gpt2(dtype=torch.float32, seed=3)
    layers = find_tracked_layers(model)
    args = PBRFArguments(optimizer="lbfgs", tol=1e-6, max_steps=4, on_failure="record")
    res = pbrf_scores(
        model,
        wrapped,
        data,
        query_batch(2, 4, 3, seed=5),
        {l.name: 1e-2 for l in layers},
        args,
        indices=torch.arange(2),
        layers=layers,
    )
    assert torch.isfinite(res.scores).all() and res.metadata["n_bregman"] == 5 and (res.steps >= 4).all()
