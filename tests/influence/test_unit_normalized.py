"""Unit-normalized scores: I / (‖∇f_q‖_M·‖∇L(z_m)‖_M), the cosine in the preconditioned space (TrackStar, RelatIF),
against dense references built from autograd gradients; the scan and its manifest; the refusals."""

import json
import math

import pytest
import torch

from influence import (
    CURVATURES,
    InfluenceError,
    LanguageModelTask,
    ScanArguments,
    compute_scores,
    find_tracked_layers,
    fit_curvature,
    precondition_queries,
)
from influence.exact import ExactGaussNewton
from influence.fingerprint import config_fingerprint
from influence.scan import MANIFEST, scan, top_k_breakdown

from .tiny import neox, query_batch, token_data


def _as_layers(layers, grads):
    out, k = {}, 0
    for l in layers:
        n = len(l.parameters())
        out[l.name] = l.from_parameter_grads(list(grads[k : k + n]))
        k += n
    return out


def autograd_rows(model, task, layers, batch, objective, labels=None):
    """Per-row gradients by plain autograd on the parameters: of the measurement f (queries), of the training loss
    with true labels (candidates, `labels=None`), or with the given labels."""
    params = [p for l in layers for p in l.parameters()]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        out = task.forward(model, one)
        if objective == "measurement":
            value = task.measurement(out, one)
        else:
            value = task.loss(out, one) if labels is None else task.loss(out, one, labels[i])
        rows.append(_as_layers(layers, torch.autograd.grad(value, params)))
    return rows


def stacked(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def unit_reference(apply_inverse, q_rows, m_rows):
    """(I, U) of shape (Q, N): I = −Σ_ℓ⟨M_ℓ g_q, g_m⟩, U = I / (‖g_q‖_M ‖g_m‖_M), `apply_inverse` applying M per layer."""
    gq, gm = stacked(q_rows), stacked(m_rows)
    mq, mm = apply_inverse(gq), apply_inverse(gm)
    inf = -sum(mq[k].flatten(1) @ gm[k].flatten(1).T for k in gq)
    nq = sum((mq[k] * gq[k]).flatten(1).sum(1) for k in gq).sqrt()
    nm = sum((mm[k] * gm[k]).flatten(1).sum(1) for k in gm).sqrt()
    return inf, inf / nq[:, None] / nm[None, :]


def test_ekfac_unit_scores_are_the_formula_from_autograd_gradients_and_the_fitted_inverse():
    model, task = neox(), LanguageModelTask()
    data, q = token_data(9, 8), query_batch(3, 4, 3)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, data, method="ekfac", batch_size=4)
    res = compute_scores(model, task, curv, q, data, batch_size=4, normalize="unit")
    plain = compute_scores(model, task, curv, q, data, batch_size=4)
    q_rows = autograd_rows(model, task, layers, q, "measurement")
    m_rows = autograd_rows(model, task, layers, data, "loss")
    inf, unit = unit_reference(curv.ihvp, q_rows, m_rows)
    assert torch.allclose(plain.scores, inf, rtol=1e-8, atol=1e-12)
    assert torch.allclose(res.scores, unit, rtol=1e-8, atol=1e-12)
    assert res.metadata["normalize"] == "unit" and plain.metadata["normalize"] == "none"
    # the division is by two positive norms: same sign, and a ranking that differs from the plain one
    assert torch.equal(torch.sign(res.scores), torch.sign(plain.scores))
    assert 0.02 < float(res.scores.abs().max()) <= 1
    assert not torch.equal(res.scores.argsort(1), plain.scores.argsort(1))


def test_ekfac_unit_scores_equal_the_explicit_damped_inverse_where_ekfac_is_exact():
    model, task = neox(), LanguageModelTask()
    fit_data = token_data(1, 2, ragged=False)  # one sequence, one predicted token: EK-FAC is the exact damped Fisher
    data, q = token_data(6, 8, seed=4), query_batch(2, 3, 2)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, fit_data, method="ekfac", seed=3)
    out = task.forward(model, fit_data)
    labels = task.sample_labels(out, fit_data, torch.tensor([0]), 3)
    fit_row = autograd_rows(model, task, layers, fit_data, "loss", labels=[labels])[0]
    inverse = {}
    for l in layers:
        g = fit_row[l.name].flatten()
        G = torch.outer(g, g)
        lam = 0.1 * torch.trace(G) / G.shape[0]
        assert math.isclose(curv.damping[l.name], float(lam), rel_tol=1e-10)
        inverse[l.name] = torch.linalg.inv(G + lam * torch.eye(G.shape[0], dtype=G.dtype))

    def dense(v):
        return {k: (t.flatten(1) @ inverse[k]).reshape(t.shape) for k, t in v.items()}

    _, unit = unit_reference(
        dense, autograd_rows(model, task, layers, q, "measurement"), autograd_rows(model, task, layers, data, "loss")
    )
    res = compute_scores(model, task, curv, q, data, batch_size=4, normalize="unit")
    err = float((res.scores - unit).norm() / unit.norm())
    assert err < 1e-9, err  # EK-FAC is exact here: only rounding remains
    assert float(unit.abs().max()) > 0.05  # not a comparison of near-zeros


