"""Nothing lost, nothing silently wrong (issue 16), on the tiny world: runs launched together keep their own
directories, caches with flipped bytes are recomputed or named, write failures leave no half-written result and
say so in one line, and a failed or killed run is marked as such."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from analysis import figures as figures_mod
from embedded import train as train_mod
from embedded.world import build_world
from experiments import run as runner
from experiments.pipeline import outputs
from experiments.pipeline.stages import search_stage
from experiments.report import publish
from experiments.runs import run_table
from experiments.studies import get_study
from influence import InfluenceError, storage
from influence.fingerprint import config_fingerprint

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]


def flip_byte(path: Path, from_end: int = 9) -> None:
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 0x5A
    path.write_bytes(bytes(raw))


def tiny(output_dir, *extra):
    return compose_cfg(
        "model=tiny", "data=tiny", "queries=tiny", "queries.names=[shutdown,water]", f"paths.output_dir={output_dir}",
        "score.num_threads=1", "logger=none", *extra,
    )  # fmt: skip


def test_runs_launched_in_the_same_instant_keep_their_own_results(tiny_world, tiny_output_dir):
    """The reported failure: an ekfac and an identity run started together shared `runs/<date>/<time>`."""
    cmd = [sys.executable, "-m", "experiments.run", "model=tiny", "data=tiny", "queries=tiny", "logger=none"]
    cmd += ["queries.names=[shutdown]", "score.max_sequences=48", f"paths.output_dir={tiny_output_dir}"]
    cmd += ["score.num_threads=1"]  # the default run directory, conf/config.yaml's
    before = set(tiny_output_dir.glob("runs/*/*"))
    procs = {c: subprocess.Popen([*cmd, f"curvature={c}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for c in ("ekfac", "identity")}  # fmt: skip
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-2000:]
    runs = sorted(set(tiny_output_dir.glob("runs/*/*")) - before)
    assert len(runs) == 2
    curvatures = set()
    for run in runs:
        assert json.loads((run / "status.json").read_text())["state"] == "complete"
        meta = json.loads((run / "metadata.json").read_text())
        overrides = json.loads((run / "status.json").read_text())["overrides"]
        assert f"curvature={meta['curvature']}" in overrides  # the tables are this run's own
        assert (run / "report.md").exists() and (run / "top_influences.parquet").exists()
        curvatures.add(meta["curvature"])
    assert curvatures == {"ekfac", "identity"}


def test_a_run_directory_held_by_a_live_run_is_refused(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    try:
        outputs.begin_run(tmp_path, "top_influences", [])
        status = json.loads((tmp_path / "status.json").read_text())
        (tmp_path / "status.json").write_text(json.dumps(status | {"pid": live.pid}))
        with pytest.raises(InfluenceError, match="another run still going .*give this run its own hydra.run.dir"):
            outputs.begin_run(tmp_path, "top_influences", [])
    finally:
        live.kill()
        live.wait()
    assert outputs.read_status(tmp_path)["state"] == "killed"
    outputs.begin_run(tmp_path, "top_influences", [])  # a killed run's directory is taken over
    assert outputs.read_status(tmp_path)["state"] == "running"


def test_failed_and_killed_runs_are_marked_and_listed(tiny_cfg, tiny_output_dir, monkeypatch):
    def broken(cfg):
        raise InfluenceError("the world could not be built")

    monkeypatch.setattr(runner, "build_world_ranked", broken)
    with pytest.raises(InfluenceError):
        runner.main(tiny_cfg)
    status = outputs.read_status(tiny_output_dir / "runs" / "latest")
    assert status["state"] == "failed" and status["error"] == "the world could not be built"
    root = tiny_output_dir / "listing"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, state in (("00-00-01-000001", "complete"), ("00-00-02-000002", "running")):
        d = root / "runs" / "2026-12-01" / name
        (d / ".hydra").mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"state": state, "pid": dead.pid, "host": os.uname().nodename}))
    (root / "runs" / "2026-12-01" / "00-00-03-000003" / ".hydra").mkdir(parents=True)  # before status.json existed
    table = run_table(root)
    assert dict(zip(table["run"].str[-15:], table["state"])) == {
        "00-00-03-000003": "unknown (no status.json)",
        "00-00-02-000002": "killed",
        "00-00-01-000001": "complete",
    }


def test_a_full_disk_while_writing_results_keeps_none_and_says_so(tiny_cfg, tiny_world, tmp_path, monkeypatch):
    tables = get_study("top_influences")(tiny_cfg, tiny_world)
    real, calls = pd.DataFrame.to_csv, []

    def to_csv(self, path=None, *a, **k):
        calls.append(path)
        if len(calls) == 3:  # the third table: two are written by then
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    run_dir = tmp_path / "run"
    with pytest.raises(InfluenceError, match="No space left on device .*none were kept") as e:
        publish(run_dir, "top_influences", [], tables)
    assert "\n" not in str(e.value) and str(run_dir) in str(e.value)
    assert sorted(p.name for p in run_dir.iterdir()) == []  # no 2-of-5 tables, no report, no staging directory
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    figures, report = publish(run_dir, "top_influences", [], tables)  # after freeing space: all of them
    assert report.exists() and all(p.exists() and p.stat().st_size > 0 for p in figures)
    assert not [p for p in run_dir.rglob(".*") if p.name != ".hydra"]


def test_a_figure_cut_off_while_drawing_leaves_no_file(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig = plt.figure()

    def cut_off(path, **kw):
        Path(path).write_bytes(b"%PDF-1.4 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fig, "savefig", cut_off)
    with pytest.raises(KeyboardInterrupt):
        figures_mod.save(fig, tmp_path / "figures" / "fig8")
    assert list((tmp_path / "figures").iterdir()) == []


def test_a_model_that_cannot_be_saved_fails_before_training_or_in_one_line(tiny_cfg, tiny_world, monkeypatch):
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.model.train.lr = 2.9e-3  # another model of the same corpus: not on disk
    trained = []
    monkeypatch.setattr(train_mod.shutil, "disk_usage", lambda d: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: trained.append(1) or pytest.fail("trained"))
    with pytest.raises(InfluenceError, match=r"1 MiB free but the trained model needs about \d+ MiB.*before training"):
        train_mod.train_and_save(cfg)
    assert not trained
    monkeypatch.undo()
    curve = pd.DataFrame({"step": [1], "val_loss": [1.0]})
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: ({"heldout_loss": 1.0}, curve))
    monkeypatch.setattr(
        pd.DataFrame, "to_csv", lambda self, p, *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space", p))
    )
    with pytest.raises(InfluenceError, match=r"could not write .*curve\.csv: No space \(free disk space"):
        train_mod.train_and_save(cfg)
    models = Path(str(cfg.paths.output_dir)) / "models"
    assert not [p for p in models.iterdir() if p.name.startswith(".") or "2.9" in p.name]
    assert not train_mod.model_dir_for(cfg, train_mod.prepare_data(cfg)).exists()


def test_a_read_only_cache_directory_fails_before_any_work(tiny_cfg, tiny_output_dir, monkeypatch):
    real = storage.tempfile.NamedTemporaryFile

    def probe(*a, dir=None, **k):
        if Path(dir).name == "factors":
            raise PermissionError(errno.EROFS, "Read-only file system", dir)
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(storage.tempfile, "NamedTemporaryFile", probe)
    monkeypatch.setattr(runner, "build_world_ranked", lambda cfg: pytest.fail("work started"))
    with pytest.raises(InfluenceError, match=r"cannot write to .*factors: Read-only file system \(make it writable"):
        runner.main(tiny_cfg)


def test_corrupt_model_weights_are_named_and_a_corrupt_corpus_is_regenerated(tiny_cfg, tiny_world, tmp_path, caplog):
    src = Path(str(tiny_cfg.paths.output_dir))
    for part in ("models", "corpora"):
        shutil.copytree(src / part, tmp_path / part)
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    (corpus,) = [p for p in (tmp_path / "corpora").iterdir() if p.name.startswith("embedded-")]
    flip_byte(corpus / "train.parquet", from_end=400)
    with caplog.at_level(logging.WARNING, logger="embedded.prepare"):
        world = build_world(cfg)
    assert "train.parquet does not match its checksum" in caplog.text
    assert world.train.texts == tiny_world.train.texts and torch.equal(
        world.train.input_ids, tiny_world.train.input_ids
    )
    weights = Path(world.model_dir) / "model.safetensors"
    flip_byte(weights, from_end=1000)
    with pytest.raises(InfluenceError, match=r"model\.safetensors does not match its checksum .*: delete .* to train"):
        build_world(cfg)


def test_a_breakdown_with_flipped_bytes_is_recomputed(tiny_cfg, tiny_world, caplog):
    first = search_stage(tiny_cfg, tiny_world, breakdown_k=3)
    key = config_fingerprint(first.result.top_k(3)[1].tolist())[:16]
    path = Path(first.result.metadata["scan_dir"]) / f"breakdown-{key}.safetensors"
    flip_byte(path)
    with caplog.at_level(logging.WARNING, logger="experiments.pipeline.stages"):
        again = search_stage(tiny_cfg, tiny_world, breakdown_k=3)
    assert "does not match its checksum" in caplog.text
    for a, b in zip(first.tops, again.tops):
        assert torch.equal(a.token_scores, b.token_scores) and torch.equal(a.rows, b.rows)


def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path):
    """Hydra would print a traceback creating it; the callback conf/config.yaml registers exits with one line."""
    from hydra import compose, initialize_config_dir

    from .conftest import CONF

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=[f"paths.output_dir={blocker}/out"], return_hydra_config=True)
    (callback,) = cfg.hydra.callbacks.values()
    check = outputs.RunDirectoryCheck() if callback._target_.endswith("RunDirectoryCheck") else pytest.fail(callback)
    with pytest.raises(SystemExit) as e:
        check.on_run_start(cfg)
    assert str(e.value).startswith(f"error: cannot create the run directory {blocker}/out/runs/")
    assert "Not a directory (choose a writable paths.output_dir" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="multiruns"):
        check.on_multirun_start(cfg)
