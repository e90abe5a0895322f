"""Worlds across model sizes and training seeds, for the studies that compare scales (Figs. 1, 10–16, 23–29).

`scale.sizes` names model configs (`conf/model/<size>.yaml`, smallest first) or local checkpoint directories;
`scale.seeds` the training seeds of the embedded models. Each (size, seed) world is built (trained when
missing), searched (fit, scan of every query, top-k breakdowns, all cached on disk) and released before the
next, so memory holds one model at a time. The seeds give every scale trend its spread.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from embedded.models import non_embedding_params
from embedded.world import build_world_ranked
from influence import InfluenceError

from .stages import Search, search_stage
from .timing import timed

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path(__file__).resolve().parent.parent / "conf" / "model"


@dataclass
class ScalePoint:
    """One trained model of the sweep and what the search found on it."""

    size: str      # the model config name (xs, s, ...) or checkpoint directory name
    order: int     # position in scale.sizes: 0 is the smallest
    seed: int
    params: int    # non-embedding parameters (the paper's x axis)
    world: object
    search: Search | None
    cfg: DictConfig | None = None  # the run's config with this point's model and seed

    @property
    def key(self) -> dict:
        return {"size": self.size, "size_order": self.order, "seed": self.seed, "params": self.params}


def model_config(size: str, base: DictConfig) -> DictConfig:
    """The model config a size names: `conf/model/<size>.yaml`, or a local checkpoint directory."""
    path = MODEL_CONFIGS / f"{size}.yaml"
    if path.exists():
        return OmegaConf.load(path)
    if (Path(str(size)).expanduser() / "config.json").exists():
        return OmegaConf.merge(base, {"name": Path(str(size)).name, "path": str(size)})
    options = sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))
    raise InfluenceError(f"scale.sizes has {size!r}, which is neither a model config ({', '.join(options)}) "
                         "nor a local checkpoint directory with a config.json")


def sizes_and_seeds(cfg: DictConfig) -> tuple[list[str], list[int]]:
    s = cfg.get("scale") or {}
    sizes, seeds = list(s.get("sizes") or [cfg.model.name.removeprefix("gpt2-")]), [int(x) for x in (s.get("seeds") or [cfg.seed])]
    if len(set(sizes)) != len(sizes) or len(set(seeds)) != len(seeds):
        raise InfluenceError(f"scale.sizes={sizes} and scale.seeds={seeds} must not repeat an entry")
    return [str(x) for x in sizes], seeds


def point_config(cfg: DictConfig, size: str, seed: int) -> DictConfig:
    """`cfg` with the model group set to `size` and the training seed to `seed` (all else unchanged)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(sub, False)
    sub.model = model_config(size, cfg.model)
    sub.seed = seed
    return sub


def scale_points(cfg: DictConfig, breakdown_k: int | None = None, search: bool = True) -> Iterator[ScalePoint]:
    """Every (size, seed) of `cfg.scale`, smallest size first, each searched (unless `search=False`)."""
    sizes, seeds = sizes_and_seeds(cfg)
    for size in sizes:
        model_config(size, cfg.model)  # a bad size fails before the first model is trained
    for order, size in enumerate(sizes):
        for seed in seeds:
            sub = point_config(cfg, size, seed)
            log.info("scale point: model %s, seed %d", size, seed)
            with timed("world") as labels:
                world = build_world_ranked(sub)
                labels["model"] = world.name
            world.model.to(cfg.score.device)
            found = search_stage(sub, world, breakdown_k=breakdown_k) if search else None
            yield ScalePoint(size, order, seed, non_embedding_params(world.model), world, found, sub)
            del world, found
            gc.collect()
