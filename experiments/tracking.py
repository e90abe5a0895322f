"""Experiment trackers: the run directory always holds the results; a tracker mirrors them (W&B) or not.

The `logger` group names the tracker class by `_target_` (conf/logger/<option>.yaml), and `make_tracker`
builds it with `hydra.utils.instantiate`: a new tracker is a class with `log_run` and a YAML, no caller.
Logging never costs a run its results: the tables, figures and report are written before the tracker
is called, and a tracker failure is a warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from influence import InfluenceError

from .pipeline.components import build_component

log = logging.getLogger(__name__)


def _check_name(name: str, option: str) -> None:
    if name != option:
        raise InfluenceError(
            f"logger.name={name!r} but logger._target_ builds the {option!r} tracker: "
            "choose the tracker with logger=<option>"
        )


class NoTracker:
    """`logger=none`."""

    name = "none"

    def __init__(self, name: str = "none"):
        _check_name(name, "none")

    def log_run(self, run_dir: Path, cfg: DictConfig, tables: dict, figures: list[Path], summary: dict) -> None:
        """Nothing to mirror: the run directory is the record."""


class WandbTracker:
    """One W&B run per study run: config, summary metrics, figures as images, tables as W&B tables."""

    name = "wandb"

    def __init__(
        self,
        name: str = "wandb",
        project: str = "influence-studies",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags=(),
        max_table_rows: int = 5000,
    ):
        _check_name(name, "wandb")
        if mode not in ("online", "offline", "disabled"):
            raise InfluenceError(f"logger.mode={mode!r}: use online, offline or disabled")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.max_table_rows = list(tags or []), int(max_table_rows)

    def log_run(self, run_dir: Path, cfg: DictConfig, tables: dict, figures: list[Path], summary: dict) -> None:
        import wandb

        run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            dir=str(run_dir),
            group=self.group or run_group(cfg),
            name=run_name(cfg),
            job_type=str(cfg.study),
            tags=self.tags,
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(silent=True, console="off"),
            reinit="finish_previous",
        )
        try:
            for path in figures:
                if path.suffix == ".png":
                    run.log({f"figures/{path.stem}": wandb.Image(str(path))})
            for name, df in tables.items():
                if isinstance(df, pd.DataFrame) and not name.startswith("_") and not df.empty:
                    run.log({f"tables/{name}": wandb.Table(dataframe=_loggable(df.head(self.max_table_rows)))})
            run.summary.update(summary)
        finally:
            run.finish()


def _loggable(df: pd.DataFrame) -> pd.DataFrame:
    """W&B tables take plain scalars: anything else becomes its string form."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
    return out


def run_group(cfg: DictConfig) -> str:
    """The study, plus the sweep directory's name for -m runs, so one sweep's runs group together."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"{cfg.study}-{Path(hc.sweep.dir).name}"
    except ValueError:  # Hydra not running (library or test use)
        pass
    return str(cfg.study)


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.study}-{cfg.model.name}-seed{cfg.seed}"


def make_tracker(cfg: DictConfig):
    """The tracker `cfg.logger` configures (its `_target_` with its options); a bad config fails here, before any work."""
    return build_component(cfg.logger, "logger", "log_run", "logger=wandb or logger=none")


def log_safely(tracker, run_dir: Path, cfg: DictConfig, tables: dict, figures: list[Path], summary: dict) -> bool:
    """Call the tracker; on any failure warn and return False (the run directory keeps everything)."""
    try:
        tracker.log_run(run_dir, cfg, tables, figures, summary)
        return True
    except Exception as e:  # noqa: BLE001 - a tracker must never lose a run
        first = str(e).splitlines()[0] if str(e) else ""
        msg = f"{tracker.name} logging failed ({type(e).__name__}: {first}); the results are kept in {run_dir}"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return False
