"""The linear datamodeling score on a synthetic linear datamodel: outputs = masks @ true scores (+ noise)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.lds import lds_table, linear_datamodeling_score, predicted_outputs


@pytest.fixture(scope="module")
def datamodel():
    rng = np.random.default_rng(0)
    n, q, s = 200, 6, 80
    true = rng.normal(size=(q, n))
    masks = np.zeros((s, n), dtype=bool)
    for i in range(s):
        masks[i, rng.permutation(n)[: n // 2]] = True
    outputs = masks @ true.T + 0.1 * rng.normal(size=(s, q))
    return true, masks, outputs


def test_true_scores_score_one_random_zero_negated_minus_one(datamodel):
    true, masks, outputs = datamodel
    good = linear_datamodeling_score(true, masks, outputs)
    assert good.per_query.shape == (6,) and good.n_subsets == 80 and good.n_queries == 6
    assert good.mean > 0.98 and (good.per_query > 0.95).all()
    assert good.ci_low <= good.mean <= good.ci_high and good.sem >= 0
    # rank-based: the scale of the scores (1/N or not) and an offset do not matter
    assert np.allclose(linear_datamodeling_score(true / 200 + 3, masks, outputs).per_query, good.per_query)
    rand = linear_datamodeling_score(np.random.default_rng(1).normal(size=true.shape), masks, outputs)
    assert abs(rand.mean) < 0.15
    neg = linear_datamodeling_score(-true, masks, outputs)
    assert neg.mean < -0.98 and np.allclose(neg.per_query, -good.per_query)


def test_torch_tensors_are_accepted(datamodel):
    true, masks, outputs = datamodel
    res = linear_datamodeling_score(torch.tensor(true), torch.tensor(masks), torch.tensor(outputs))
    assert math.isclose(res.mean, linear_datamodeling_score(true, masks, outputs).mean)


def test_scores_of_a_subset_of_rows_and_the_long_table(datamodel):
    true, masks, outputs = datamodel
    rows = np.arange(0, 200, 2)
    pred = predicted_outputs(true[:, rows], masks, rows=rows)
    assert np.allclose(pred, masks[:, rows] @ true[:, rows].T)
    partial = linear_datamodeling_score(true[:, rows], masks, outputs, rows=rows)
    assert 0.3 < partial.mean < linear_datamodeling_score(true, masks, outputs).mean  # half the datamodel
    names = [f"test_{j}" for j in range(6)]
    long = pd.DataFrame(
        [
            {"method": m, "test_point": names[j], "train_row": int(r), "score": float(sign * true[j, r])}
            for m, sign in (("exact", 1.0), ("negated", -1.0))
            for j in range(6)
            for r in rows
        ]
    ).sample(frac=1.0, random_state=0)  # order does not matter
    table = lds_table(long, masks, outputs, names).set_index(["method", "test_point"])
    assert len(table) == 12 and (table["n_train_rows"] == 100).all() and (table["n_subsets"] == 80).all()
    assert np.allclose(table.loc["exact"].loc[names, "lds"], partial.per_query)
    assert np.allclose(table.loc["negated"].loc[names, "lds"], -partial.per_query)


def test_bad_shapes_and_constant_queries(datamodel):
    true, masks, outputs = datamodel
    with pytest.raises(ValueError, match="training rows"):
        linear_datamodeling_score(true[:, :10], masks, outputs)
    with pytest.raises(ValueError, match="subsets × queries"):
        linear_datamodeling_score(true, masks, outputs[:, :3])
    with pytest.raises(ValueError, match="at least 3 subsets"):
        linear_datamodeling_score(true, masks[:2], outputs[:2])
    flat = outputs.copy()
    flat[:, 0] = 1.0  # a query whose output never changes has no rank correlation
    res = linear_datamodeling_score(true, masks, flat)
    assert math.isnan(res.per_query[0]) and res.n_queries == 5 and not math.isnan(res.mean)