def test_identity_unit_scores_are_minus_the_cosine_of_the_flattened_gradients():
    model, task = neox(), LanguageModelTask()
    data, q = token_data(7, 8), query_batch(3, 4, 3)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, data, method="identity")
    res = compute_scores(model, task, curv, q, data, batch_size=3, normalize="unit")
    flat_q = torch.stack(
        [torch.cat([r[l.name].flatten() for l in layers]) for r in autograd_rows(model, task, layers, q, "measurement")]
    )
    flat_m = torch.stack(
        [torch.cat([r[l.name].flatten() for l in layers]) for r in autograd_rows(model, task, layers, data, "loss")]
    )
    cos = torch.nn.functional.cosine_similarity(flat_q[:, None, :], flat_m[None, :, :], dim=-1)
    # I = −∇fᵀ∇L, so U = −cos(∇f, ∇L) = cos(∇f, −∇L): positive when a descent step on z_m raises f
    assert torch.allclose(res.scores, -cos, rtol=1e-9, atol=1e-12)
    # a training sequence whose loss gradient is minus the query's gradient scores exactly 1: the query itself,
    # trained on with true labels, has ∇L = −∇ log p = −∇f when every predicted token is a completion token
    self_q = {"input_ids": q["input_ids"][:1], "attention_mask": q["attention_mask"][:1]}
    full_q = {**self_q, "completion_mask": torch.ones_like(self_q["input_ids"])}
    one = compute_scores(model, task, curv, full_q, self_q, normalize="unit")
    assert abs(float(one.scores[0, 0]) - 1.0) < 1e-10


@pytest.mark.parametrize("method", ["ekfac", "kfac", "identity"])
def test_unit_scores_are_bounded_and_their_layer_and_token_views_sum_to_them(method):
    model, task = neox(), LanguageModelTask()
    data, q = token_data(10, 9), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data, method=method, batch_size=4)
    res = compute_scores(model, task, curv, q, data, batch_size=3, per_token=True, normalize="unit")
    assert res.scores.abs().max() <= 1 + 1e-6
    assert torch.allclose(res.layer_scores.sum(-1), res.scores, rtol=1e-10, atol=1e-12)
    assert torch.allclose(res.token_totals.sum(-1), res.scores, rtol=1e-10, atol=1e-12)
    per_layer = compute_scores(model, task, curv, q, data, batch_size=4, per_layer=True, normalize="unit")
    assert torch.allclose(per_layer.scores, res.scores, rtol=1e-10, atol=1e-12)
    assert torch.allclose(per_layer.layer_scores, res.layer_scores, rtol=1e-10, atol=1e-12)
    # every view is the plain view divided by the same (query, sequence) factor
    plain = compute_scores(model, task, curv, q, data, batch_size=3, per_token=True)
    factor = res.scores / plain.scores
    assert torch.allclose(res.token_scores, plain.token_scores * factor[..., None, None], rtol=1e-9, atol=1e-14)


def test_low_rank_unit_scores_divide_by_the_full_rank_query_norms():
    model, task = neox(), LanguageModelTask()
    data, q = token_data(8, 8), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data, method="ekfac")
    factor = (
        compute_scores(model, task, curv, q, data, normalize="unit").scores
        / compute_scores(model, task, curv, q, data).scores
    )  # 1 / (‖∇f_q‖_M ‖∇L(z_m)‖_M), full rank
    r2 = compute_scores(model, task, curv, q, data, query_rank=2, per_token=True)
    u2 = compute_scores(model, task, curv, q, data, query_rank=2, per_token=True, normalize="unit")
    assert torch.allclose(u2.scores, r2.scores * factor, rtol=1e-9, atol=1e-14)
    assert torch.allclose(u2.token_totals.sum(-1), u2.scores, rtol=1e-10, atol=1e-12)
    assert u2.metadata["query_rank"] == "2" and u2.metadata["normalize"] == "unit"


def _reseal_without(path, key):
    """An older scan's manifest: the same fields without `key`, sealed again."""
    old = json.loads(path.read_text())
    old.pop("checksum")
    old.pop(key)
    path.write_text(json.dumps({**old, "checksum": config_fingerprint(old)}))


