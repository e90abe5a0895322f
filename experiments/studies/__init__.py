"""The studies, discovered: every module of this package not starting with `_` ends with `STUDY = Study(...)`
(see `registry.py`). Adding a study is adding its module; nothing here lists them."""

from __future__ import annotations

import importlib
import pkgutil

from influence import InfluenceError

from .registry import NoOptions, Study, option, read_options

__all__ = ["STUDIES", "NoOptions", "Study", "get_study", "option", "paper_studies", "read_options"]


def _discover() -> dict[str, Study]:
    """{name: Study} of every study module, in the paper's order (then the others, by name)."""
    found: dict[str, Study] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "registry":
            continue
        study = getattr(importlib.import_module(f"{__name__}.{info.name}"), "STUDY", None)
        if not isinstance(study, Study):
            raise InfluenceError(f"experiments/studies/{info.name}.py must end with `STUDY = Study(...)`")
        if study.name != info.name:
            raise InfluenceError(
                f"experiments/studies/{info.name}.py names its study {study.name!r}: name it {info.name!r}"
            )
        found[study.name] = study
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order is None, kv[1].order or 0, kv[0])))


STUDIES: dict[str, Study] = _discover()


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise InfluenceError(f"unknown study {name!r}: choose one of {sorted(STUDIES)}")
    return STUDIES[name]


def paper_studies() -> list[Study]:
    """The sections of `experiment=paper`, in the paper's order."""
    return [s for s in STUDIES.values() if s.order is not None]
