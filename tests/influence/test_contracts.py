"""The extension contracts: curvature capabilities instead of names, a damping copy, the whole `info` kept through
the factor cache, typed scan arguments, one capture loop, and `ScanResult.row`."""

import dataclasses

import pytest
import torch

from influence import CURVATURES, InfluenceError, LanguageModelTask, ScanArguments, capture_batches, fit_curvature, scan
from influence.curvature import get_curvature_class, register
from influence.curvature.identity import Identity
from influence.memory import MIB, layer_memory

from .tiny import neox, query_batch, token_data


def test_methods_declare_what_they_keep_and_need():
    flags = {n: (c.stores_factors, c.uses_labels, c.cacheable) for n, c in CURVATURES.items()}
    assert flags == {
        "ekfac": (True, True, True),
        "kfac": (True, True, True),
        "lissa": (False, True, False),
        "identity": (False, False, True),
    }
    for name, cls in CURVATURES.items():  # the memory plan asks the method
        bytes_ = {k: round(v * MIB) for k, v in layer_memory((3, 5), 1, None, method=name).items() if k != "queries"}
        kept = cls.memory((3, 5))
        assert bytes_ == {**kept, "total": sum(kept.values()) + 60} and (sum(kept.values()) > 0) == cls.stores_factors
    with pytest.raises(InfluenceError, match="unknown curvature"):
        layer_memory((3, 5), 1, None, method="kfca")


def test_a_damping_copy_equals_a_fit_with_that_damping_and_leaves_the_original():
    model, task, data = neox(), LanguageModelTask(), token_data(9, 7)
    ek = fit_curvature(model, task, data, method="ekfac")
    g = {l.name: torch.randn(2, *l.shape, dtype=torch.float64) for l in ek.layers}
    own = dict(ek.damping)
    copy = ek.with_damping(0.25)
    ref = fit_curvature(model, task, data, method="ekfac", damping=0.25)
    assert copy.describe() == ref.describe() and ek.damping == own
    for name, t in copy.ihvp(g).items():
        assert torch.equal(t, ref.ihvp(g)[name])
    kf = fit_curvature(model, task, data, method="kfac").with_damping(own)  # another method's λ, per layer
    assert kf.damping == own and kf.config.damping is None
    with pytest.raises(InfluenceError, match="damping has no λ for layers"):
        ek.with_damping({})
    lissa = fit_curvature(model, task, data, method="lissa", depth=3, batch_size=4)
    lissa.ihvp({k: v[:1] for k, v in g.items()})
    assert lissa.diagnostics["solves"] == 1 and lissa.with_damping(own).diagnostics == {}
    assert ek.diagnostics == {} and ek.eigendecomposition("no.such.layer") is None
    assert (
        Identity.fit(model, task, data, ek.layers, Identity.config_class()).eigendecomposition(ek.layers[0].name)
        is None
    )


class Scaled(Identity):
    """A cacheable toy method whose fit leaves `info` keys no other method has."""

    name = "scaled_identity_for_tests"
    config_class = dataclasses.make_dataclass("ScaledConfig", [], bases=(Identity.config_class,))

    @classmethod
    def fit(cls, model, task, data, layers, config, device=None):
        curv = super().fit(model, task, data, layers, config, device)
        curv.info = {"rows_seen": str(next(iter(data.values())).shape[0]), "note": "twice the gradient"}
        return curv

    def ihvp(self, grads):
        return {k: 2 * v for k, v in grads.items()}

    def state(self):
        return {"two": torch.tensor(2.0)}


def test_every_info_key_survives_the_factor_cache(tmp_path):
    model, task, data = neox(), LanguageModelTask(), token_data(9, 7)
    register(Scaled)
    try:
        for method in ("ekfac", "kfac", Scaled.name):
            fitted = fit_curvature(model, task, data, method=method, cache_dir=tmp_path)
            loaded = fit_curvature(model, task, data, method=method, cache_dir=tmp_path)
            assert loaded is not fitted and type(loaded) is get_curvature_class(method)
            assert loaded.describe() == fitted.describe(), method
    finally:
        CURVATURES.pop(Scaled.name)
    assert list(loaded.info) == ["note", "rows_seen"]  # read back in sorted order


def test_scan_takes_typed_arguments_or_the_same_keywords(tmp_path):
    model, task, data, q = neox(), LanguageModelTask(), token_data(11, 8), query_batch(2, 3, 2)
    curv = fit_curvature(model, task, data)
    a = scan(
        model,
        task,
        curv,
        q,
        data,
        tmp_path / "a",
        ScanArguments(batch_size=3, chunk_batches=2, progress=False),
        query_names=["x", "y"],
    )
    b = scan(
        model,
        task,
        curv,
        q,
        data,
        tmp_path / "b",
        query_names=["x", "y"],
        batch_size=3,
        chunk_batches=2,
        progress=False,
    )
    assert torch.equal(a.scores, b.scores) and a.metadata == b.metadata
    assert torch.equal(a.row("y"), a.scores[1])
    with pytest.raises(InfluenceError, match="no query named 'z'"):
        a.row("z")
    with pytest.raises(InfluenceError, match="has no option"):
        scan(model, task, curv, q, data, tmp_path / "c", batchsize=3)
    with pytest.raises(InfluenceError, match="either args or keyword options"):
        scan(model, task, curv, q, data, tmp_path / "c", ScanArguments(), progress=False)
    with pytest.raises(InfluenceError, match="chunk_batches must be >= 1"):
        ScanArguments(chunk_batches=0)


def test_the_capture_loop_restores_the_model_even_when_its_consumer_fails():
    model, task, data = neox(), LanguageModelTask(), token_data(7, 6)
    model.train()
    layers = fit_curvature(model, task, data, method="identity").layers
    seen = [sel for sel, _, a, ds in capture_batches(model, task, layers, data, 3, torch.tensor([5, 0, 3, 1]))]
    assert [s.tolist() for s in seen] == [[5, 0, 3], [1]]
    with pytest.raises(RuntimeError):
        for _ in capture_batches(model, task, layers, data, 3):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            raise RuntimeError
    assert model.training and all(p.requires_grad for p in model.parameters())
