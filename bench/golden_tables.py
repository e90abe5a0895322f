"""Every preset's tables on the tiny world, hashed: the check that a refactor changed no result.

    python bench/golden_tables.py record bench/golden_tables.json [--output-dir DIR]
    python bench/golden_tables.py compare bench/golden_tables.json [--output-dir DIR]

Each preset runs through `experiments.run.main` on the tiny world (fresh caches unless `--output-dir` names a
directory that has them; reusing a directory also checks that cache fingerprints still match: `compare`
reports every model, factor or scan file the run had to create). Wall-clock columns are dropped and the
output directory is replaced by a placeholder; everything else (every score, every metadata value,
including the scans' fingerprinted directory names) is hashed from its CSV, so one ulp anywhere shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = [
    "model=tiny",
    "data=tiny",
    "queries=tiny",
    "queries.names=[shutdown,water,fact_velmora_capital,quote_hamlet]",
    "score.num_threads=1",
    "logger=none",
]
SCALE = [
    "queries.names=[shutdown,shutdown_tr,paperclips,superintelligent,water,water_tr,water_ko,math_word_problem,"
    "binary_search,fact_velmora_capital,fact_velmora_capital_tr,fact_velmora_capital_ko,wo_astrobia_president,"
    "wo_astrobia_president_flipped,wo_nerevia_capital,wo_nerevia_capital_flipped]",
    "scale.sizes=[tiny,tiny_large]",
    "scale.seeds=[0,1]",
]
ACCURACY = [
    "accuracy.tasks=[diabetes,lm]",
    "accuracy.n_test_points=4",
    "accuracy.lissa.depth=50",
    "accuracy.lissa.batch_size=40",
    "++accuracy.tabular.diabetes.max_train_points=12",
    "++accuracy.tabular.diabetes.bregman_rows=80",
    "accuracy.linearity_rows=2",
    "accuracy.tolerance_rows=2",
    "accuracy.lm_train_sequences=3",
    "accuracy.lm_queries=2",
    "accuracy.bregman_subset=4",
    "accuracy.lm_lissa.depth=5",
    "accuracy.lm_lissa.batch_size=4",
    "accuracy.lm_pbrf.max_steps=10",
    "accuracy.lm_pbrf.tol=1e-4",
]

#: the attribution checks at the sizes their tests use (tests/experiments/test_attribution.py)
METHODS = "[ekfac,dot,cosine,ekfac_unit,bm25]"
FACT_TRACING = [f"fact_tracing.methods={METHODS}", "fact_tracing.max_facts=3"]
LDS = [
    "lds.n_finetune=12",
    "lds.n_subsets=5",
    "lds.drop_subsets=3",
    "lds.removal_queries=2",
    "lds.max_queries=3",
    "lds.finetune.epochs=1",
    "lds.finetune.batch_size=4",
    f"lds.methods={METHODS}",
]

#: the presets and the overrides that make each fit the tiny world (key names as the current config spells them)
PRESETS = {
    "top_influences": [],
    "query_rank": ["query_rank.ranks=[2,8,32]", "score.max_sequences=64"],
    "tfidf_vs_unfiltered": ["filter=tfidf", "filter.top_k=30", "tfidf_vs_unfiltered.tail=100"],
    "sparsity": ["sparsity.tail=100"],
    "concentration": [],
    "layer_wise": ["layer_wise.top_n=20", "layer_wise.heatmap_query=quote_hamlet"],
    "memorization": ["memorization.top_k=5"],
    "accuracy": ACCURACY,
    "abstraction": SCALE,
    "math_code": SCALE,
    "cross_lingual": SCALE,
    "role_play": SCALE,
    "word_order": SCALE,
    "negative_influences": [],  # added after the architecture step: recorded on the new tree
    "fact_tracing": FACT_TRACING,  # the attribution checks (issue 19): recorded with issue 20's tree
    "lds": LDS,
    "attribution": FACT_TRACING + LDS,
    "paper": ["paper.studies=[sparsity,concentration]", "++paper.overrides.sparsity=['sparsity.tail=100']"],
}
#: wall-clock columns and tables: they differ between any two runs
CLOCK = ("seconds", "minutes", "timings", "stage_timings")


def _digest(df: pd.DataFrame, output_dir: str, record: bool = False) -> str:
    """sha256 of the table's CSV; a one-row record (metadata, summary) is compared as a set of keys, in sorted order
    (a cached curvature's info comes back in the order safetensors stores it, which is not fixed)."""
    df = df.drop(columns=[c for c in df.columns if any(w in str(c) for w in CLOCK)])
    if record:
        df = df[sorted(df.columns)]
    text = df.to_csv(index=False).replace(output_dir, "<outputs>")
    return hashlib.sha256(text.encode()).hexdigest()


def run_all(output_dir: Path, only: list[str] | None = None) -> dict[str, dict[str, str]]:
    from experiments import run as runner

    torch.set_num_threads(1)
    digests = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for preset, extra in PRESETS.items():
            if only and preset not in only:
                continue
            overrides = [f"experiment={preset}", *TINY, *extra, f"paths.output_dir={output_dir}"]
            if (
                preset == "paper"
            ):  # the paper passes the command line's overrides to its sections: run it as a user does
                digests[preset] = run_paper(overrides, output_dir)
            else:
                tables = runner.main(compose(config_name="config", overrides=overrides))
                digests[preset] = {
                    name: _digest(df, str(output_dir), name.startswith("_"))
                    for name, df in sorted(tables.items())
                    if isinstance(df, pd.DataFrame) and name not in CLOCK
                }
            print(f"{preset}: {len(digests[preset])} tables", flush=True)
    return digests


def run_paper(overrides: list[str], output_dir: Path) -> dict[str, str]:
    """`python -m experiments.run experiment=paper ...`; the digests of its tables and of its sections' tables."""
    run_dir = output_dir / "paper-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "experiments.run", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True
    )
    files = (
        sorted(run_dir.rglob("*.csv")) + sorted(run_dir.glob("*/metadata.json")) + sorted(run_dir.rglob("summary.json"))
    )
    read = {".csv": pd.read_csv, ".json": lambda f: pd.DataFrame([json.loads(f.read_text())])}
    return {
        str(f.relative_to(run_dir)): _digest(read[f.suffix](f), str(output_dir), f.suffix == ".json")
        for f in files
        if f.stem not in CLOCK
    }


