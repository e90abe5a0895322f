"""Block-diagonal Kronecker factors (curvature option num_blocks): exact against factors built by hand."""

import pytest
import torch

from influence import LanguageModelTask, find_tracked_layers, fit_curvature
from influence.capture import eval_mode, frozen_parameters
from influence.curvature.factors import _blocks
from influence.gradients import capture_pass

from .tiny import neox, token_data


def _explicit_factors(model, task, data, layers):
    """A = E_tok[ā āᵀ] and S = E_tok[Ds Dsᵀ] over loss-bearing positions, with the true labels (empirical Fisher)."""
    with eval_mode(model), frozen_parameters(model):
        a, ds = capture_pass(model, task, layers, data, "true")
    mask = task.loss_mask(data)
    n = int(mask.sum())
    return {
        l.name: (a[l.name][mask].T @ a[l.name][mask] / n, ds[l.name][mask].T @ ds[l.name][mask] / n) for l in layers
    }


def _block_mask(dim: int, n: int) -> torch.Tensor:
    mask = torch.zeros(dim, dim, dtype=torch.bool)
    for s, e in _blocks(dim, n):
        mask[s:e, s:e] = True
    return mask


def _factor(q, lam):
    return q @ torch.diag(lam) @ q.T


@pytest.fixture(scope="module")
def setup():
    model, task, data = neox(hidden=8, inter=16), LanguageModelTask(), token_data(10, 7)
    layers = find_tracked_layers(model)
    return model, task, data, layers, _explicit_factors(model, task, data, layers)


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_fitted_factors_are_the_dense_factors_with_off_block_entries_zeroed(setup, blocks):
    model, task, data, layers, explicit = setup
    curv = fit_curvature(model, task, data, method="kfac", labels="true", num_blocks=blocks, batch_size=4)
    for l in layers:
        a, s = explicit[l.name]
        b = curv.basis
        fa, fs = _factor(b.q_a[l.name], b.lam_a[l.name]), _factor(b.q_s[l.name], b.lam_s[l.name])
        assert torch.allclose(fa, a * _block_mask(a.shape[0], blocks), atol=1e-12)
        assert torch.allclose(fs, s * _block_mask(s.shape[0], blocks), atol=1e-12)


def test_one_block_is_the_dense_default(setup):
    model, task, data, layers, _ = setup
    dense = fit_curvature(model, task, data, method="ekfac", batch_size=4)
    one = fit_curvature(model, task, data, method="ekfac", num_blocks=1, batch_size=4)
    assert dense.state().keys() == one.state().keys()
    assert all(torch.equal(v, one.state()[k]) for k, v in dense.state().items())


def test_block_diagonal_kfac_ihvp_is_the_explicit_inverse_of_the_block_kronecker_product(setup):
    model, task, data, layers, explicit = setup
    curv = fit_curvature(model, task, data, method="kfac", labels="true", num_blocks=2, batch_size=4)
    v = {
        l.name: torch.randn(2, *l.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        for l in layers
    }
    out = curv.ihvp(v)
    for l in layers:
        a, s = explicit[l.name]
        a, s = a * _block_mask(a.shape[0], 2), s * _block_mask(s.shape[0], 2)
        # row-major vec: (S ⊗ A) vec(V) = vec(S V A) for symmetric A; K-FAC scales by the mean tokens per sequence
        g = curv.tokens_per_sequence * torch.kron(s, a) + curv.damping[l.name] * torch.eye(
            s.shape[0] * a.shape[0], dtype=torch.float64
        )
        want = torch.linalg.solve(g, v[l.name].flatten(1).T).T.reshape(v[l.name].shape)
        assert torch.allclose(out[l.name], want, rtol=1e-8, atol=1e-10)


def test_block_count_must_be_positive(setup):
    model, task, data, *_ = setup
    from influence import InfluenceError

    with pytest.raises(InfluenceError, match="num_blocks must be >= 1"):
        fit_curvature(model, task, data, method="kfac", num_blocks=0)
