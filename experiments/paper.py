"""`experiment=paper`: every study on the embedded default, one report shaped like the paper, and a findings scorecard.

Each study runs exactly as `python -m experiments.run experiment=<study> <the same overrides>` would: its config
is composed from its own preset, the command line's overrides (those its config has keys for) and
`paper.overrides.<study>` (plus `paper.scale_overrides` for the studies that sweep model sizes). Its results land
in `<run dir>/<study>/` with their own report; models, factors and scans are shared through the on-disk caches,
so a model is fitted and scanned once for all the studies that use it. The paper's report strings the
sections together in the paper's order, with the scorecard (analysis/scorecard.py) and each section's time.

The sections, their titles, their order and their findings are the study descriptors' (`experiments/studies`):
nothing here lists studies. Every section's config is composed and its options read before any work starts.
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

from analysis.scorecard import scorecard, scorecard_summary
from embedded.world import build_world_ranked
from influence import InfluenceError, distributed
from influence.storage import atomic_write_text

from .pipeline.outputs import staged, write_tables
from .pipeline.sweep import compose_config
from .pipeline.timing import take, timed
from .report import publish, write_paper_report
from .studies import Study, get_study, option, paper_studies, read_options
from .tracking import log_safely

log = logging.getLogger(__name__)


@dataclass
class PaperOptions:
    """`paper:`: which studies run, and the overrides the paper adds to theirs."""

    studies: list[str] | None = option(
        None, "null: every study of the paper, in the paper's order; or a list of names (run in the paper's order)"
    )
    scale_overrides: list[str] = option(
        help="added to every study that sweeps model sizes: 4 sizes x 2 seeds fitted and scanned on a random sample of "
        "the corpus (unfiltered, the same sample for every model)",
        factory=lambda: ["score.max_sequences=3000", "curvature.max_sequences=3000"],
    )
    overrides: dict[str, list[str]] = option(
        help="per study, added after the command line's",
        factory=lambda: {
            "query_rank": ["score.max_sequences=2000"],
            "accuracy": [
                "accuracy.tasks=[diabetes,digits]",
                "accuracy.max_train_points=200",
                "accuracy.tabular.digits.max_train_points=60",
                "accuracy.damping_factors=[]",
                "accuracy.lissa.max_depth=16000",
            ],
        },
    )

    def __post_init__(self):
        known = [s.name for s in paper_studies()]
        for key, names in (("studies", self.studies or []), ("overrides", list(self.overrides))):
            unknown = [s for s in names if s not in known]
            if unknown:
                raise InfluenceError(f"paper.{key} has unknown studies {unknown}: choose from {known}")


def paper_options(cfg: DictConfig) -> PaperOptions:
    """`paper:` over its defaults, read as a study's options are (unknown keys, types, checks)."""
    return read_options(cfg, "paper", PaperOptions)


@dataclass
class Section:
    study: str
    title: str
    where: str
    config: DictConfig | None = None  # composed before any section runs
    status: str = "not run"  # ok, or the one-line error that stopped it
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


@functools.lru_cache(maxsize=None)
def _preset(study: str) -> DictConfig:
    """A study's config as its preset alone composes it (read-only: which keys it has)."""
    return compose_config([f"experiment={study}"])


