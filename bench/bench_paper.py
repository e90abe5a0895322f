"""Time `experiment=paper` on the embedded default, section by section and stage by stage.

    python bench/bench_paper.py                      # the whole paper (models trained first if missing)
    python bench/bench_paper.py 'paper.studies=[sparsity,word_order]' scale.seeds=[0]

Runs the real command line (`python -m experiments.run experiment=paper ...`) in a subprocess, then prints
the time of each study and of each pipeline stage (world = load or train the model, fit = curvature, scan,
breakdown = top-k layer/token split) from the run's `timings` and `stage_timings` tables. A stage served from
its on-disk cache counts only its loading time, so run it twice to see the cost of a warm re-run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    run_dir = ROOT / "outputs" / "bench" / f"paper-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "experiment=paper",
        "logger=none",
        *argv,
        f"hydra.run.dir={run_dir}",
    ]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    if not (run_dir / "timings.parquet").exists():
        sys.exit(f"the paper run wrote no timings (exit {p.returncode}): see {run_dir}")
    sections = pd.read_parquet(run_dir / "timings.parquet")
    stages = pd.read_parquet(run_dir / "stage_timings.parquet")
    print("\n== per study (seconds)")
    print(sections.to_string(index=False))
    if not stages.empty:
        print("\n== per stage, summed over the run (seconds)")
        print(stages.groupby("stage")["seconds"].agg(["sum", "count", "max"]).round(1).to_string())
        print("\n== per model and stage (seconds)")
        print(stages.groupby(["model", "stage"])["seconds"].sum().unstack("stage").round(1).fillna(0).to_string())
    print(
        f"\nwall clock {wall / 60:.1f} min (exit {p.returncode}); studies {sections['seconds'].sum() / 60:.1f} min; results in {run_dir}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
