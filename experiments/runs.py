"""`python -m experiments.runs [output_dir]`: every run directory with its state (complete, failed, killed, running).

Also what `outputs/index.html` (experiments/explorer.py) lists.

A directory whose run was killed, or that predates `status.json`, looks like a run but holds no results: this
listing says which is which, from each run's `status.json` (experiments/pipeline/outputs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .pipeline.outputs import STATUS, read_status


def run_table(output_dir: str | Path) -> pd.DataFrame:
    """One row per run directory below `output_dir` (single runs, sweep jobs and `runs/latest`, the directory of a
    run started without Hydra), newest first."""
    root = Path(output_dir)
    dirs = {p.parent for p in root.glob("runs/*/*/.hydra")} | {p.parent for p in root.glob("multiruns/*/*/*/.hydra")}
    dirs |= {
        p.parent for pattern in ("runs/*", "runs/*/*", "multiruns/*/*/*") for p in root.glob(f"{pattern}/{STATUS}")
    }
    rows = []
    for d in dirs:
        status = read_status(d) or {}
        rows.append(
            {
                "run": str(d.relative_to(root)),
                "state": status.get("state", "unknown (no status.json)"),
                "study": status.get("study", ""),
                "started": status.get("started", ""),
                "finished": status.get("finished", ""),
                "error": _short(status.get("error", "")),
            }
        )
    table = pd.DataFrame(rows, columns=["run", "state", "study", "started", "finished", "error"])
    return table.sort_values("run", ascending=False, ignore_index=True)


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str]) -> None:
    table = run_table(argv[0] if argv else "outputs")
    if table.empty:
        print("no runs found")
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
