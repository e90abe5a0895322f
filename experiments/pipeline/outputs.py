"""A run's result files: tables as parquet + CSV, metadata as JSON, tensors as safetensors, each written atomically."""

from __future__ import annotations

from pathlib import Path

from influence.storage import atomic_write, save_tensors


def write_tables(tables: dict, run_dir: Path) -> None:
    """Each table as parquet + CSV, written atomically. Names starting with '_' are metadata (JSON);
    a dict of tensors is written as safetensors with the run's metadata."""
    meta = tables.get("_metadata")
    for name, df in tables.items():
        if isinstance(df, dict):
            save_tensors(
                run_dir / f"{name}.safetensors", df, {} if meta is None else meta.iloc[0].astype(str).to_dict()
            )
            continue
        if name.startswith("_"):
            atomic_write(run_dir / f"{name[1:]}.json", lambda tmp, df=df: df.iloc[0].to_json(tmp, indent=2))
            continue
        atomic_write(run_dir / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
        atomic_write(run_dir / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
