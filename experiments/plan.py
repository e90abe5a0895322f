"""`python -m experiments.plan model=... [curvature=...] [score.query_rank=...]`: the memory a run will need, with no training.

The model is built on the meta device from its config alone (an embedded size, or the config.json of
`model.path=`), so even a multi-billion-parameter checkpoint is planned in seconds and no weights are read.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from embedded.models import meta_model
from embedded.world import load_queries
from influence import InfluenceError
from influence.memory import format_memory_plan

from .pipeline.stages import plan

log = logging.getLogger("experiments.plan")


def main(cfg: DictConfig) -> dict:
    model = meta_model(cfg)
    num_queries = len(load_queries(cfg.queries))
    result = plan(cfg, model, num_queries)
    params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.model.get('path') or cfg.model.name}: {params / 1e6:.1f}M parameters")
    print(format_memory_plan(result))
    return result


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def cli(cfg: DictConfig) -> None:
    try:
        main(cfg)
    except InfluenceError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    # a plan writes nothing: no run directory, no .hydra folder, no log file
    sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    cli()
