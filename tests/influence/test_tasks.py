"""Non-LM tasks go through the same fitting and scoring code; block-diagonal factors keep their structure."""

import torch
from torch import nn

from influence import (
    ClassificationTask,
    LanguageModelTask,
    RegressionTask,
    compute_scores,
    find_tracked_layers,
    fit_curvature,
)

from .tiny import neox, query_batch, token_data


def mlp(d_in, d_out, act=nn.Tanh, width=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, d_out)).double()


def test_regression_ekfac_is_exact_for_one_example():
    model, task = mlp(3, 1), RegressionTask()
    layers = find_tracked_layers(model, patterns=[r"^\d+$"])
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64)
    data = {"x": x, "y": y}
    curv = fit_curvature(model, task, data, method="ekfac", layers=layers, seed=2)
    labels = task.sample_labels(model(x), data, torch.tensor([0]), 2)
    params = [p for l in layers for p in l.parameters()]
    g = torch.autograd.grad(task.loss(model(x), data, labels), params)
    test = {"x": torch.randn(2, 3, dtype=torch.float64), "y": torch.randn(2, 1, dtype=torch.float64)}
    res = compute_scores(model, task, curv, test, data)
    vq = torch.autograd.grad(task.measurement(model(test["x"][:1]), {k: v[:1] for k, v in test.items()}), params)
    vt = torch.autograd.grad(task.loss(model(x), data), params)
    total = 0.0
    for i, l in enumerate(layers):
        gl = l.from_parameter_grads(list(g[2 * i : 2 * i + 2])).flatten()
        G = torch.outer(gl, gl)
        lam = 0.1 * torch.trace(G) / G.shape[0]
        q = l.from_parameter_grads(list(vq[2 * i : 2 * i + 2])).flatten()
        r = l.from_parameter_grads(list(vt[2 * i : 2 * i + 2])).flatten()
        total -= float(q @ torch.linalg.solve(G + lam * torch.eye(len(gl), dtype=G.dtype), r))
    assert abs(float(res.scores[0, 0]) - total) <= 1e-8 * abs(total)


def test_classification_scores_and_sampled_labels_are_keyed_by_index():
    model, task = mlp(4, 3, act=nn.ReLU), ClassificationTask()
    layers = find_tracked_layers(model, patterns=[r"^\d+$"])
    x = torch.randn(20, 4, dtype=torch.float64)
    data = {"x": x, "y": torch.randint(0, 3, (20,))}
    out = model(x)
    a = task.sample_labels(out, data, torch.arange(20), 7)
    b = task.sample_labels(out[5:10], data, torch.arange(5, 10), 7)
    assert torch.equal(a[5:10], b)
    curv = fit_curvature(model, task, data, method="ekfac", layers=layers, batch_size=6)
    res = compute_scores(model, task, curv, {"x": x[:2], "y": data["y"][:2]}, data, per_layer=True)
    assert res.scores.shape == (2, 20) and torch.allclose(res.layer_scores.sum(-1), res.scores)
    # the test point itself is in the training set: its own influence on its loss is the most extreme, and negative
    assert int(res.scores[0].abs().argmax()) == 0 and float(res.scores[0, 0]) < 0


def test_block_diagonal_factors():
    model, task, data = neox(hidden=8, inter=16), LanguageModelTask(), token_data(8, 6)
    curv = fit_curvature(model, task, data, method="ekfac", num_blocks=2)
    for l in curv.layers:
        q_a = curv.basis.q_a[l.name]
        m = q_a.shape[0]
        h = round(m / 2)
        assert q_a[:h, h:].abs().max() == 0 and q_a[h:, :h].abs().max() == 0
        assert torch.allclose(q_a.T @ q_a, torch.eye(m, dtype=q_a.dtype), atol=1e-10)
    res = compute_scores(model, task, curv, query_batch(2, 3, 2), data)
    full = compute_scores(model, task, fit_curvature(model, task, data), query_batch(2, 3, 2), data)
    assert torch.isfinite(res.scores).all() and not torch.allclose(res.scores, full.scores)


def test_closed_form_lm_loss_gradient_equals_autograd_with_padding_and_sampled_labels():
    import torch

    from influence import LanguageModelTask

    task = LanguageModelTask()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (3, 6), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    labels = torch.randint(0, 11, (3, 5), generator=g)
    for lab in (None, labels):
        (auto,) = torch.autograd.grad(task.loss(logits, batch, lab), logits)
        closed = task.loss_output_grad(logits, batch, lab)
        assert torch.allclose(closed, auto, atol=1e-12)
        assert closed[2, 1:].abs().sum() == 0 and closed[:, -1].abs().sum() == 0  # padding and the last position


def test_one_softmax_sampling_draws_the_keyed_labels_and_their_gradient_exactly():
    """The fitting pass's combined sampling + loss gradient (one softmax) is bit-identical to `sample_labels` then
    `loss_output_grad`, padding included, and equals autograd of the loss at the labels it drew."""
    from influence import LanguageModelTask
    from influence.tasks import Task

    task = LanguageModelTask()
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 9, 50, generator=g)
    ids = torch.randint(0, 50, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[2, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    rows = torch.tensor([7, 2, 11, 0])
    labels, grad = task.sampled_loss_output_grad(logits, batch, rows, seed=3)
    ref_labels, ref_grad = Task.sampled_loss_output_grad(task, logits, batch, rows, seed=3)
    assert torch.equal(labels, ref_labels) and torch.equal(grad, ref_grad)
    assert torch.equal(labels, task.sample_labels(logits, batch, rows, 3))
    x = logits.double().requires_grad_(True)
    (auto,) = torch.autograd.grad(task.loss(x, batch, labels), x)
    assert torch.allclose(grad.double(), auto, atol=1e-6)
    assert not torch.equal(labels, task.sample_labels(logits, batch, rows, 4))  # the seed matters
