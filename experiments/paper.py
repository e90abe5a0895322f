"""`experiment=paper`: every study on the embedded default, one report shaped like the paper, and a findings scorecard.

Each study runs exactly as `python -m experiments.run experiment=<study> <the same overrides>` would: its config
is composed from its own preset, the command line's overrides (those its config has keys for) and
`paper.overrides.<study>` (plus `paper.scale_overrides` for the scale studies). Its results land in
`<run dir>/<study>/` with their own report; models, factors and scans are shared through the on-disk caches,
so a model is fitted and scanned once for all the studies that use it. The paper's report strings the
sections together in the paper's order, with the scorecard (analysis/scorecard.py) and each section's time.
"""
from __future__ import annotations

import functools
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from analysis.scorecard import scorecard, scorecard_summary
from embedded.world import build_world_ranked
from influence import InfluenceError, distributed

from .pipeline.outputs import write_tables
from .pipeline.timing import take, timed
from .report import publish, write_paper_report
from .studies import get_study
from .tracking import log_safely

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parent.parent / "conf"

#: (study, section title, where it is in the paper), in the paper's order
SECTIONS = [
    ("query_rank", "Query batching: low-rank query gradients", "§3.2.2, Fig. 3"),
    ("tfidf_vs_unfiltered", "TF-IDF filtering vs unfiltered scans", "§3.2.1"),
    ("accuracy", "How accurate is EK-FAC? The PBRF ground truth", "§5.1, Figs. 6–7"),
    ("sparsity", "Sparsity: heavy-tailed influence", "§5.2, Fig. 8, Table 1"),
    ("concentration", "Concentration of influence", "§5.2, Fig. 9"),
    ("abstraction", "Abstraction grows with scale", "§5.3.1, Figs. 1, 10–12"),
    ("math_code", "Math and code", "§5.3.1, Figs. 13–14"),
    ("cross_lingual", "Cross-lingual generalization", "§5.3.1, Figs. 15–16"),
    ("layer_wise", "Layer-wise attribution", "§5.3.2, Figs. 4, 17–21"),
    ("memorization", "Memorization", "§5.3.3, Fig. 22"),
    ("word_order", "Sensitivity to word ordering", "§5.3.4, Figs. 23–27"),
    ("role_play", "Role-playing", "§5.3.5, Figs. 28–29"),
]
SCALE_STUDIES = {"abstraction", "math_code", "cross_lingual", "word_order", "role_play"}


@dataclass
class Section:
    study: str
    title: str
    where: str
    status: str = "not run"          # ok, or the one-line error that stopped it
    seconds: float = 0.0
    overrides: list[str] = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    directory: Path | None = None
    stages: pd.DataFrame | None = None  # the pipeline stages it ran (world, fit, scan, breakdown) and their seconds


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _applies(preset: DictConfig, override: str) -> bool:
    """Whether a command-line override names a key (or config group) of this study's composed config."""
    key = _key(override)
    if key.split(".", 1)[0] in ("experiment", "paper", "study", "hydra") or "/" in key:
        return False
    if override.startswith("+"):
        return True
    return OmegaConf.select(preset, key, default=_ABSENT) is not _ABSENT


_ABSENT = object()


def _compose(overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside `python -m experiments.run`: the app's own search path
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides)


@functools.lru_cache(maxsize=None)
def _preset(study: str) -> DictConfig:
    """A study's config as its preset alone composes it (read-only: which keys it has)."""
    return _compose([f"experiment={study}"])


def study_overrides(study: str, cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The overrides a study runs with: its preset, the command line's that apply to it, and the paper's for it."""
    mine = [o for o in overrides if _applies(_preset(study), o)]
    extra = list(cfg.paper.get("overrides", {}).get(study) or [])
    if study in SCALE_STUDIES:
        extra = list(cfg.paper.get("scale_overrides") or []) + extra
    return [f"experiment={study}", *mine, *extra]


def check_overrides(studies: list[str], overrides: list[str]) -> None:
    """Every command-line key must belong to some study's config: a typo fails before an hour of work."""
    presets = [_preset(s) for s in studies]
    bad = [o for o in overrides if _key(o).split(".", 1)[0] not in ("experiment", "paper", "hydra") and "/" not in _key(o)
           and not any(_applies(p, o) for p in presets)]
    if bad:
        raise InfluenceError(f"experiment=paper: override(s) {bad} match no key of any study's config: check their spelling")


class Worlds:
    """One world per (model, data, queries, seed), built on first use and kept for the sections that follow."""

    def __init__(self):
        self._cache: dict[str, object] = {}

    def get(self, cfg: DictConfig):
        key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "data", "queries", "seed", "paths"]))
        if key not in self._cache:
            self._cache.clear()  # one model in memory at a time
            with timed("world") as labels:
                world = build_world_ranked(cfg)
                labels["model"] = world.name
            world.model.to(cfg.score.device)
            self._cache[key] = world
        return self._cache[key]


