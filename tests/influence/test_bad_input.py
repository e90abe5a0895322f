"""Bad input gets a one-line InfluenceError naming what to fix, and no half-written file."""

import os

import pytest
import torch
from torch import nn

from influence import (
    InfluenceError,
    LanguageModelTask,
    Query,
    compute_scores,
    context_length,
    encode_queries,
    find_tracked_layers,
    fit_curvature,
    load_curvature,
)

from .tiny import neox, query_batch, token_data


class CharTokenizer:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 30) for c in text]}


def one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_unknown_curvature_lists_the_choices():
    with pytest.raises(InfluenceError) as e:
        fit_curvature(neox(), LanguageModelTask(), token_data(2, 4), method="ekfca")
    assert "ekfac" in one_line(e) and "lissa" in one_line(e)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(InfluenceError) as e:
        fit_curvature(neox(), LanguageModelTask(), token_data(2, 4), method="ekfac", dampnig=0.1)
    assert "dampnig" in one_line(e) and "damping_factor" in one_line(e)


def test_model_without_mlp_layers():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(InfluenceError) as e:
        find_tracked_layers(model)
    assert "no module" in one_line(e)


def test_empty_completion_and_too_long_query():
    tok = CharTokenizer()
    with pytest.raises(InfluenceError) as e:
        encode_queries(tok, [Query("q", "hello", "")])
    assert "empty completion" in one_line(e)
    model = neox(ctx=16)
    with pytest.raises(InfluenceError) as e:
        encode_queries(tok, [Query("long", "x" * 20, " y")], max_length=context_length(model))
    assert "longer than the model's context of 16" in one_line(e)
    enc = encode_queries(tok, [Query("a", "ab", "c"), Query("b", "abcd", "ef")])
    assert enc["completion_mask"].tolist() == [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]]


def test_nan_weights_are_reported():
    model = neox()
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_h_to_4h.weight[0, 0] = float("nan")
    with pytest.raises(InfluenceError) as e:
        fit_curvature(model, LanguageModelTask(), token_data(3, 5), method="ekfac")
    assert "NaN" in one_line(e)


def test_factor_cache_is_reused_refit_on_change_and_refused_for_another_model(tmp_path):
    model, task, data = neox(), LanguageModelTask(), token_data(6, 6)
    a = fit_curvature(model, task, data, cache_dir=tmp_path)
    files = list(tmp_path.glob("ekfac-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))
    b = fit_curvature(model, task, data, cache_dir=tmp_path)  # loaded, not refitted
    q = query_batch(2, 3, 2)
    assert torch.equal(compute_scores(model, task, a, q, data).scores, compute_scores(model, task, b, q, data).scores)
    other = neox(seed=1)
    fit_curvature(other, task, data, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ekfac-*.safetensors"))) == 2
    with pytest.raises(InfluenceError) as e:
        load_curvature(files[0], other)
    assert "another model" in one_line(e)


def test_corrupt_factor_file(tmp_path):
    """A truncated cache is refitted by fit_curvature; loading it directly names the file."""
    model, task, data = neox(), LanguageModelTask(), token_data(4, 6)
    fitted = fit_curvature(model, task, data, cache_dir=tmp_path)
    path = next(tmp_path.glob("ekfac-*.safetensors"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InfluenceError) as e:
        load_curvature(path, model)
    assert "corrupt" in one_line(e) and path.name in one_line(e)
    refitted = fit_curvature(model, task, data, cache_dir=tmp_path)
    assert all(torch.equal(refitted.state()[k], v) for k, v in fitted.state().items())
    assert load_curvature(path, model, require_checksum=True).damping == fitted.damping


def test_loading_kfac_factors_reproduces_the_fit(tmp_path):
    model, task, data = neox(), LanguageModelTask(), token_data(6, 6)
    fitted = fit_curvature(model, task, data, method="kfac", cache_dir=tmp_path)
    loaded = load_curvature(next(tmp_path.glob("kfac-*.safetensors")), model)
    q = query_batch(2, 3, 2)
    assert loaded.damping == fitted.damping
    assert torch.equal(
        compute_scores(model, task, fitted, q, data).scores, compute_scores(model, task, loaded, q, data).scores
    )
    assert os.listdir(tmp_path) == [next(tmp_path.glob("kfac-*")).name]
