"""Sweeps through Hydra's submitit launcher: the local launcher really runs jobs; the SLURM config composes."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from .conftest import CONF

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _launcher(option: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={option}"], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(
    "option,target", [("submitit_local", LOCAL), ("local", LOCAL), ("submitit_slurm", SLURM), ("slurm", SLURM)]
)
def test_launcher_configs_compose(option, target):
    launcher = _launcher(option)
    assert launcher._target_ == target
    if option == "slurm":  # the documented resources are set and overridable keys of the plugin's schema
        assert {"partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism"} <= set(
            launcher
        )
        assert launcher.gpus_per_node == 1 and launcher.mem_gb == 64


@pytest.mark.slow  # ~25 s of job start-ups (make test-slow); the sweep's composition is tested in test_sweep.py
def test_a_two_job_sweep_runs_through_the_submitit_local_launcher(tiny_cfg, tiny_world, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "-m",
        "hydra/launcher=submitit_local",
        "experiment=top_influences",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        "queries.names=[shutdown,water]",
        "logger=none",
        "score.num_threads=1",
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "score.top_k=3,5",
        f"hydra.sweep.dir={sweep}",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Submitit 'local' sweep" in p.stdout + p.stderr
    runs = sorted(sweep.glob("[0-9]*"))
    assert len(runs) == 2
    for run, k in zip(runs, (3, 5)):
        top = pd.read_parquet(run / "top_influences.parquet")
        assert top.groupby("query").size().to_dict() == {"shutdown": k, "water": k}
        assert (run / "report.md").exists() and (run / "metadata.json").exists()
        hydra_cfg = OmegaConf.load(run / ".hydra" / "hydra.yaml")
        assert hydra_cfg.hydra.launcher._target_ == LOCAL
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit, not the basic launcher, ran them


@pytest.mark.parametrize(
    "module",
    [  # the train entry points share experiments.run's config lookup: their subprocesses run with make test-slow
        pytest.param("experiments.train", marks=pytest.mark.slow),
        pytest.param("embedded.train", marks=pytest.mark.slow),
        "experiments.run",
    ],
)
def test_every_documented_entry_point_finds_its_configs(module):
    """`python -m experiments.train` once failed with "Primary config module 'conf' not found": Hydra resolves
    config_path from the module defining the decorated function, so each entry point must define its own."""
    p = subprocess.run(
        [sys.executable, "-m", module, "--cfg", "job", "model=tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "name: gpt2-tiny" in p.stdout
