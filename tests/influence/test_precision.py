"""Mixed precision (bf16/fp16 autocast on CPU): factors stay float32/float64, finite, and close to the float32 fit."""

import pytest
import torch

from influence import InfluenceError, LanguageModelTask, compute_scores, fit_curvature
from influence.precision import AutocastTask, with_precision

from .tiny import gpt2, query_batch, token_data


@pytest.fixture(scope="module")
def setup():
    model = gpt2(vocab=64, hidden=32, layers=2, heads=2, dtype=torch.float32)
    return model, token_data(16, 12, vocab=64), query_batch(2, 4, 3, vocab=64)


def _factor(q, lam):
    return q @ torch.diag(lam) @ q.T


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_factors_are_finite_float64_and_close_to_float32(setup, precision):
    model, data, queries = setup
    task = LanguageModelTask()
    ref = fit_curvature(model, task, data, method="ekfac", labels="true", batch_size=8)
    bf = fit_curvature(model, task, data, method="ekfac", labels="true", batch_size=8, precision=precision)
    for name in ref.basis.q_a:
        b, r = bf.basis, ref.basis
        assert b.q_a[name].dtype == torch.float64 and bf.lam[name].dtype == torch.float64
        for t in (b.q_a[name], b.q_s[name], b.lam_a[name], b.lam_s[name], bf.lam[name]):
            assert torch.isfinite(t).all()
        err_a = _rel(_factor(b.q_a[name], b.lam_a[name]), _factor(r.q_a[name], r.lam_a[name]))
        assert 0 < err_a < 0.01  # > 0: the forward really ran in low precision (bf16 measured ~1e-3, fp16 ~1e-4)
        assert _rel(_factor(b.q_s[name], b.lam_s[name]), _factor(r.q_s[name], r.lam_s[name])) < 0.02
        assert _rel(bf.lam[name].sum(), ref.lam[name].sum()) < 0.01
    assert bf.describe()["precision"] == precision
    # scores under autocast rank the training sequences like float32 ones
    s32 = compute_scores(model, task, ref, queries, data).scores
    s16 = compute_scores(model, with_precision(task, precision), bf, queries, data).scores
    assert s16.dtype == torch.float32 and torch.isfinite(s16).all()
    for q in range(s32.shape[0]):
        assert torch.corrcoef(torch.stack([s32[q], s16[q]]))[0, 1] > 0.95


def test_float32_is_the_untouched_task_and_bit_identical(setup):
    model, data, _ = setup
    task = LanguageModelTask()
    assert with_precision(task, "float32") is task and isinstance(with_precision(task, "bf16"), AutocastTask)
    a = fit_curvature(model, task, data, method="kfac", batch_size=8)
    b = fit_curvature(model, task, data, method="kfac", batch_size=8, precision="float32")
    assert all(torch.equal(v, b.state()[k]) for k, v in a.state().items())


def test_unknown_precision_fails_naming_the_valid_ones(setup):
    model, data, _ = setup
    with pytest.raises(InfluenceError, match=r"unknown precision 'half'.*bf16"):
        fit_curvature(model, LanguageModelTask(), data, method="ekfac", precision="half")
    with pytest.raises(InfluenceError, match="unknown precision"):
        with_precision(LanguageModelTask(), "float16")


@pytest.mark.parametrize("cache_mb", [4096.0, 0.0])  # the eigenvalue correction from kept captures, and a 2nd pass
def test_bf16_factor_products_stay_close_to_float32_and_float32_is_untouched(setup, cache_mb):
    """`product_precision=bf16` rounds the per-batch products āᵀā, DsᵀDs and the rotations to bf16 (measured on the
    bench models: Pearson 0.9999, relative score error 0.7-1.3 %); the float32 default is bit-identical to the fit
    without the option, and an unknown value fails in one line."""
    model, data, queries = setup
    task = LanguageModelTask()
    kw = dict(method="ekfac", labels="true", batch_size=8, gradient_cache_mb=cache_mb)
    ref = fit_curvature(model, task, data, **kw)
    same = fit_curvature(model, task, data, product_precision="float32", **kw)
    assert all(torch.equal(v, same.state()[k]) for k, v in ref.state().items())
    bf = fit_curvature(model, task, data, product_precision="bf16", **kw)
    for name in ref.basis.q_a:
        assert bf.lam[name].dtype == torch.float64 and torch.isfinite(bf.lam[name]).all()
        err_a = _rel(
            _factor(bf.basis.q_a[name], bf.basis.lam_a[name]), _factor(ref.basis.q_a[name], ref.basis.lam_a[name])
        )
        assert 0 < err_a < 0.01  # > 0: the products really ran in bf16
        assert _rel(bf.lam[name].sum(), ref.lam[name].sum()) < 0.02
    s32 = compute_scores(model, task, ref, queries, data).scores
    s16 = compute_scores(model, task, bf, queries, data).scores
    assert _rel(s16, s32) < 0.05
    assert torch.corrcoef(torch.stack([s32.flatten(), s16.flatten()]))[0, 1] > 0.999
    with pytest.raises(InfluenceError, match=r"product_precision='half': choose one of \['bf16', 'float32'\]"):
        fit_curvature(model, task, data, product_precision="half", **kw)


def test_bf16_on_a_device_without_native_bf16_says_so_once(setup, monkeypatch, caplog, tmp_path):
    """On a CPU that only emulates bf16 (AVX2: a 2048 × 1025 āᵀā 4x slower than float32) asking for bf16 factor
    products or a bf16 forward is a slowdown, and the fit and the scan say so in one line; float32 says nothing."""
    import influence.precision as precision
    from influence import scan

    model, data, queries = setup
    task = LanguageModelTask()
    monkeypatch.setattr(precision, "has_native_bf16", lambda device: False)
    with caplog.at_level("WARNING", logger="influence.precision"):
        curv = fit_curvature(model, task, data, method="ekfac", batch_size=8)
        assert not caplog.records
        fit_curvature(model, task, data, method="ekfac", batch_size=8, product_precision="bf16")
        assert [r.getMessage() for r in caplog.records] == [
            "product_precision=bf16 on a CPU without native bf16 matmuls: it runs slower than float32 here "
            "(measured 4x on an AVX2 CPU); set float32"
        ]
        caplog.clear()
        scan(model, with_precision(task, "bf16"), curv, queries, data, tmp_path, progress=False)
        assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("precision=bf16 on a CPU")
    monkeypatch.setattr(precision, "has_native_bf16", lambda device: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="influence.precision"):
        fit_curvature(model, task, data, method="ekfac", batch_size=8, product_precision="bf16")
    assert not caplog.records
