"""A run's directory: its result files (tables as parquet + CSV, metadata as JSON, tensors as safetensors), staged
and moved into place together, and its `status.json`, which says whether the run is running, complete or failed.

A run's results either all appear or none do: `staged` collects them in a hidden directory beside the run's and
moves them in only once every file is written, so a full disk or a kill never leaves 4 of 13 tables, a 0-byte
figure or a report without its tables. `status.json` is claimed exclusively when a run starts, so two runs given
one directory (launched in the same instant) cannot mix their results: the second is refused while the first lives.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

from influence import InfluenceError
from influence.storage import (
    DISK_ERRNOS,
    atomic_write,
    atomic_write_text,
    probe_writable,
    process_alive,
    save_tensors,
    write_failure,
)

STATUS = "status.json"


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


def _move_into(src: Path, dst: Path) -> None:
    """Move every file below `src` to the same place below `dst` (renames: no new space needed)."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


@contextlib.contextmanager
def staged(run_dir: str | os.PathLike):
    """Yield a hidden directory to write a run's results into; move them into `run_dir` only if all were written.

    A write that fails for want of space or permission becomes one InfluenceError line naming the file."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".results-", suffix=".tmp", dir=run_dir))
    except OSError as e:
        raise write_failure(run_dir, e) from None
    try:
        yield tmp
        _move_into(tmp, run_dir)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        raise InfluenceError(
            f"could not write the results into {run_dir}: {e.strerror} writing {_result_name(e.filename, tmp)} "
            "(none were kept; the fitted factors and scans are cached, so a rerun after freeing disk space "
            "or choosing a writable paths.output_dir is quick)"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _result_name(filename, staging: Path) -> str:
    """The result file a failed write was for, as the user will know it (not its staging or temporary name)."""
    if not filename or Path(filename) == staging:
        return "the result files"
    path = Path(filename)
    name = path.name
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 4:  # .<name>.<host-pid>.<random>.tmp
        name = ".".join(name[1:].split(".")[:-3])
    with contextlib.suppress(ValueError):
        return str(path.parent.relative_to(staging) / name)
    return name


def check_writable(directories: list[Path]) -> None:
    """Fail before any work when a directory results or caches go to cannot be written."""
    for d in directories:
        try:
            probe_writable(d)
        except OSError as e:
            raise InfluenceError(
                f"cannot write to {d}: {e.strerror or e} (make it writable or choose another paths.output_dir)"
            ) from None


class RunDirectoryCheck(Callback):
    """A Hydra callback (conf/config.yaml `hydra.callbacks`): a run or sweep directory that cannot be created is
    one line before Hydra starts the job (Hydra itself would print a traceback)."""

    def on_run_start(self, config, **kwargs) -> None:
        _create_or_exit(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config, **kwargs) -> None:
        _create_or_exit(Path(str(config.hydra.sweep.dir)))


def _create_or_exit(directory: Path) -> None:
    try:
        probe_writable(directory)
    except OSError as e:
        sys.exit(
            f"error: cannot create the run directory {directory}: {e.strerror or e} "
            "(choose a writable paths.output_dir, or set hydra.run.dir)"
        )


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_status(run_dir: Path) -> dict | None:
    """The run's status.json, with `state` "killed" for a run whose process ended without finishing."""
    try:
        status = json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None
    if status.get("state") == "running" and not process_alive(status.get("host"), status.get("pid")):
        status["state"] = "killed"
    return status


def begin_run(run_dir: Path, study: str, overrides: list[str]) -> None:
    """Claim `run_dir` for this process: status.json, created exclusively, says the run is running.

    A directory another live run holds is refused; a finished, failed or killed run's is taken over."""
    run_dir = Path(run_dir)
    status = {"state": "running", "study": study, "overrides": overrides, "started": _now()}
    status |= {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / STATUS, "x", encoding="utf-8") as f:
            json.dump(status, f, indent=2)
        return
    except FileExistsError:
        old = read_status(run_dir)
    except OSError as e:
        raise write_failure(run_dir / STATUS, e) from None
    if old is not None and old.get("state") == "running" and old.get("pid") != os.getpid():
        raise InfluenceError(
            f"{run_dir} is the run directory of another run still going (pid {old.get('pid')} on {old.get('host')}, "
            f"started {old.get('started')}): give this run its own hydra.run.dir"
        )
    atomic_write_text(run_dir / STATUS, json.dumps(status, indent=2))


def end_run(run_dir: Path, error: str | None = None) -> None:
    """Mark the run complete, or failed with its one-line error (best effort: a full disk keeps "running")."""
    path = Path(run_dir) / STATUS
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = {}
    status |= {"state": "failed" if error else "complete", "finished": _now()}
    if error:
        status["error"] = error
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps(status, indent=2))
