"""Scores: breakdowns that sum, architecture independence, sign by finite differences, self-influence."""

import copy

import pytest
import torch
from torch import nn

from influence import LanguageModelTask, compute_scores, find_tracked_layers, fit_curvature
from influence.gradients import query_gradients

from .tiny import gpt2, layer_grads, neox, query_batch, token_data


@pytest.mark.parametrize("method", ["ekfac", "kfac", "identity"])
def test_layer_and_token_scores_sum_to_the_sequence_score(method):
    model, task = neox(), LanguageModelTask()
    data = token_data(10, 9)
    curv = fit_curvature(model, task, data, method=method, batch_size=4)
    res = compute_scores(model, task, curv, query_batch(3, 4, 3), data, batch_size=3, per_token=True)
    assert res.scores.shape == (3, 10)
    assert res.layer_scores.shape == (3, 10, 4) and res.token_scores.shape == (3, 10, 4, 9)
    assert torch.allclose(res.layer_scores.sum(-1), res.scores, rtol=1e-10, atol=1e-12)
    assert torch.allclose(res.token_totals.sum(-1), res.scores, rtol=1e-10, atol=1e-12)
    # padding positions carry nothing
    pad = data["attention_mask"] == 0
    assert res.token_totals[:, pad].abs().max() == 0
    plain = compute_scores(model, task, curv, query_batch(3, 4, 3), data, batch_size=5)
    assert torch.allclose(plain.scores, res.scores, rtol=1e-10, atol=1e-12)


class LinearMLP(nn.Module):
    """GPT-2's MLP with nn.Linear in place of Conv1D (weights transposed): the same function."""

    def __init__(self, mlp):
        super().__init__()
        self.c_fc = nn.Linear(mlp.c_fc.weight.shape[0], mlp.c_fc.weight.shape[1]).to(mlp.c_fc.weight.dtype)
        self.c_proj = nn.Linear(mlp.c_proj.weight.shape[0], mlp.c_proj.weight.shape[1]).to(mlp.c_fc.weight.dtype)
        with torch.no_grad():
            self.c_fc.weight.copy_(mlp.c_fc.weight.T)
            self.c_fc.bias.copy_(mlp.c_fc.bias)
            self.c_proj.weight.copy_(mlp.c_proj.weight.T)
            self.c_proj.bias.copy_(mlp.c_proj.bias)
        self.act, self.dropout = mlp.act, mlp.dropout

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def test_conv1d_and_linear_models_give_the_same_scores():
    conv = gpt2()
    lin = copy.deepcopy(conv)
    for block in lin.transformer.h:
        block.mlp = LinearMLP(block.mlp)
    task, data, q = LanguageModelTask(), token_data(8, 7), query_batch(2, 3, 2)
    assert type(find_tracked_layers(conv)[0].module).__name__ == "Conv1D"
    assert isinstance(find_tracked_layers(lin)[0].module, nn.Linear)
    for method in ("ekfac", "kfac"):
        a = compute_scores(conv, task, fit_curvature(conv, task, data, method=method), q, data)
        b = compute_scores(lin, task, fit_curvature(lin, task, data, method=method), q, data)
        assert torch.allclose(a.scores, b.scores, rtol=1e-8, atol=1e-12)


def _f(model, task, q):
    with torch.no_grad():
        return float(task.measurement(task.forward(model, q), q))


def _step(model, layers, direction, eta):
    """θ ← θ − η·direction on the tracked layers (direction in canonical (P, M+1) layout)."""
    stepped = copy.deepcopy(model)
    by_name = {l.name: l for l in find_tracked_layers(stepped)}
    with torch.no_grad():
        for l in layers:
            for p, d in zip(by_name[l.name].parameters(), l.to_parameter_grads(direction[l.name])):
                p -= eta * d
    return stepped


def _train_grad(model, task, layers, seq):
    return layer_grads(layers, task.loss(task.forward(model, seq), seq))


def test_identity_score_is_the_finite_difference_change_of_f_after_an_sgd_step():
    model, task = neox(), LanguageModelTask()
    data, q = token_data(4, 8), query_batch(1, 4, 3)
    layers = find_tracked_layers(model)
    res = compute_scores(model, task, fit_curvature(model, task, data, method="identity"), q, data)
    eta = 1e-6
    for i in range(4):
        seq = {k: v[i : i + 1] for k, v in data.items()}
        g = _train_grad(model, task, layers, seq)
        fd = (_f(_step(model, layers, g, eta), task, q) - _f(_step(model, layers, g, -eta), task, q)) / (2 * eta)
        assert abs(fd - float(res.scores[0, i])) <= 1e-4 * abs(fd) + 1e-9


def test_ekfac_score_is_the_change_of_f_after_a_preconditioned_step():
    model, task = neox(), LanguageModelTask()
    data, q = token_data(6, 8), query_batch(1, 4, 3)
    layers = find_tracked_layers(model)
    curv = fit_curvature(model, task, data, method="ekfac")
    res = compute_scores(model, task, curv, q, data)
    eta = 1e-7
    for i in range(3):
        seq = {k: v[i : i + 1] for k, v in data.items()}
        g = _train_grad(model, task, layers, seq)
        pre = curv.ihvp({k: v.unsqueeze(0) for k, v in g.items()})
        d = {k: v[0] for k, v in pre.items()}
        fd = (_f(_step(model, layers, d, eta), task, q) - _f(_step(model, layers, d, -eta), task, q)) / (2 * eta)
        assert abs(fd - float(res.scores[0, i])) <= 1e-4 * abs(fd) + 1e-9