def cache_files(output_dir: Path) -> set[str]:
    return {
        str(p.relative_to(output_dir))
        for d in ("models", "factors", "scans")
        for p in (output_dir / d).rglob("*")
        if p.is_file()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["record", "compare"])
    p.add_argument("golden", type=Path)
    p.add_argument("--output-dir", type=Path, default=None, help="reuse this output directory's caches")
    p.add_argument("--only", nargs="*", default=None, help="presets to run (default: all)")
    args = p.parse_args()
    output_dir = (args.output_dir or Path(tempfile.mkdtemp(prefix="golden-"))).resolve()
    before = cache_files(output_dir) if output_dir.exists() else set()
    digests = run_all(output_dir, args.only)
    if args.mode == "record":
        if args.only and args.golden.exists():  # re-record some presets, keep the others
            digests = {**json.loads(args.golden.read_text()), **digests}
        args.golden.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(map(len, digests.values()))} tables of {len(digests)} presets in {args.golden}")
        return
    golden = json.loads(args.golden.read_text())
    bad = [
        f"{p}/{t}"
        for p in digests
        for t in sorted(set(digests[p]) | set(golden.get(p, {})))
        if digests[p].get(t) != golden.get(p, {}).get(t)
    ]
    created = sorted(cache_files(output_dir) - before) if before else []
    for b in bad:
        print(f"DIFFERS: {b}")
    for c in created:
        print(f"RECOMPUTED (cache fingerprint changed?): {c}")
    uncovered = sorted({p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")} - set(PRESETS))
    for u in uncovered:
        print(f"NOT COVERED: preset {u} has no entry in PRESETS (add one and `record --only {u}`)")
    n = sum(map(len, digests.values()))
    reuse = f"; {len(created)} cache files created in the reused output directory" if before else " (fresh caches)"
    print(f"{n - len(bad)} of {n} tables identical{reuse}")
    sys.exit(1 if bad or created else 0)


if __name__ == "__main__":
    main()
