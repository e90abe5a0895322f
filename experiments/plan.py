"""`python -m experiments.plan model=... [curvature=...] [score.query_rank=...]`: the memory a run will need, with no training.

The model is built on the meta device from its config alone (an embedded size, or the config.json of
`model.path=`), so even a multi-billion-parameter checkpoint is planned in seconds and no weights are read.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from influence import InfluenceError
from influence.lowrank import plan_query_rank
from influence.memory import format_memory_plan, memory_plan

log = logging.getLogger("experiments.plan")


def planned_rank(cfg: DictConfig, shapes: list[tuple[int, int]], num_queries: int) -> int | None:
    """The query rank a scan would use (`auto` planned against score.query_memory_mb, as the scan does)."""
    rank = cfg.score.get("query_rank", None)
    if rank == "auto":
        return plan_query_rank(shapes, num_queries, int(cfg.score.query_memory_mb) * 2**20)
    return None if rank is None else int(rank)


def plan(cfg: DictConfig, model, num_queries: int) -> dict:
    """The memory plan of the configured curvature and query rank for this model's tracked layers."""
    from .stages import tracked_layers

    layers = tracked_layers(cfg, model)
    shapes = {l.name: l.shape for l in layers}
    rank = planned_rank(cfg, list(shapes.values()), num_queries)
    return memory_plan(shapes, num_queries, rank, method=str(cfg.curvature.name),
                       num_blocks=int(cfg.curvature.get("num_blocks", 1)))


def meta_model(cfg: DictConfig):
    """The configured model with no storage: from `model.path`'s config.json, or the embedded size's config."""
    with torch.device("meta"):
        if cfg.model.get("path"):
            from transformers import AutoConfig, AutoModelForCausalLM

            p = Path(str(cfg.model.path)).expanduser()
            if not (p / "config.json").exists():
                raise InfluenceError(f"model.path={cfg.model.path} has no config.json: point it at a saved Hugging Face model directory")
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(p)))
        from .train import build_model

        return build_model(cfg.model, int(cfg.data.vocab_size), 0, int(cfg.seed))


def main(cfg: DictConfig) -> dict:
    from .world import load_queries

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
