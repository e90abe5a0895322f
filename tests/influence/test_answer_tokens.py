"""Per-answer-token attribution: I = Σ_t I_t over the completion's tokens, for every curvature, with real numbers."""

import pytest
import torch
import torch.nn.functional as F

from influence import InfluenceError, LanguageModelTask, compute_scores, expand_answer_tokens, fit_curvature
from influence.exact import ExactGaussNewton

from .tiny import layer_grads, neox, token_data


def ragged_queries():
    """Three queries, prompts of 3, 2, 4 tokens and completions of 3, 1, 2 (right-padded to 7 columns)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 32, (3, 7), generator=g)
    attn = torch.zeros(3, 7, dtype=torch.long)
    comp = torch.zeros(3, 7, dtype=torch.long)
    for q, (p, c) in enumerate([(3, 3), (2, 1), (4, 2)]):
        attn[q, : p + c] = 1
        comp[q, p : p + c] = 1
        ids[q, p + c :] = 0
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}


@pytest.fixture(scope="module")
def setup():
    model, task = neox(), LanguageModelTask()
    data = token_data(9, 8)
    ekfac = fit_curvature(model, task, data, method="ekfac", batch_size=4)
    return model, task, data, ekfac


def test_expansion_maps_each_row_to_its_query_and_token_and_its_measurements_sum_to_the_querys(setup):
    model, task, _, _ = setup
    q = ragged_queries()
    t = expand_answer_tokens(q)
    assert t.query.tolist() == [0, 0, 0, 1, 2, 2]
    assert t.position.tolist() == [0, 1, 2, 0, 0, 1]
    assert t.offset.tolist() == [3, 4, 5, 2, 4, 5]
    assert t.token_id.tolist() == [int(q["input_ids"][i, j]) for i, j in zip(t.query, t.offset)]
    assert t.width == 3 and t.num_queries == 3
    assert t.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert t.token_ids[1, 1:].tolist() == [-1, -1] and t.token_ids[2, 1] == q["input_ids"][2, 5]
    # each row: its query's input unchanged, one completion token kept
    assert torch.equal(t.batch["input_ids"], q["input_ids"][t.query])
    assert torch.equal(t.batch["attention_mask"], q["attention_mask"][t.query])
    assert t.batch["completion_mask"].sum(1).tolist() == [1] * 6
    assert t.batch["completion_mask"].argmax(1).tolist() == t.offset.tolist()
    with torch.no_grad():
        whole = float(task.measurement(task.forward(model, q), q))
        rows = float(task.measurement(task.forward(model, t.batch), t.batch))
    assert rows == pytest.approx(whole, rel=1e-12)


def _exact(model, task, data, ekfac):
    return ExactGaussNewton.fit(model, task, data, ekfac.layers, damping=ekfac.damping, method="dense")


@pytest.mark.parametrize("method", ["ekfac", "kfac", "identity", "exact"])
def test_answer_token_scores_sum_to_the_sequence_score_and_leave_it_unchanged(setup, method):
    model, task, data, ekfac = setup
    if method == "ekfac":
        curv = ekfac
    elif method == "exact":  # the exact damped Gauss–Newton inverse (dense solve), EK-FAC's damping
        curv = _exact(model, task, data, ekfac)
    else:
        curv = fit_curvature(model, task, data, method=method, batch_size=4)
    q = ragged_queries()
    res = compute_scores(model, task, curv, q, data, batch_size=4, per_answer_token=True)
    plain = compute_scores(model, task, curv, q, data, batch_size=4)
    assert torch.equal(res.scores, plain.scores)  # the option adds a view, it changes no score
    a = res.answer_token_scores
    assert a.shape == (3, 9, 3) and torch.equal(res.answer_tokens.mask, expand_answer_tokens(q).mask)
    scale = float(res.scores.abs().max())
    assert scale > 0 and float((a.sum(-1) - res.scores).abs().max()) <= 1e-9 * scale
    assert a[1, :, 1:].abs().max() == 0 and a[2, :, 2].abs().max() == 0  # past a completion's end: nothing
    assert a[0].abs().min() > 0  # every token of a 3-token answer carries some influence
    assert "summing to I" in res.metadata["answer_tokens"]


@pytest.mark.parametrize("method", ["ekfac", "exact"])
def test_each_token_score_is_the_score_of_a_query_measuring_that_token_alone(setup, method):
    model, task, data, ekfac = setup
    curv = ekfac if method == "ekfac" else _exact(model, task, data, ekfac)
    q = ragged_queries()
    res = compute_scores(model, task, curv, q, data, batch_size=5, per_answer_token=True)
    for qi, col, pos in [(0, 3, 0), (0, 5, 2), (1, 2, 0), (2, 5, 1)]:
        alone = {k: v[qi : qi + 1].clone() for k, v in q.items()}
        alone["completion_mask"].zero_()
        alone["completion_mask"][0, col] = 1
        want = compute_scores(model, task, curv, alone, data, batch_size=5).scores[0]
        assert torch.allclose(
            res.answer_token_scores[qi, :, pos], want, rtol=1e-9, atol=1e-12 * float(want.abs().max())
        )


def test_a_token_score_is_minus_its_preconditioned_log_prob_gradient_dot_the_training_gradient(setup):
    """Independent of the capture path: autograd of log p(x_t | x_<t) and of one row's summed token cross-entropy."""
    model, task, data, ekfac = setup
    q = ragged_queries()
    res = compute_scores(model, task, ekfac, q, data, batch_size=4, per_answer_token=True)
    ids = q["input_ids"][0:1, :6]  # query 0: prompt 3, answer at columns 3..5; its second answer token is column 4
    logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)[3, ids[0, 4]]
    pre = ekfac.ihvp({k: v.unsqueeze(0) for k, v in layer_grads(ekfac.layers, logp).items()})
    m = 6
    n = int(data["attention_mask"][m].sum())
    row = data["input_ids"][m : m + 1, :n]
    loss = F.cross_entropy(model(input_ids=row).logits[0, :-1], row[0, 1:], reduction="sum")
    g = layer_grads(ekfac.layers, loss)
    want = -sum(float((pre[k][0] * g[k]).sum()) for k in g)
    col = int((res.indices == m).nonzero())
    assert float(res.answer_token_scores[0, col, 1]) == pytest.approx(want, rel=1e-8)


