"""`python -m experiments.run [study=...] [group=option] [key=value]`: compose the config, build the world, run a study.

Tables land in the Hydra run directory as parquet (and CSV for reading by eye); the
resolved config is kept there by Hydra (.hydra/config.yaml).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from embedded.world import build_world_ranked
from influence import InfluenceError, distributed
from influence.storage import DISK_ERRNOS, write_failure

from .explorer import publish_pages
from .paper import run_paper
from .pipeline.options import check as check_options
from .pipeline.outputs import begin_run, check_writable, end_run
from .pipeline.sweep import check_hub_sizes
from .report import publish
from .studies import get_study
from .tracking import log_safely, make_tracker

log = logging.getLogger("experiments.run")


def print_top(df: pd.DataFrame, width: int = 90) -> None:
    for query, group in df.groupby("query", sort=False):
        print(f"\n== {query}")
        for _, r in group.iterrows():
            text = " ".join(str(r["text"]).split())
            print(f"  {r['rank']:>2}  {r['score']:+.4e}  [{r['category']}] #{r['sequence_id']}  {text[:width]}")


def run_directory(cfg: DictConfig) -> tuple[Path, list[str]]:
    """Hydra's run directory and the command-line overrides (a plain directory when Hydra is not running)."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return Path(hc.runtime.output_dir), list(hc.overrides.task)
    return Path(cfg.paths.output_dir) / "runs" / "latest", []


def join_ranks(cfg: DictConfig) -> None:
    """Under torchrun: join the process group (gloo on CPU, nccl on CUDA), one GPU per rank, logs tagged by rank.

    Only rank 0 logs at INFO; the others report warnings and errors.
    """
    if not distributed.init_from_env(device=str(cfg.score.device)):
        return
    if str(cfg.score.device) == "cuda":
        cfg.score.device = f"cuda:{distributed.local_rank()}"
    tag = f"[rank {distributed.rank()}/{distributed.world_size()}] "

    def prefix(record):  # once per record, though several handlers see it
        if not str(record.msg).startswith(tag):
            record.msg = tag + str(record.msg)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(prefix)
    if not distributed.is_main():
        logging.getLogger().setLevel(logging.WARNING)


def main(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Run the configured study; write its tables, figures and report.md; mirror them to the tracker.

    Everything that can be checked without work is checked first (options, study options, the tracker, that the
    output directories are writable); then the run claims its directory (`status.json`: running), and marks it
    complete, or failed with the error, when it ends. A killed run keeps "running" with a pid that is gone."""
    # a bad option, data or model block, checkpoint, corpus path or query list fails before any work; so does a hub
    # id (model.path or scale.sizes) neither cached nor downloadable (resolving it downloads it when online)
    check_options(cfg)
    check_hub_sizes(cfg)
    name = str(cfg.study)
    study = None if name == "paper" else get_study(name)
    if study is not None:
        study.read_options(cfg)  # a misspelt or invalid `<study>.*` option fails before any work
    if cfg.score.num_threads:
        torch.set_num_threads(int(cfg.score.num_threads))
    join_ranks(cfg)
    tracker = make_tracker(cfg) if distributed.is_main() else None  # a bad logger config fails before any work
    run_dir, overrides = run_directory(cfg)
    if not distributed.is_main():  # rank 0 claims the run directory, writes and logs the results every rank computed
        return _run(cfg, study, run_dir, overrides, tracker)
    check_writable([run_dir, *output_directories(cfg)])
    begin_run(run_dir, name, overrides)
    try:
        tables = _run(cfg, study, run_dir, overrides, tracker)
    except BaseException as e:
        end_run(run_dir, one_line(e))
        if isinstance(e, Exception):  # the run's page (what it wrote) and the index, with its state (not on Ctrl-C)
            publish_pages(run_dir, Path(str(cfg.paths.output_dir)))
        raise
    end_run(run_dir)
    publish_pages(run_dir, Path(str(cfg.paths.output_dir)))  # explorer.html and outputs/index.html
    return tables


def output_directories(cfg: DictConfig) -> list[Path]:
    """The output directory and the caches below it that exist (models, corpora, factors, scans)."""
    root = Path(str(cfg.paths.output_dir))
    return [root, *(root / d for d in ("models", "corpora", "factors", "scans") if (root / d).exists())]


def one_line(e: BaseException) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return first if isinstance(e, InfluenceError) else f"{type(e).__name__}: {first}"


def _run(cfg: DictConfig, study, run_dir: Path, overrides: list[str], tracker) -> dict[str, pd.DataFrame]:
    if study is None:  # experiment=paper: every study, each in its own folder, and one report with the scorecard
        report, card = run_paper(cfg, run_dir, overrides, tracker)
        if not distributed.is_main():
            return {"scorecard": card}
        print(card[["study", "finding", "measured", "reproduced"]].to_string(index=False))
        print(f"\npaper: results in {run_dir} (report: {report}, {report.with_suffix('.html')})")
        return {"scorecard": card}
    world = build_world_ranked(cfg)  # rank 0 trains (or prepares) the world first; the others then load it
    world.model.to(cfg.score.device)
    tables = study(cfg, world)
    if not distributed.is_main():
        return tables
    figures, report = publish(run_dir, study.name, overrides, tables)
    summary = tables["_summary"].iloc[0].to_dict() if "_summary" in tables else {}
    log_safely(tracker, run_dir, cfg, tables, figures, {**summary, "model": world.name})
    if "top_influences" in tables and study.name == "top_influences":
        print_top(tables["top_influences"])
    print(f"\n{study.name}: results in {run_dir} (report: {report}, explorer page: {run_dir / 'explorer.html'})")
    return tables


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def cli(cfg: DictConfig) -> None:
    try:
        main(cfg)
    except InfluenceError as e:
        log.error("%s", e)
        sys.exit(f"error: {e}")
    except OSError as e:  # a write no retry fixes (full disk, read-only directory): one line, not a traceback
        if e.errno not in DISK_ERRNOS:
            raise
        failure = write_failure(e.filename or "a result file", e)
        log.error("%s", failure)
        sys.exit(f"error: {failure}")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: only rank 0 keeps a run directory (config, log file)
        sys.argv += ["hydra.run.dir=${paths.output_dir}", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    cli()
