"""Worlds across model sizes and training seeds, for the studies that compare scales (Figs. 1, 10–16, 23–29).

`scale.sizes` names model configs (`conf/model/<size>.yaml`, smallest first), local checkpoint directories or
Hugging Face hub ids (`EleutherAI/pythia-70m`, at the run's `model.revision`, or `EleutherAI/pythia-70m@step143000`
for a revision of its own; resolved to the cached snapshot by `embedded.hub`, downloaded when missing and online);
`scale.seeds` the training seeds of the embedded models. Each (size, seed) world is built (trained when
missing), searched (fit, scan of every query, top-k breakdowns, all cached on disk) and released before the
next, so memory holds one model at a time. The seeds give every scale trend its spread.

How a point's config is composed: it is the run's config with the model group set to the point's size and
`seed` to its seed (`point_config`). Its model block is composed by Hydra, like every other config
(`model=<size>` through the compose API, so a model option may have its own defaults list and interpolations),
and then every change the run made to its *own* model block is applied on top: the keys in which `cfg.model`
differs from the model option it was composed from. Those are the command line's `model.*` overrides
(`model.train.threads=1`), a preset's model keys and edits made in code, so each reaches every point, exactly
as `python -m experiments.run model=<size> <the same overrides>` would compose it. This needs no record of
how `cfg` was composed (under `python -m experiments.run`, in a paper section, or by the compose API in a test):
the run's option is the one whose `name` is `cfg.model.name` (names are unique across conf/model, which
tests/experiments/test_sweep.py checks). A size that is a checkpoint directory is the run's model block with
`name` and `path` set to it (and no revision); a hub id, the run's model block with `path` the id, `revision` its
own or the run's, and `name` a directory-safe `org--name[-revision]`.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from embedded.hub import is_hub_id, locate, safe_name, split_revision
from embedded.models import non_embedding_params
from embedded.world import build_world_ranked
from influence import InfluenceError

from .options import scale_options, score_options
from .stages import Search, search_stage
from .timing import timed

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ScalePoint:
    """One trained model of the sweep and what the search found on it."""

    size: str  # the model config name (xs, s, ...) or checkpoint directory name
    order: int  # position in scale.sizes: 0 is the smallest
    seed: int
    params: int  # non-embedding parameters (the paper's x axis)
    world: object
    search: Search | None
    cfg: DictConfig | None = None  # the run's config with this point's model and seed

    @property
    def key(self) -> dict:
        return {"size": self.size, "size_order": self.order, "seed": self.seed, "params": self.params}


def compose_config(overrides: list[str]) -> DictConfig:
    """The root config composed with `overrides` by Hydra's compose API: inside a running Hydra app (such as
    `python -m experiments.run`) with the app's own search path, else from conf/."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def model_options() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def _composed_model(option: str) -> dict:
    return OmegaConf.to_container(compose_config([f"model={option}"]).model, resolve=False)


def group_model(option: str) -> dict:
    """The model block that `model=<option>` composes, unresolved (a fresh copy)."""
    return copy.deepcopy(_composed_model(option))


def own_option(cfg: DictConfig) -> str:
    """The model option `cfg.model` was composed from: the one whose `name` is `cfg.model.name`."""
    own = [o for o in model_options() if group_model(o).get("name") == cfg.model.name]
    if len(own) != 1:
        raise InfluenceError(
            f"scale: model.name={cfg.model.name} is the name of {len(own) or 'no'} model option(s) "
            f"{own or ''} in conf/model, so the sweep cannot tell which of the run's model keys to carry "
            "to every point: keep the option's own name (the points take their sizes' names)"
        )
    return own[0]


def _changes(run: dict, group: dict) -> tuple[dict, list[tuple[str, ...]]]:
    """Where `run` differs from `group`: the changed or added values (nested as in `run`), and the paths of the
    keys it lacks."""
    changed, removed = {}, []
    for k, v in run.items():
        if isinstance(v, dict) and isinstance(group.get(k), dict):
            sub, gone = _changes(v, group[k])
            if sub:
                changed[k] = sub
            removed += [(k, *p) for p in gone]
        elif k not in group or v != group[k]:
            changed[k] = v
    removed += [(k,) for k in group if k not in run]
    return changed, removed


