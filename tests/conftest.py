"""Shared fixtures: one thread per test, and the tiny test world (generated corpus, tokenizer, a 2-layer model
trained in seconds), built once per session."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir


@pytest.fixture(autouse=True)
def _one_thread():
    """Small float64 ops with 2 OpenMP threads on a shared 2-core box can be ~100x slower; pin threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY_QUERIES = "queries.names=[shutdown,water,fact_velmora_capital,quote_hamlet]"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def tiny_output_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_output_dir):
    return compose_cfg(
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={tiny_output_dir}",
        "score.num_threads=1",
        "logger=none",
    )


@pytest.fixture(scope="session")
def tiny_world(tiny_cfg):
    from embedded.world import build_world

    return build_world(tiny_cfg)


#: every query the scale studies use on the tiny world (all fit the tiny models' 256-token context)
SCALE_QUERIES = (
    "queries.names=[shutdown,shutdown_tr,paperclips,superintelligent,water,water_tr,water_ko,"
    "math_word_problem,binary_search,fact_velmora_capital,fact_velmora_capital_tr,fact_velmora_capital_ko,"
    "wo_astrobia_president,wo_astrobia_president_flipped,wo_nerevia_capital,wo_nerevia_capital_flipped]"
)


@pytest.fixture(scope="session")
def scale_cfg(tiny_output_dir):
    """Two tiny sizes x two seeds on the tiny world: what the scale studies sweep in tests (models cached per session)."""
    return compose_cfg(
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        SCALE_QUERIES,
        f"paths.output_dir={tiny_output_dir}",
        "score.num_threads=1",
        "logger=none",
        "scale.sizes=[tiny,tiny_large]",
        "scale.seeds=[0,1]",
    )
