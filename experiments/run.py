"""`python -m experiments.run [study=...] [group=option] [key=value]`: compose the config, build the world, run a study.

Tables land in the Hydra run directory as parquet (and CSV for reading by eye); the
resolved config is kept there by Hydra (.hydra/config.yaml).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from influence import InfluenceError
from influence.storage import atomic_write, save_tensors

log = logging.getLogger("experiments.run")


def write_tables(tables: dict, run_dir: Path) -> None:
    """Each table as parquet + CSV, written atomically. Names starting with '_' are metadata (JSON);
    a dict of tensors is written as safetensors with the run's metadata."""
    meta = tables.get("_metadata")
    for name, df in tables.items():
        if isinstance(df, dict):
            save_tensors(run_dir / f"{name}.safetensors", df, {} if meta is None else meta.iloc[0].astype(str).to_dict())
            continue
        if name.startswith("_"):
            atomic_write(run_dir / f"{name[1:]}.json", lambda tmp, df=df: df.iloc[0].to_json(tmp, indent=2))
            continue
        atomic_write(run_dir / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
        atomic_write(run_dir / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))


def print_top(df: pd.DataFrame, width: int = 90) -> None:
    for query, group in df.groupby("query", sort=False):
        print(f"\n== {query}")
        for _, r in group.iterrows():
            text = " ".join(str(r["text"]).split())
            print(f"  {r['rank']:>2}  {r['score']:+.4e}  [{r['category']}] #{r['sequence_id']}  {text[:width]}")


def main(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    from .studies import get_study
    from .world import build_world

    if cfg.score.get("num_threads"):
        torch.set_num_threads(int(cfg.score.num_threads))
    study = get_study(cfg.get("study", "top_influences"))
    world = build_world(cfg)
    world.model.to(cfg.score.device)
    tables = study(cfg, world)
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir) / "runs" / "latest"
    write_tables(tables, run_dir)
    from analysis.figures import draw_all

    for path in draw_all(tables, run_dir):
        log.info("figure %s", path)
    if "top_influences" in tables:
        print_top(tables["top_influences"])
    print(f"\nresults in {run_dir}")
    return tables


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def cli(cfg: DictConfig) -> None:
    try:
        main(cfg)
    except InfluenceError as e:
        log.error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