@pytest.mark.parametrize("method", ["ekfac", "identity"])
def test_a_training_sequence_equal_to_the_query_ranks_first_with_a_positive_score(method):
    model, task = neox(vocab=64, hidden=16, inter=32, dtype=torch.float32), LanguageModelTask()
    data = token_data(40, 12, vocab=64)
    q = query_batch(1, 6, 6, vocab=64, seed=5)
    data["input_ids"][17] = q["input_ids"][0]
    data["attention_mask"][17] = 1
    curv = fit_curvature(model, task, data, method=method)
    res = compute_scores(model, task, curv, q, data)
    assert int(res.scores[0].argmax()) == 17
    assert float(res.scores[0, 17]) > 0


def test_query_gradient_is_the_autograd_gradient_of_log_p_completion():
    model, task = neox(), LanguageModelTask()
    q = query_batch(2, 3, 2)
    layers = find_tracked_layers(model)
    ours = query_gradients(model, task, layers, q)
    params = [p for l in layers for p in l.parameters()]
    one = {k: v[1:2] for k, v in q.items()}
    logits = model(input_ids=one["input_ids"]).logits[0, :-1]
    logp = torch.log_softmax(logits, -1).gather(-1, one["input_ids"][0, 1:, None]).squeeze(-1)
    f = (logp * one["completion_mask"][0, 1:]).sum()
    g = torch.autograd.grad(f, params)
    assert torch.allclose(ours[layers[0].name][1], layers[0].from_parameter_grads(list(g[:2])), rtol=1e-10, atol=1e-14)


def test_low_rank_queries_score_like_their_dense_truncation_and_full_rank_is_exact():
    from influence.lowrank import low_rank_queries, query_bytes, truncate

    model, task = neox(hidden=8, inter=16), LanguageModelTask()
    data, q = token_data(7, 8), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data)
    full = compute_scores(model, task, curv, q, data, per_token=True)
    at_full = compute_scores(model, task, curv, q, data, query_rank=64)
    assert torch.allclose(at_full.scores, full.scores, rtol=1e-10, atol=1e-12)
    r2 = compute_scores(model, task, curv, q, data, query_rank=2, per_token=True)
    assert torch.allclose(r2.token_totals.sum(-1), r2.scores, rtol=1e-10, atol=1e-12)
    # the rank-2 scores are exactly the scores of the rank-2 truncated dense matrices
    from influence.gradients import capture_pass
    from influence.scoring import precondition_queries, score_captured

    pre = precondition_queries(model, task, curv, q)
    dense2 = {k: truncate(v, 2).dense() for k, v in pre.items()}
    a, ds = capture_pass(model, task, curv.layers, data, "true")
    layer, _ = score_captured(dense2, a, ds, [l.name for l in curv.layers])
    assert torch.allclose(layer.sum(-1).T, r2.scores, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(r2.scores, full.scores)
    shapes = [l.shape for l in curv.layers]
    assert query_bytes(shapes, 3, 2) == 3 * 4 * sum(2 * (p + m) for p, m in shapes)
    assert set(low_rank_queries(pre, None)) == set(pre)


def test_rank_r_layers_densified_for_a_batch_score_as_factored_and_the_choice_follows_the_cost(monkeypatch):
    """Whichever contraction a rank-r layer takes (densified for the batch where cheaper, else factored), the
    scores are the same; the choice is the cheaper by multiply-adds, and a layer too large to densify stays
    factored."""
    import influence.scoring as scoring
    from influence.lowrank import LowRank, densified_cost, densify_for_batch, factored_cost, truncate

    model, task = neox(hidden=16, inter=64), LanguageModelTask()
    data, q = token_data(7, 16), query_batch(8, 4, 3)
    curv = fit_curvature(model, task, data)
    chosen = []
    monkeypatch.setattr(
        scoring, "densify_for_batch", lambda *a, **k: chosen.append(densify_for_batch(*a, **k)) or chosen[-1]
    )
    auto = compute_scores(model, task, curv, q, data, query_rank=4).scores
    assert any(chosen)  # at these shapes (T·Q·r·(P+M) > P·M·(Q·r + B·T + B·Q)) some layer is densified
    monkeypatch.setattr(scoring, "densify_for_batch", lambda *a, **k: False)
    factored = compute_scores(model, task, curv, q, data, query_rank=4).scores
    assert torch.allclose(auto, factored, rtol=1e-5, atol=1e-6 * float(factored.abs().max()))
    # the rule: densify where the cost model says so, and only within the byte bound
    wide = truncate(torch.randn(8, 600, 150), 32)
    assert densified_cost(16, 128, 8, 32, 600, 150) < factored_cost(16, 128, 8, 32, 600, 150)
    assert densify_for_batch(wide, 16, 128) and not densify_for_batch(wide, 16, 128, max_bytes=8 * 600 * 150 * 4 - 1)
    narrow = LowRank(torch.randn(64, 6, 2), torch.randn(64, 5, 2))  # many queries, a tiny layer, one-token batch
    assert densified_cost(1, 1, 64, 2, 6, 5) > factored_cost(1, 1, 64, 2, 6, 5) and not densify_for_batch(narrow, 1, 1)