def test_unit_normalized_token_scores_are_divided_by_the_full_querys_norm_and_still_sum(setup):
    model, task, data, ekfac = setup
    q = ragged_queries()
    raw = compute_scores(model, task, ekfac, q, data, batch_size=4, per_answer_token=True)
    unit = compute_scores(model, task, ekfac, q, data, batch_size=4, per_answer_token=True, normalize="unit")
    scale = float(unit.scores.abs().max())
    assert float((unit.answer_token_scores.sum(-1) - unit.scores).abs().max()) <= 1e-9 * scale
    assert unit.scores.abs().max() <= 1 + 1e-9
    # one factor per (query, candidate), shared by all its tokens: ‖∇f_q‖_M·‖∇L(z_m)‖_M of the whole query
    factor = (unit.scores / raw.scores).unsqueeze(-1)
    mask = raw.answer_tokens.mask.unsqueeze(1).expand_as(raw.answer_token_scores)
    assert torch.allclose(unit.answer_token_scores[mask], (raw.answer_token_scores * factor)[mask], rtol=1e-9)
    assert "full query's norm" in unit.metadata["answer_tokens"]


def test_bad_input_fails_in_one_line(setup):
    model, task, data, ekfac = setup
    q = ragged_queries()
    cases = [
        (lambda: compute_scores(model, task, ekfac, q, data, per_answer_token=True, query_rank=2), "full-rank"),
        (lambda: expand_answer_tokens({k: v for k, v in q.items() if k != "completion_mask"}), "completion_mask"),
        (lambda: expand_answer_tokens({**q, "completion_mask": q["completion_mask"] * 0}), r"rows \[0, 1, 2\]"),
        (lambda: expand_answer_tokens(q).fold(torch.zeros(4)), "6 answer-token rows"),
    ]
    for call, message in cases:
        with pytest.raises(InfluenceError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
