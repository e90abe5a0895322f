"""Components chosen by `_target_` (lightning-hydra-template style): a config group names a class, built here."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from influence import InfluenceError


def build_component(node: DictConfig, group: str, method: str, options: str):
    """The object `node` (the `group` block) configures: its `_target_` built with its options. A bad option fails
    in one line naming the group; the object must have `method` (`options` says which choices exist)."""
    try:
        built = instantiate(node, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, InfluenceError):
            raise e.__cause__ from None
        raise InfluenceError(
            f"{group}: {str(e).splitlines()[0]} {str(e.__cause__ or '')}: choose one with {options}, with its options"
        ) from e
    if not callable(getattr(built, method, None)):
        raise InfluenceError(f"{group} has no _target_: choose one with {options}")
    return built
