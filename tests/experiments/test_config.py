"""Each YAML is its schema's defaults, key for key; `_target_` groups build their classes; bad options fail early."""

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from embedded.models import build_model
from experiments.pipeline.candidates import BM25Filter, NoFilter, make_filter
from experiments.pipeline.options import (
    CandidateOptions,
    LayerOptions,
    ScaleOptions,
    ScoreOptions,
    check,
    score_options,
)
from experiments.pipeline.stages import fit_options
from experiments.tracking import NoTracker, WandbTracker, make_tracker
from influence import InfluenceError
from influence.curvature import get_curvature_class

from .conftest import CONF, compose_cfg


def _defaults(cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
    }


def _yaml(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(Path(CONF) / group / f"{option}.yaml"))


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF) / "curvature").glob("*.yaml")))
def test_a_curvature_yaml_lists_every_field_of_its_config_with_its_default(option):
    """`seed` is the run's seed (given to the methods that sample labels); every other field is in the YAML."""
    block = _yaml("curvature", option)
    cls = get_curvature_class(block.pop("name"))
    expected = {k: v for k, v in _defaults(cls.config_class).items() if k != "seed"}
    assert block == expected and all(type(block[k]) is type(v) for k, v in expected.items() if v is not None)


def test_the_lissa_yaml_documents_the_step_the_code_takes():
    text = (Path(CONF) / "curvature" / "lissa.yaml").read_text()
    assert "margin / (max_b lambda_max(G_b) + max_l lambda_l)" in text and "margin: 0.5" in text


@pytest.mark.parametrize(
    "block,schema", [("score", ScoreOptions), ("scale", ScaleOptions), ("candidates", CandidateOptions)]
)
def test_the_root_config_blocks_are_their_schemas_defaults(block, schema):
    assert OmegaConf.to_container(OmegaConf.load(Path(CONF) / "config.yaml")[block]) == _defaults(schema)


def test_layer_options_are_the_schema_and_leave_the_curvature_block():
    assert _yaml("layers", "mlp") == _defaults(LayerOptions)
    assert _yaml("layers", "mlp_attention") == {**_defaults(LayerOptions), "include_attention": True}
    for option in (Path(CONF) / "curvature").glob("*.yaml"):
        assert not {"include_attention", "modules"} & set(_yaml("curvature", option.stem))


@pytest.mark.parametrize("option,cls", [("none", NoFilter), ("tfidf", BM25Filter)])
def test_a_filter_yaml_builds_its_class_with_the_class_defaults(option, cls):
    block = _yaml("filter", option)
    assert block.pop("_target_") == f"{cls.__module__}.{cls.__name__}" and block == _defaults(cls)
    assert make_filter(compose_cfg(f"filter={option}")) == cls()


def test_a_bad_filter_fails_naming_what_is_wrong():
    with pytest.raises(InfluenceError, match="filter.mode='tf': use binary or count"):
        make_filter(compose_cfg("filter=tfidf", "filter.mode=tf"))
    with pytest.raises(InfluenceError, match="unexpected keyword argument 'topk'"):
        make_filter(compose_cfg("filter=tfidf", "+filter.topk=5"))
    with pytest.raises(InfluenceError, match=r"filter.name='none' but filter._target_ builds the 'tfidf' filter"):
        make_filter(compose_cfg("filter=tfidf", "filter.name=none"))


def test_logger_yamls_build_their_trackers_and_a_bad_config_fails():
    assert isinstance(make_tracker(compose_cfg("logger=none")), NoTracker)
    tracker = make_tracker(compose_cfg("logger=wandb", "logger.tags=[a]"))
    assert isinstance(tracker, WandbTracker) and tracker.mode == "offline" and tracker.tags == ["a"]
    with pytest.raises(InfluenceError, match="logger.mode='sometimes'"):
        make_tracker(compose_cfg("logger=wandb", "logger.mode=sometimes"))
    with pytest.raises(InfluenceError, match="unexpected keyword argument 'projekt'"):
        make_tracker(compose_cfg("logger=wandb", "+logger.projekt=x"))


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF) / "model").glob("*.yaml")))
def test_a_model_yaml_names_the_builder_of_its_architecture(option):
    cfg = compose_cfg(f"model={option}")
    with torch.device("meta"):
        model = build_model(cfg.model, 512, 0, 0)
    assert model.config.model_type == cfg.model.arch
    with torch.device("meta"):
        neox = build_model(compose_cfg(f"model={option}", "model.arch=gpt_neox").model, 512, 0, 0)
    assert type(neox).__name__ == "GPTNeoXForCausalLM"


def test_an_unknown_or_mismatched_architecture_fails():
    with pytest.raises(InfluenceError, match="model.arch=llama is not known"):
        build_model(compose_cfg("model=tiny", "model.arch=llama").model, 64, 0, 0)
    with pytest.raises(InfluenceError, match="builds a gpt_neox model, but model.arch=gpt2"):
        build_model(compose_cfg("model=tiny", "model._target_=embedded.models.build_gpt_neox").model, 64, 0, 0)


def test_score_options_are_typed_and_checked():
    assert score_options(compose_cfg("score.precision=bf16", "score.query_rank=8")) == ScoreOptions(
        precision="bf16", query_rank=8
    )
    for bad, match in [
        ("+score.topk=3", "topk"),
        ("score.batch_size=0", "score.batch_size=0"),
        ("score.precision=fp8", "unknown precision 'fp8'"),
        ("score.query_rank=-1", "score.query_rank=-1"),
        ("score.top_k=many", "top_k"),
        ("scale.seeds=[0,0]", "must not repeat"),
        ("layers.include_attention=maybe", "include_attention"),
    ]:
        with pytest.raises(InfluenceError, match=match):
            check(compose_cfg(bad))


def test_new_curvature_fields_at_their_defaults_keep_the_fit_cache_key():
    """The YAMLs list every field; a factor file is keyed without the fields marked `keyed_when_changed` while they
    are at their defaults, so factors fitted before the YAMLs listed them are reused."""
    from influence.curvature import get_curvature_class
    from influence.fitting import keyed_options

    ekfac = get_curvature_class("ekfac")
    given = fit_options(compose_cfg("curvature=ekfac"))
    assert given["gradient_cache_mb"] == 4096.0 and "gradient_cache_mb" not in keyed_options(ekfac, given)
    assert keyed_options(ekfac, {**given, "gradient_cache_mb": 64})["gradient_cache_mb"] == 64
    assert keyed_options(ekfac, given) == {
        k: v for k, v in given.items() if k not in ("gradient_cache_mb", "precision", "product_precision")
    }
    assert keyed_options(ekfac, {**given, "product_precision": "bf16"})["product_precision"] == "bf16"
    assert fit_options(compose_cfg("curvature=lissa", "seed=3"))["seed"] == 3
