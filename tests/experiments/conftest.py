"""The tiny test world (generated corpus, tokenizer, a 2-layer model trained in seconds), built once per session."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[2] / "conf")
TINY_QUERIES = "queries.names=[shutdown,water,fact_velmora_capital,quote_hamlet]"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def tiny_output_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_output_dir):
    return compose_cfg("model=tiny", "data=tiny", "queries=tiny", TINY_QUERIES, f"paths.output_dir={tiny_output_dir}",
                       "score.num_threads=1", "logger=none")


@pytest.fixture(scope="session")
def tiny_world(tiny_cfg):
    from experiments.world import build_world

    return build_world(tiny_cfg)
