"""`torchrun --nproc_per_node=2 -m experiments.run` on the tiny world writes the tables of one process."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd

from embedded.world import build_world
from experiments.pipeline.outputs import write_tables
from experiments.studies import get_study

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "model=tiny",
    "data=tiny",
    "queries=tiny",
    "queries.names=[shutdown,water]",
    "logger=none",
    "score.num_threads=1",
    "score.max_sequences=120",
    "curvature.max_sequences=120",
    "score.chunk_batches=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_write_the_tables_of_one(tmp_path, tiny_world, tiny_output_dir):
    for n in (1, 2):  # the session's trained tiny model, without its factors or scans
        shutil.copytree(
            tiny_output_dir, tmp_path / f"n{n}", ignore=lambda d, names: {"factors", "scans", "runs"} & set(names)
        )
    cfg = compose_cfg(*ARGS, f"paths.output_dir={tmp_path / 'n1'}")  # one process: the study's tables, without figures
    one = tmp_path / "n1" / "run"
    write_tables(get_study(cfg.study)(cfg, build_world(cfg)), one)
    out = tmp_path / "n2"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "experiments.run",
        *ARGS,
        f"paths.output_dir={out}",
        f"hydra.run.dir={out}/run",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results in") == 1  # only rank 0 writes and reports
    logs = (proc.stdout + proc.stderr).splitlines()
    assert any("[rank 0/2]" in line and "INFO" in line for line in logs)
    assert not any("[rank 1/2]" in line and "INFO" in line for line in logs)  # rank 1 reports warnings only
    for name in ("top_influences", "scores"):
        a, b = pd.read_parquet(one / f"{name}.parquet"), pd.read_parquet(out / "run" / f"{name}.parquet")
        scale = float(a["score"].abs().max())  # float32 sums in another order: equal to ~1e-6 of the largest score
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5 * scale)
    assert len(list((out / "scans").rglob("chunk-*.safetensors"))) > 2  # several chunks, split across ranks
    assert len(list((out / "factors").rglob("*.safetensors"))) == 1
    # no stray run directory from rank 1: the output folder holds what one process leaves, plus the runs index that
    # the entry point (not write_tables) publishes; n1 holds one only if an earlier test published into the copied dir
    assert (out / "index.html").is_file()
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != "index.html")  # noqa: E731
    assert names(out) == names(tmp_path / "n1")