def run_section(section: Section, cfg: DictConfig, overrides: list[str], run_dir: Path, worlds: Worlds) -> Section:
    """Run one study as its own preset would, into `<run dir>/<study>/`; a failure is recorded, not raised."""
    section.overrides = study_overrides(section.study, cfg, overrides)
    section.directory = run_dir / section.study
    t0 = time.perf_counter()
    try:
        sub = _compose(section.overrides)
        study = get_study(str(sub.study))
        with distributed.collectively():  # under torchrun a failure on any rank fails the section on all
            tables = study(sub, worlds.get(sub))
        if distributed.is_main():  # every rank computed; rank 0 writes
            section.directory.mkdir(parents=True, exist_ok=True)
            (section.directory / "config.yaml").write_text(OmegaConf.to_yaml(sub), encoding="utf-8")
            section.figures, _ = publish(section.directory, section.study, section.overrides, tables)
        section.tables, section.status = tables, "ok"
    except InfluenceError as e:
        section.status = f"failed: {e}"
    except Exception as e:  # noqa: BLE001 (one broken study must not lose an hour of others' results)
        log.error("section %s failed:\n%s", section.study, traceback.format_exc())
        section.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    section.seconds = time.perf_counter() - t0
    section.stages = take().assign(study=section.study)
    log.info("paper: %s %s in %.0f s", section.study, section.status, section.seconds)
    return section


def run_paper(cfg: DictConfig, run_dir: Path, overrides: list[str], tracker) -> tuple[Path, pd.DataFrame]:
    """Every study of `paper.studies`, the scorecard, `report.md` and `report.html`; returns the report and the scorecard."""
    titles = {s: (t, w) for s, t, w in SECTIONS}
    studies = [str(s) for s in cfg.paper.studies]
    unknown = [s for s in studies if s not in titles]
    if unknown:
        raise InfluenceError(f"paper.studies has unknown studies {unknown}: choose from {[s for s, _, _ in SECTIONS]}")
    check_overrides(studies, overrides)
    worlds = Worlds()
    take()  # stages timed before the paper started are not its own
    sections = [run_section(Section(s, *titles[s]), cfg, overrides, Path(run_dir), worlds)
                for s in [s for s, _, _ in SECTIONS if s in studies]]
    card = scorecard({s.study: s.tables for s in sections if s.status == "ok"})
    timings = pd.DataFrame([{"study": s.study, "status": s.status, "seconds": round(s.seconds, 1)} for s in sections])
    summary = {**scorecard_summary(card), "sections": len(sections), "sections_failed": int((timings["status"] != "ok").sum()),
               "minutes": round(float(timings["seconds"].sum()) / 60, 2)}
    frames = [s.stages for s in sections if s.stages is not None and not s.stages.empty]
    stages = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["stage", "seconds", "study"])
    tables = {"scorecard": card, "timings": timings, "stage_timings": stages, "_summary": pd.DataFrame([summary])}
    if not distributed.is_main():
        return Path(run_dir) / "report.md", card
    write_tables(tables, Path(run_dir))
    report = write_paper_report(Path(run_dir), overrides, sections, card, timings)
    figures = [p for s in sections for p in s.figures]
    log_safely(tracker, Path(run_dir), cfg, {"scorecard": card, "timings": timings,
                                             **{f"{s.study}/{k}": v for s in sections for k, v in s.tables.items()
                                                if isinstance(v, pd.DataFrame) and not k.startswith("_") and len(v) <= 5000}},
               figures, summary)
    failed = [s for s in sections if s.status != "ok"]
    if failed:
        raise InfluenceError(f"experiment=paper: {len(failed)} of {len(sections)} studies failed "
                             f"({'; '.join(f'{s.study}: {s.status}' for s in failed)}); the others' results and the report are in {run_dir}")
    return report, card