def model_config(size: str, cfg: DictConfig) -> DictConfig:
    """The model block of the sweep point `size`: its option composed, with the run's own model changes on top
    (see the module docstring), or the run's model block pointed at a local checkpoint directory or a hub id
    (`org/name` or `org/name@revision`; not resolved here: `check_hub_sizes` does)."""
    size = str(size)
    if size in model_options():
        changed, removed = _changes(OmegaConf.to_container(cfg.model, resolve=False), group_model(own_option(cfg)))
        block = OmegaConf.merge(group_model(size), changed)
        for path in removed:
            parent = OmegaConf.select(block, ".".join(path[:-1])) if len(path) > 1 else block
            if parent is not None and path[-1] in parent:
                del parent[path[-1]]
        return block
    if (Path(size).expanduser() / "config.json").exists():
        return _pointed(cfg, Path(size).name, size, None)
    repo_id, revision = split_revision(size)
    if is_hub_id(repo_id):
        revision = revision or cfg.model.get("revision")
        return _pointed(cfg, safe_name(repo_id, revision), repo_id, revision)
    raise InfluenceError(
        f"scale.sizes has {size!r}, which is neither a model config ({', '.join(model_options())}) "
        "nor a local checkpoint directory with a config.json nor a hub id (org/name, or org/name@revision)"
    )


def _pointed(cfg: DictConfig, name: str, path: str, revision) -> DictConfig:
    """The run's model block pointed at a checkpoint: a local directory (no revision) or a hub id at `revision`."""
    block = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=False))
    return OmegaConf.merge(block, {"name": name, "path": path, "revision": revision})


def check_hub_sizes(cfg: DictConfig) -> None:
    """Resolve every hub id of `scale.sizes` to its cached snapshot (downloading it when missing and online), so an
    uncached one fails offline in one line before the run's world is built; the run calls it before any work."""
    for size in (str(s) for s in scale_options(cfg).sizes):
        if size not in model_options() and is_hub_id(split_revision(size)[0]):
            m = model_config(size, cfg)
            at = f" at model.revision={m.revision}" if m.revision and "@" not in size else ""
            locate(str(m.path), m.revision, where=f"scale.sizes entry {size}{at}")


def sizes_and_seeds(cfg: DictConfig) -> tuple[list[str], list[int]]:
    """`scale.sizes` and `scale.seeds`; an empty list stands for the run's own model (its checkpoint or option) or seed."""
    s = scale_options(cfg)
    sizes = [str(x) for x in s.sizes] or [str(cfg.model.path) if cfg.model.path else own_option(cfg)]
    return sizes, [int(x) for x in s.seeds] or [int(cfg.seed)]


def point_config(cfg: DictConfig, size: str, seed: int) -> DictConfig:
    """`cfg` with the model group set to `size` (the run's model overrides kept) and the training seed to `seed`."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(sub, False)
    sub.model = model_config(size, cfg)
    sub.seed = seed
    return sub


def scale_points(cfg: DictConfig, breakdown_k: int | None = None, search: bool = True) -> Iterator[ScalePoint]:
    """Every (size, seed) of `cfg.scale`, smallest size first, each searched (unless `search=False`)."""
    sizes, seeds = sizes_and_seeds(cfg)
    for size in sizes:
        model_config(size, cfg)  # a bad size fails before the first model is trained
    check_hub_sizes(cfg)  # and so does a hub id neither cached nor downloadable
    for order, size in enumerate(sizes):
        for seed in seeds:
            sub = point_config(cfg, size, seed)
            log.info("scale point: model %s, seed %d", size, seed)
            with timed("world") as labels:
                world = build_world_ranked(sub)
                labels["model"] = world.name
            world.model.to(score_options(cfg).device)
            found = search_stage(sub, world, breakdown_k=breakdown_k) if search else None
            yield ScalePoint(size, order, seed, non_embedding_params(world.model), world, found, sub)
            del world, found
            gc.collect()
