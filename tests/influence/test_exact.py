"""The exact damped Gauss–Newton reference: dense and CG agree, the operator is the GN the other tests build by hand,
EK-FAC equals it where EK-FAC is exact, and the PBRF agrees with it (so it is the PBRF's linearization)."""

import pytest
import torch

from influence import (
    ClassificationTask,
    InfluenceError,
    LanguageModelTask,
    RegressionTask,
    compute_scores,
    find_tracked_layers,
    fit_curvature,
)
from influence.curvature import gauss_newton_product
from influence.exact import ExactGaussNewton, GaussNewtonOperator, exact_ihvp, exact_solve
from influence.gradients import query_gradients
from influence.pbrf import PBRFArguments, pbrf_scores

from .test_pbrf import exact_influence, trained
from .tiny import neox, query_batch, token_data


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a)
    den = sum(float(b[k].double().norm() ** 2) for k in b)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def regression():
    task = RegressionTask()
    model, train, test, layers = trained(task, 1)
    return task, model, train, test, layers


def test_dense_and_cg_agree_and_report_their_residual(regression):
    task, model, train, test, layers = regression
    damping = {l.name: 1e-2 * (i + 1) for i, l in enumerate(layers)}  # per layer, as the estimators' is
    grads = query_gradients(model, task, layers, test)
    op = GaussNewtonOperator(model, task, layers, train, batch_size=16)  # 40 rows: 3 batches, averaged by size
    dense = exact_solve(op, grads, damping, method="dense")
    cg = exact_solve(op, grads, damping, method="cg", tol=1e-12, max_iter=2000)
    ek = fit_curvature(model, task, train, method="ekfac", layers=layers).with_damping(damping)
    pcg = exact_solve(op, grads, damping, method="cg", tol=1e-12, max_iter=2000, preconditioner=ek)
    assert dense.method == "dense" and cg.method == "cg" and dense.relative_residual < 1e-12
    assert cg.relative_residual <= 1e-12 and pcg.relative_residual <= 1e-12
    assert _rel(cg.x, dense.x) < 1e-8 and _rel(pcg.x, dense.x) < 1e-8
    # (whether EK-FAC's preconditioning saves iterations depends on the problem: 58 vs 59 here, more on digits)
    assert exact_solve(op, grads, damping).method == "dense"  # auto: 229 parameters
    short = exact_solve(op, grads, damping, method="cg", tol=1e-12, max_iter=3)
    assert short.iterations == 3 and short.relative_residual > 1e-6  # a truncated solve says so
    # the operator is the Gauss–Newton the PBRF tests build by hand from per-row Jacobians: the scores agree
    exact = ExactGaussNewton.fit(model, task, train, layers, damping=damping, method="cg", tol=1e-12, max_iter=2000)
    got = compute_scores(model, task, exact, test, train).scores
    want = exact_influence(model, task, layers, train, test, damping)
    assert ((got - want).norm() / want.norm()) < 1e-8
    assert exact.diagnostics["relative_residual"] <= 1e-12 and exact.diagnostics["solves"] == test["x"].shape[0]


def test_language_model_operator_is_the_whole_set_gauss_newton_and_cg_matches_dense():
    """Ragged sequences in batches sorted by length and trimmed: the same G as one product on all rows at once."""
    model = neox(hidden=4, inter=8, layers=1, heads=1)
    task = LanguageModelTask()
    data = token_data(5, 6)
    layers = find_tracked_layers(model)
    op = GaussNewtonOperator(model, task, layers, data, batch_size=2)
    g = op.matrix()
    v = torch.randn(2, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one = {k: t[0] for k, t in op.unflatten(v).items()}
    whole = op.flatten({k: t[None] for k, t in gauss_newton_product(model, task, layers, data, one).items()})[0]
    assert torch.allclose(g @ v[0], whole, rtol=1e-10, atol=1e-14)
    assert torch.allclose(g, g.T, atol=1e-12 * float(g.abs().max()))
    grads = query_gradients(model, task, layers, query_batch(2, 3, 2))
    damping = {l.name: 1e-3 for l in layers}
    dense = exact_ihvp(model, task, layers, data, grads, damping, method="dense")
    cg = exact_ihvp(model, task, layers, data, grads, damping, method="cg", tol=1e-12, max_iter=3000)
    assert cg.relative_residual <= 1e-12 and _rel(cg.x, dense.x) < 1e-8


class UnitResidual(RegressionTask):
    """Sampled labels one below the prediction: the sampled Fisher of one row is then exactly its Gauss–Newton."""

    def sample_labels(self, outputs, batch, indices, seed):
        return outputs.detach() - 1.0


def test_ekfac_equals_the_exact_solve_where_it_is_exact(regression):
    """One example and one tracked layer: G = (ds dsᵀ) ⊗ (ā āᵀ) is a Kronecker product, diagonal in EK-FAC's basis,
    and there is no cross-layer block to drop. With every layer tracked, the cross-layer blocks make them differ."""
    _, model, train, test, layers = regression
    task = UnitResidual()
    one = {k: v[:1] for k, v in train.items()}
    grads = query_gradients(model, task, layers[1:2], test)
    ek = fit_curvature(model, task, one, method="ekfac", layers=layers[1:2])
    sol = exact_ihvp(model, task, layers[1:2], one, grads, ek.damping, method="dense")
    assert sol.relative_residual < 1e-12 and _rel(ek.ihvp(grads), sol.x) < 1e-8
    all_grads = query_gradients(model, task, layers, test)
    ek_all = fit_curvature(model, task, one, method="ekfac", layers=layers)
    full = exact_ihvp(model, task, layers, one, all_grads, ek_all.damping, method="dense")
    assert _rel(ek_all.ihvp(all_grads), full.x) > 1e-3


@pytest.mark.parametrize("task", [RegressionTask(), ClassificationTask()], ids=["regression", "classification"])
def test_pbrf_agrees_with_the_exact_solve(task):
    model, train, test, layers = trained(task, 1 if isinstance(task, RegressionTask) else 3)
    damping = {l.name: 1e-2 for l in layers}
    rows = torch.arange(4)
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
    exact = ExactGaussNewton.fit(model, task, train, layers, damping=damping, method="cg", tol=1e-10)
    got = compute_scores(model, task, exact, test, train, indices=rows).scores
    assert res.converged and exact.diagnostics["relative_residual"] <= 1e-10
    assert ((res.scores - got).norm() / got.norm()) < 1e-3  # same sign and scale as every estimator


def test_bad_inputs_are_refused(regression):
    task, model, train, test, layers = regression
    grads = query_gradients(model, task, layers, test)
    with pytest.raises(InfluenceError, match="exact method 'lu'"):
        exact_ihvp(model, task, layers, train, grads, {l.name: 1.0 for l in layers}, method="lu")
    with pytest.raises(InfluenceError, match="damping has no λ for layers"):
        exact_ihvp(model, task, layers, train, grads, {layers[0].name: 1.0})
    with pytest.raises(InfluenceError, match="needs a damping dict"):
        ExactGaussNewton.fit(model, task, train, layers)