def study_overrides(study: str, cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The overrides a study runs with: its preset, the command line's that apply to it, and the paper's for it."""
    opts = paper_options(cfg)
    mine = [o for o in overrides if _applies(_preset(study), o)]
    extra = list(opts.overrides.get(study) or [])
    if get_study(study).sweep:
        extra = list(opts.scale_overrides) + extra
    return [f"experiment={study}", *mine, *extra]


def check_overrides(studies: list[str], overrides: list[str]) -> None:
    """Every command-line key must belong to some study's config: a typo fails before an hour of work."""
    presets = [_preset(s) for s in studies]
    bad = [
        o
        for o in overrides
        if _key(o).split(".", 1)[0] not in ("experiment", "paper", "hydra")
        and "/" not in _key(o)
        and not any(_applies(p, o) for p in presets)
    ]
    if bad:
        raise InfluenceError(
            f"experiment=paper: override(s) {bad} match no key of any study's config: check their spelling"
        )


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


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def plan_sections(studies: list[Study], cfg: DictConfig, overrides: list[str]) -> list[Section]:
    """One section per study, its config composed and its options read: every bad key fails here, before any work."""
    sections, problems = [], []
    for study in studies:
        section = Section(study.name, study.title, study.where, overrides=study_overrides(study.name, cfg, overrides))
        try:
            section.config = compose_config(section.overrides)
            get_study(str(section.config.study)).read_options(section.config)
        except Exception as e:  # noqa: BLE001 (a composition or option error of any section stops the paper now)
            problems.append(f"{study.name}: {_first_line(e)}")
        sections.append(section)
    if problems:
        raise InfluenceError(
            f"experiment=paper: {len(problems)} section(s) cannot start ({'; '.join(problems)}): fix their overrides"
        )
    return sections


def run_section(section: Section, run_dir: Path, worlds: Worlds) -> Section:
    """Run one planned section as its own preset would, into `<run dir>/<study>/`; a failure is recorded, not raised."""
    section.directory = run_dir / section.study
    t0 = time.perf_counter()
    try:
        sub = section.config
        study = get_study(str(sub.study))
        with distributed.collectively():  # under torchrun a failure on any rank fails the section on all
            tables = study(sub, worlds.get(sub))
        if distributed.is_main():  # every rank computed; rank 0 writes
            section.figures, _ = publish(section.directory, section.study, section.overrides, tables)
            atomic_write_text(section.directory / "config.yaml", OmegaConf.to_yaml(sub))
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
    opts = paper_options(cfg)
    chosen = [s for s in paper_studies() if opts.studies is None or s.name in opts.studies]  # the paper's order
    check_overrides([s.name for s in chosen], overrides)
    planned = plan_sections(chosen, cfg, overrides)
    worlds = Worlds()
    take()  # stages timed before the paper started are not its own
    sections = [run_section(s, Path(run_dir), worlds) for s in planned]
    card = scorecard(
        {s.study: s.tables for s in sections if s.status == "ok"}, {s.name: s.findings for s in paper_studies()}
    )
    timings = pd.DataFrame([{"study": s.study, "status": s.status, "seconds": round(s.seconds, 1)} for s in sections])
    summary = {
        **scorecard_summary(card),
        "sections": len(sections),
        "sections_failed": int((timings["status"] != "ok").sum()),
        "minutes": round(float(timings["seconds"].sum()) / 60, 2),
    }
    frames = [s.stages for s in sections if s.stages is not None and not s.stages.empty]
    stages = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["stage", "seconds", "study"])
    tables = {"scorecard": card, "timings": timings, "stage_timings": stages, "_summary": pd.DataFrame([summary])}
    if not distributed.is_main():
        return Path(run_dir) / "report.md", card
    with staged(Path(run_dir)) as tmp:
        write_tables(tables, tmp)
        write_paper_report(tmp, overrides, sections, card, timings, run_dir=Path(run_dir))
    report = Path(run_dir) / "report.md"
    figures = [p for s in sections for p in s.figures]
    log_safely(
        tracker,
        Path(run_dir),
        cfg,
        {
            "scorecard": card,
            "timings": timings,
            **{
                f"{s.study}/{k}": v
                for s in sections
                for k, v in s.tables.items()
                if isinstance(v, pd.DataFrame) and not k.startswith("_") and len(v) <= 5000
            },
        },
        figures,
        summary,
    )
    failed = [s for s in sections if s.status != "ok"]
    if failed:
        raise InfluenceError(
            f"experiment=paper: {len(failed)} of {len(sections)} studies failed "
            f"({'; '.join(f'{s.study}: {s.status}' for s in failed)}); the others' results and the report are in {run_dir}"
        )
    return report, card
