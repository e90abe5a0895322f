"""W&B online against a server that does not answer: one line says what it waits for, the wait is bounded, the
run keeps its results and the process still exits promptly. None of these tests needs the network."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments import tracking
from experiments.tracking import WandbTracker, log_safely
from influence import InfluenceError

ROOT = Path(__file__).resolve().parents[2]
CFG = OmegaConf.create({"study": "concentration", "model": {"name": "tiny"}, "seed": 0})


@pytest.fixture
def hanging_init(monkeypatch):
    """wandb.init that waits (as it does for an unreachable server) until the test ends; no stuck run left over."""
    import wandb

    release, calls = threading.Event(), []

    def init(**kwargs):
        calls.append(kwargs)
        release.wait(60)
        raise ConnectionError("released")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(tracking, "_stuck", None)
    yield calls
    release.set()
    if tracking._stuck is not None:
        tracking._stuck.join(5)


def test_online_with_no_answer_says_what_it_waits_for_and_gives_up_after_timeout_s(tmp_path, caplog, hanging_init):
    tracker = WandbTracker(mode="online", timeout_s=1)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="experiments.tracking"):
        with pytest.warns(RuntimeWarning, match=r"wandb logging failed \(TimeoutError: no answer .* within 1 s\)"):
            assert log_safely(tracker, tmp_path, CFG, {}, [], {"x": 1.0}) is False
    assert time.monotonic() - start < 1 + 3
    said = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("W&B: connecting to ") and f"(online mode, up to 1 s; the results are already in {tmp_path})" in m
        for m in said
    ), said
    assert any("the run was not synced" in m and "logger.mode=offline" in m for m in said), said
    settings = hanging_init[0]["settings"]  # wandb's own timeouts are the bound too
    assert settings.init_timeout == 1 and settings.finish_timeout == 1 and settings.finish_timeout_raises

    start = time.monotonic()  # the first connection still hangs: a second run does not wait again
    with pytest.warns(RuntimeWarning, match="earlier W&B connection .* still waiting"):
        assert log_safely(tracker, tmp_path, CFG, {}, [], {}) is False
    assert time.monotonic() - start < 1 and len(hanging_init) == 1


def test_online_success_logs_in_time_and_a_failure_says_how_to_sync(tmp_path, caplog, monkeypatch):
    import wandb

    done = []

    class Run:
        summary = {}

        def log(self, data):
            done.append(sorted(data))

        def finish(self):
            done.append("finish")

    monkeypatch.setattr(tracking, "_stuck", None)
    monkeypatch.setattr(wandb, "init", lambda **kw: Run())
    with caplog.at_level(logging.INFO, logger="experiments.tracking"):
        assert log_safely(WandbTracker(mode="online", timeout_s=5), tmp_path, CFG, {}, [], {"x": 1.0})
    assert done == ["finish"] and Run.summary == {"x": 1.0}
    assert any(r.getMessage().startswith("W&B: synced to ") for r in caplog.records)

    local = tmp_path / "wandb" / "run-20260101_000000-abc"  # what wandb wrote before it failed
    local.mkdir(parents=True)
    (local / "run-abc.wandb").write_bytes(b"")

    def refused(**kw):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(wandb, "init", refused)
    with pytest.warns(RuntimeWarning, match=r"ConnectionError: connection refused\); the results are kept"):
        assert not log_safely(WandbTracker(mode="online", timeout_s=5), tmp_path, CFG, {}, [], {})
    assert any(f"sync it later with `wandb sync {local}`" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [0, -1, "soon", None])
def test_a_timeout_that_is_not_a_positive_number_is_refused_at_construction(bad):
    with pytest.raises(
        InfluenceError, match=r"^logger\.timeout_s=.*: give the most seconds to wait for W&B, a number > 0$"
    ):
        WandbTracker(mode="online", timeout_s=bad)


def test_offline_is_not_bounded_by_the_timeout_and_writes_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    assert log_safely(WandbTracker(mode="offline", timeout_s=0.001), tmp_path, CFG, {}, [], {"x": 1.0})
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


SCRIPT = """
import logging, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from experiments.tracking import WandbTracker, log_safely
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
cfg = OmegaConf.create({"study": "concentration", "model": {"name": "tiny"}, "seed": 0})
start = time.monotonic()
ok = log_safely(WandbTracker(mode="online", timeout_s=2), Path(sys.argv[1]), cfg, {}, [], {"x": 1.0})
print(f"returned {ok} after {time.monotonic() - start:.1f} s at {time.time()}", flush=True)
"""


def test_real_wandb_against_a_server_that_never_answers_returns_in_time_and_lets_the_process_exit(tmp_path):
    """The real wandb and its service process, against a local socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_BASE_URL": url,
        "WANDB_API_KEY": "x" * 40,  # a key that is never checked: the server does not answer
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
        )
        exited = time.time()
    finally:
        server.close()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert f"INFO W&B: connecting to {url} (online mode, up to 2 s; the results are already in {tmp_path})" in text
    assert "the run was not synced" in text and "wandb logging failed (TimeoutError" in text
    returned = next(line for line in out.stdout.splitlines() if line.startswith("returned False after"))
    seconds, at = float(returned.split()[3]), float(returned.split()[-1])
    assert seconds < 2 + 3, text
    assert exited - at < 10, f"the process took {exited - at:.1f} s to exit after log_run returned"
