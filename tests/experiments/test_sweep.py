"""Sweep points compose like every config: the run's model overrides reach every (size, seed) point."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf, open_dict

from embedded.models import build_model
from experiments.pipeline import sweep
from influence import InfluenceError

from .conftest import CONF, compose_cfg

TINY_SWEEP = ("model=tiny", "data=tiny", "queries=tiny", "scale.sizes=[tiny,tiny_large]", "scale.seeds=[0,1]")


def _points(cfg, monkeypatch):
    """scale_points without training or searching: each point's world is its config's untrained model."""
    monkeypatch.setattr(
        sweep,
        "build_world_ranked",
        lambda sub: SimpleNamespace(name=sub.model.name, model=build_model(sub.model, 64, 0, 0)),
    )
    return list(sweep.scale_points(cfg, search=False))


def test_a_model_override_reaches_every_sweep_point(monkeypatch):
    cfg = compose_cfg(*TINY_SWEEP, "model.train.threads=3", "model.train.tokens=1234", "model.n_head=4")
    points = _points(cfg, monkeypatch)
    assert [(p.size, p.seed) for p in points] == [("tiny", 0), ("tiny", 1), ("tiny_large", 0), ("tiny_large", 1)]
    for p in points:
        own = OmegaConf.load(Path(CONF) / "model" / f"{p.size}.yaml")
        assert p.cfg.model.train.threads == 3 and p.cfg.model.train.tokens == 1234 and p.cfg.model.n_head == 4
        assert p.cfg.model.name == own.name and p.cfg.model.n_layer == own.n_layer  # the rest is the size's own
        assert p.cfg.model.train.lr == own.train.lr and p.cfg.seed == p.seed
        assert p.world.model.config.n_head == 4


def test_without_overrides_a_point_is_its_model_option_as_composed():
    cfg = compose_cfg(*TINY_SWEEP)
    for size in ("tiny", "tiny_large", "xs"):
        assert OmegaConf.to_container(sweep.point_config(cfg, size, 0).model) == OmegaConf.to_container(
            compose_cfg(f"model={size}").model
        )


def test_added_removed_and_in_code_model_changes_reach_every_point():
    cfg = compose_cfg(*TINY_SWEEP, "+model.train.note=x", "~model.train.eval_docs")
    with open_dict(cfg):
        cfg.model.train.warmup = 0.2  # an edit made in code counts like an override
    for size in ("tiny", "tiny_large"):
        m = sweep.point_config(cfg, size, 1).model
        assert m.train.note == "x" and "eval_docs" not in m.train and m.train.warmup == 0.2


def test_a_preset_overriding_the_model_group_is_the_base_of_its_changes():
    cfg = compose_cfg("experiment=accuracy", "model.train.threads=3", "scale.sizes=[xs,s]")  # override /model: xs
    assert [sweep.point_config(cfg, s, 0).model.train.threads for s in ("xs", "s")] == [3, 3]
    assert sweep.point_config(cfg, "s", 0).model.n_layer == compose_cfg("model=s").model.n_layer


def test_a_checkpoint_directory_size_keeps_the_run_model_block(tmp_path):
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    cfg = compose_cfg(*TINY_SWEEP, "model.train.threads=3")
    m = sweep.model_config(str(ckpt), cfg)
    assert m.name == "my-ckpt" and m.path == str(ckpt) and m.train.threads == 3


def test_model_option_names_are_unique_so_a_run_knows_its_own_option():
    names = [sweep.group_model(o)["name"] for o in sweep.model_options()]
    assert len(set(names)) == len(names)
    assert sweep.own_option(compose_cfg("model=tiny_large")) == "tiny_large"


def test_bad_sizes_and_renamed_models_fail_clearly():
    with pytest.raises(InfluenceError, match=r"neither a model config \(.*tiny_large.*\) nor a local checkpoint"):
        sweep.model_config("huge", compose_cfg(*TINY_SWEEP))
    with pytest.raises(InfluenceError, match="model.name=custom is the name of no model option"):
        sweep.model_config("tiny_large", compose_cfg(*TINY_SWEEP, "model.name=custom"))
    with pytest.raises(InfluenceError, match="must not repeat"):
        sweep.sizes_and_seeds(compose_cfg("scale.sizes=[s,s]"))