def test_a_unit_scan_equals_compute_scores_and_never_shares_a_directory_with_a_plain_scan(tmp_path):
    model, task = neox(), LanguageModelTask()
    data, q = token_data(21, 9), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data)
    ref = compute_scores(model, task, curv, q, data, per_layer=True, normalize="unit")
    opts = {"batch_size": 4, "chunk_batches": 2, "progress": False}
    res = scan(model, task, curv, q, data, tmp_path / "unit", normalize="unit", **opts)
    assert torch.allclose(res.scores, ref.scores.float(), rtol=1e-6, atol=1e-9)
    assert torch.allclose(res.layer_scores, ref.layer_scores.permute(0, 2, 1).float(), rtol=1e-5, atol=1e-9)
    assert res.metadata["normalize"] == "unit"
    assert json.loads((tmp_path / "unit" / MANIFEST).read_text())["normalize"] == "unit"
    # given preconditioned gradients, the query norms are still those of the full-rank gradients
    given = scan(
        model,
        task,
        curv,
        q,
        data,
        tmp_path / "given",
        normalize="unit",
        preconditioned=precondition_queries(model, task, curv, q),
        **opts,
    )
    assert torch.allclose(given.scores, res.scores, rtol=1e-6, atol=1e-9)
    ranked = scan(model, task, curv, q, data, tmp_path / "r2", normalize="unit", query_rank=2, **opts)
    ref2 = compute_scores(model, task, curv, q, data, normalize="unit", query_rank=2)
    assert torch.allclose(ranked.scores, ref2.scores.float(), rtol=1e-5, atol=1e-9)
    # the full-rank breakdown of the top rows, normalized the same way, is the scan's own score there
    values, rows = res.top_k(4)
    tops = top_k_breakdown(model, task, curv, q, data, rows, batch_size=3, normalize="unit")
    for qi, t in enumerate(tops):
        assert torch.allclose(t.scores, ref.scores[qi, rows[qi]], rtol=1e-10)
        assert torch.allclose(t.scores.float(), values[qi], rtol=1e-5)
        assert torch.allclose(t.token_scores.sum((1, 2)), t.scores, rtol=1e-10)
    # a plain scan's directory is refused for a unit scan, and the reverse
    plain = scan(model, task, curv, q, data, tmp_path / "plain", **opts)
    with pytest.raises(InfluenceError, match="other normalize") as e:
        scan(model, task, curv, q, data, tmp_path / "plain", normalize="unit", **opts)
    assert "\n" not in str(e.value)
    with pytest.raises(InfluenceError, match="other normalize"):
        scan(model, task, curv, q, data, tmp_path / "unit", **opts)
    # a manifest written before `normalize` existed is a plain scan's: resumed as one, refused for unit
    _reseal_without(tmp_path / "plain" / MANIFEST, "normalize")
    again = scan(model, task, curv, q, data, tmp_path / "plain", preconditioned={"never": "used"}, **opts)
    assert torch.equal(again.scores, plain.scores)
    with pytest.raises(InfluenceError, match="other normalize"):
        scan(model, task, curv, q, data, tmp_path / "plain", normalize="unit", **opts)


def test_lissa_and_unknown_normalizations_are_refused_before_any_work(tmp_path):
    flags = {n: c.batched_ihvp for n, c in CURVATURES.items()}
    assert flags == {"ekfac": True, "kfac": True, "lissa": False, "identity": True}
    assert ExactGaussNewton.batched_ihvp is False
    model, task = neox(), LanguageModelTask()
    data, q = token_data(8, 7), query_batch(2, 3, 2)
    lissa = fit_curvature(model, task, data, method="lissa", depth=3, batch_size=4)
    calls = [
        lambda: compute_scores(model, task, lissa, q, data, normalize="unit"),
        lambda: scan(model, task, lissa, q, data, tmp_path / "lissa", normalize="unit", progress=False),
        lambda: top_k_breakdown(model, task, lissa, q, data, torch.tensor([[0, 1], [2, 3]]), normalize="unit"),
    ]
    for call in calls:
        with pytest.raises(InfluenceError, match=r"'lissa' solves one vector at a time") as e:
            call()
        assert "\n" not in str(e.value) and "['ekfac', 'identity', 'kfac']" in str(e.value)
    assert lissa.diagnostics == {}  # not one solve was made
    assert not (tmp_path / "lissa").exists()
    ek = fit_curvature(model, task, data, method="identity")
    for bad in ("cosine", "Unit", None):
        with pytest.raises(InfluenceError, match=r"normalize must be one of \['none', 'unit'\]"):
            compute_scores(model, task, ek, q, data, normalize=bad)
        with pytest.raises(InfluenceError, match=r"normalize must be one of"):
            ScanArguments(normalize=bad)
        with pytest.raises(InfluenceError, match=r"normalize must be one of"):
            scan(model, task, ek, q, data, tmp_path / "bad", normalize=bad, progress=False)
    assert not (tmp_path / "bad").exists()
