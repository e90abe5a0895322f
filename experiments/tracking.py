"""Experiment trackers: the run directory always holds the results; a tracker mirrors them (W&B) or not.

The `logger` group names the tracker class by `_target_` (conf/logger/<option>.yaml), and `make_tracker`
builds it with `hydra.utils.instantiate`: a new tracker is a class with `log_run` and a YAML, no caller.
Logging never costs a run its results: the tables, figures and report are written before the tracker
is called, and a tracker failure is a warning. Online, W&B gets at most `logger.timeout_s` seconds (a server
that does not answer would otherwise hold the finished run for minutes), announced before it starts.
"""

from __future__ import annotations

import logging
import threading
import time
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
        timeout_s: float = 30,
    ):
        _check_name(name, "wandb")
        if mode not in ("online", "offline", "disabled"):
            raise InfluenceError(f"logger.mode={mode!r}: use online, offline or disabled")
        try:
            seconds = float(timeout_s)
        except (TypeError, ValueError):
            seconds = float("nan")
        if not 0 < seconds < float("inf"):
            raise InfluenceError(f"logger.timeout_s={timeout_s!r}: give the most seconds to wait for W&B, a number > 0")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.max_table_rows, self.timeout_s = list(tags or []), int(max_table_rows), seconds

    def log_run(self, run_dir: Path, cfg: DictConfig, tables: dict, figures: list[Path], summary: dict) -> None:
        """Offline and disabled: log here. Online: log in a daemon thread and wait at most `timeout_s` for it.

        Online, wandb retries an unreachable server for minutes (init alone 90 s by default): its own timeouts
        are set to `timeout_s`, and the thread bounds init + log + finish as a whole, whatever wandb does.
        On a timeout the thread is left behind (a daemon: it cannot keep the process alive) and this raises.
        """
        import wandb

        settings = {"silent": True, "console": "off"}
        if self.mode != "online":
            self._log(wandb, wandb.Settings(**settings), run_dir, cfg, tables, figures, summary)
            return
        global _stuck
        url = _base_url()
        if _stuck is not None and _stuck.is_alive():
            raise TimeoutError(f"an earlier W&B connection to {url} in this process is still waiting: not trying again")
        wait = f"{self.timeout_s:g} s"
        log.info("W&B: connecting to %s (online mode, up to %s; the results are already in %s)", url, wait, run_dir)
        settings.update(init_timeout=self.timeout_s, finish_timeout=self.timeout_s, finish_timeout_raises=True)
        failure: list[BaseException] = []

        def work():
            try:
                self._log(wandb, wandb.Settings(**settings), run_dir, cfg, tables, figures, summary)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                failure.append(e)

        t0 = time.monotonic()
        thread = threading.Thread(target=work, name="wandb-log-run", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            _stuck = thread
            log.warning("W&B: no answer from %s within %s: the run was not synced; %s", url, wait, _sync_hint(run_dir))
            raise TimeoutError(f"no answer from {url} within {wait}")
        if failure:
            log.warning("W&B: the run was not synced to %s; %s", url, _sync_hint(run_dir))
            raise failure[0]
        log.info("W&B: synced to %s in %.1f s", url, time.monotonic() - t0)

    def _log(self, wandb, settings, run_dir: Path, cfg: DictConfig, tables: dict, figures: list[Path], summary: dict):
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
            settings=settings,
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


_stuck: threading.Thread | None = None  # an online log_run that timed out and may still be waiting on wandb


def _base_url() -> str:
    """The W&B server wandb will contact (settings files, WANDB_BASE_URL, ...), read without starting its service."""
    try:
        from wandb.sdk import wandb_setup

        return str(wandb_setup.singleton().settings.base_url)
    except Exception:  # noqa: BLE001 - only for a message
        import os

        return os.environ.get("WANDB_BASE_URL", "the W&B server")


def _sync_hint(run_dir: Path) -> str:
    """How to get the run to W&B later: `wandb sync` the files wandb wrote, or re-run offline."""
    local = sorted(p.parent for p in Path(run_dir).glob("wandb/*run-*/*.wandb"))
    if local:
        return f"sync it later with `wandb sync {local[-1]}`"
    return "re-run with logger.mode=offline, then `wandb sync <run dir>/wandb/offline-run-*`"


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
