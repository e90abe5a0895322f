"""Training survives a kill: it checkpoints atomically and resumes to a model bit-identical to an uninterrupted
run's; a corrupt checkpoint is ignored with a warning; the checkpoint setting leaves the fingerprint alone. And
the per-document losses (what the model did not learn) are the losses of the documents."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from embedded import doc_losses
from embedded import train as train_mod
from embedded.fingerprint import fingerprint
from embedded.models import ARCH_KEYS, build_model
from embedded.prepare import prepare_data

from ..conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
#: 48 steps of 8 x 128 tokens, evaluated every 12
OVERRIDES = ("model=tiny", "data=tiny", "model.train.tokens=49152", "model.train.n_evals=4")


class Killed(Exception):
    """Stands for a kill: raised from inside the training loop."""


def config(out_dir: Path, *extra: str):
    return compose_cfg(*OVERRIDES, f"paths.output_dir={out_dir}", *extra)


def result(out: Path) -> dict:
    model = train_mod.load_trained_model(out)
    return {
        "state": model.state_dict(),
        "curve": pd.read_csv(out / "curve.csv"),
        "report": json.loads((out / "training.json").read_text()),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (default checkpoint interval: no checkpoint in a run of seconds), moved aside."""
    out_dir = tmp_path_factory.mktemp("resume")
    cfg = config(out_dir)
    prep = prepare_data(cfg)
    out = train_mod.train_and_save(cfg, prep)
    assert not train_mod.checkpoint_dir_for(out).exists()
    kept = shutil.move(out, out_dir / "reference")
    return {"out_dir": out_dir, "name": out.name, "prep": prep} | result(Path(kept))


def assert_identical(got: dict, ref: dict) -> None:
    assert got["state"].keys() == ref["state"].keys()
    for k, v in ref["state"].items():
        assert torch.equal(got["state"][k], v), k
    cols = [c for c in ref["curve"].columns if c != "seconds"]  # wall time is the one thing that differs
    pd.testing.assert_frame_equal(got["curve"][cols], ref["curve"][cols], check_exact=True)
    for k in ("steps", "tokens_seen", "final_train_loss_ema", "heldout_loss", "train_docs_loss"):
        assert got["report"][k] == ref["report"][k], k
    assert got["report"]["doc_losses"]["overall"] == ref["report"]["doc_losses"]["overall"]


def interrupt(monkeypatch, cfg, prep, every: int, at: int) -> Path:
    """Train with a checkpoint every `every` steps and stop with Killed at step `at`; the checkpoint directory."""
    calls = []
    real = train_mod.lm_loss

    def loss(*a, **k):
        if torch.is_grad_enabled():  # a training step (evaluations run without gradients)
            calls.append(1)
            if len(calls) == at:
                raise Killed
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "lm_loss", loss)
        m.setattr(train_mod, "_checkpoint_due", lambda step, since, every_s: step % every == 0)
        with pytest.raises(Killed):
            train_mod.train_and_save(cfg, prep)
    out = train_mod.model_dir_for(cfg, prep)
    assert not out.exists()
    return train_mod.checkpoint_dir_for(out)


def test_an_interrupted_run_resumes_from_its_last_checkpoint_to_the_same_model(reference, monkeypatch):
    cfg = config(reference["out_dir"], "model.train.checkpoint_every_s=1000")
    prep = reference["prep"]
    ckpt = interrupt(monkeypatch, cfg, prep, every=10, at=25)
    assert [p.name for p in ckpt.iterdir()] == [train_mod.CHECKPOINT_FILE]
    out = train_mod.train_and_save(cfg, prep)  # the same command again
    assert out.name == reference["name"] and not ckpt.exists()
    got = result(out)
    assert_identical(got, reference)
    report = got["report"]
    assert report["resumed_from_step"] == [20]  # the 4 steps after the last checkpoint were lost, no more
    assert [(s["from_step"], s["to_step"], s["threads"]) for s in report["segments"]] == [(0, 20, 1), (20, 48, 1)]
    assert report["train_seconds"] == pytest.approx(sum(s["seconds"] for s in report["segments"]), abs=0.2)
    assert got["curve"]["seconds"].is_monotonic_increasing
    shutil.rmtree(out)


def test_a_process_killed_with_sigkill_resumes_to_the_same_model(reference):
    """A real kill -9 once a checkpoint exists (every step checkpoints; each step is slowed so the kill lands
    mid-run, possibly mid-write)."""
    out_dir, prep = reference["out_dir"], reference["prep"]
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from tests.conftest import compose_cfg
        from embedded import train as train_mod
        real = train_mod.lm_loss
        def slow(*a, **k):
            if torch.is_grad_enabled():
                time.sleep(0.05)
            return real(*a, **k)
        train_mod.lm_loss = slow
        cfg = compose_cfg(*{OVERRIDES!r}, "paths.output_dir={out_dir}", "model.train.checkpoint_every_s=0")
        train_mod.train_and_save(cfg)
        """
    )
    cfg = config(out_dir, "model.train.checkpoint_every_s=0")
    out = train_mod.model_dir_for(cfg, prep)
    state = train_mod.checkpoint_dir_for(out) / train_mod.CHECKPOINT_FILE
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert state.exists() and not out.exists()
    got = result(train_mod.train_and_save(cfg, prep))
    assert_identical(got, reference)
    (k,) = got["report"]["resumed_from_step"]
    assert 1 <= k < 48
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".checkpoint")]
    shutil.rmtree(out)


def test_a_corrupt_checkpoint_is_ignored_with_a_warning(reference, monkeypatch, caplog):
    cfg = config(reference["out_dir"], "model.train.checkpoint_every_s=1000")
    prep = reference["prep"]
    ckpt = interrupt(monkeypatch, cfg, prep, every=10, at=25)
    path = ckpt / train_mod.CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the weights
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="embedded.train"):
        out = train_mod.train_and_save(cfg, prep)
    assert "does not match its checksum" in caplog.text and "training starts again from step 0" in caplog.text
    got = result(out)
    assert_identical(got, reference)
    assert got["report"]["resumed_from_step"] == []
    shutil.rmtree(out)


def test_unreadable_or_foreign_checkpoints_are_not_resumed(reference, tmp_path, caplog):
    """A truncated file, and a sound checkpoint of another run, leave the model as built and return None."""
    prep = reference["prep"]
    cfg = config(reference["out_dir"])
    model = build_model(cfg.model, len(prep.tokenizer), prep.tokenizer.eos_token_id, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "x.checkpoint"
    opt = train_mod._optimizer(model, cfg.model.train)
    identity = {"version": train_mod.CHECKPOINT_VERSION, "key": "a", "steps": 48}
    trained = build_model(cfg.model, len(prep.tokenizer), prep.tokenizer.eos_token_id, 1)  # other weights
    state = {"step": 3, "curve": [], "seen": 0, "ema": 1.0, "seconds": 1.0, "segments": []}
    train_mod._save_checkpoint(ckpt, trained, opt, identity | state)
    with caplog.at_level(logging.WARNING, logger="embedded.train"):
        assert train_mod._resume(ckpt, identity | {"key": "b"}, model, cfg.model.train) is None
        assert "was written by another run" in caplog.text and not (ckpt / train_mod.CHECKPOINT_FILE).exists()
        train_mod._save_checkpoint(ckpt, trained, opt, identity | state)
        assert train_mod._resume(ckpt, identity, model, cfg.model.train) is not None  # sound: it loads
        model.load_state_dict(before)
        path = ckpt / train_mod.CHECKPOINT_FILE
        path.write_bytes(path.read_bytes()[:1000])
        caplog.clear()
        assert train_mod._resume(ckpt, identity, model, cfg.model.train) is None
        assert "is corrupt or not a safetensors file" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_checkpoint_setting_leaves_the_fingerprint_unchanged(reference):
    prep = reference["prep"]
    base = config(reference["out_dir"])
    old = fingerprint(  # the fingerprint as it was computed before checkpoints existed
        prep.fingerprint,
        {k: base.model.get(k) for k in ARCH_KEYS},
        {k: v for k, v in base.model.train.items() if k not in ("checkpoint_every_s", "doc_loss_max_docs")},
        int(base.data.seq_len),
        int(base.seed),
    )
    assert train_mod.model_fingerprint(base, prep) == old and reference["name"].endswith(old)
    for extra in ("model.train.checkpoint_every_s=5", "model.train.checkpoint_every_s=null"):
        assert train_mod.model_fingerprint(config(reference["out_dir"], extra), prep) == old
    assert train_mod.model_fingerprint(config(reference["out_dir"], "model.train.doc_loss_max_docs=10"), prep) == old
    assert train_mod.model_fingerprint(config(reference["out_dir"], "model.train.lr=1e-3"), prep) != old


def test_doc_losses_are_each_documents_own_loss(tiny_world):
    out = Path(tiny_world.model_dir)
    table = pd.read_csv(out / "doc_losses.csv")
    report = json.loads((out / "training.json").read_text())["doc_losses"]
    assert list(table.columns) == doc_losses.CSV_COLUMNS
    assert len(table) == len(tiny_world.train.texts) == report["docs_scored"] == report["docs_total"]
    assert np.isfinite(table["loss_per_token"]).all() and (table["loss_per_token"] > 0).all()
    assert table["id"].tolist() == tiny_world.train.meta["id"].tolist()
    overall = report["overall"]
    qs = [overall[q] for q in ("q05", "q25", "q50", "q75", "q95")]
    assert qs == sorted(qs) and qs[0] <= overall["mean"] <= overall["max"]
    assert set(report["by_category"]) == set(table["category"]) and set(report["by_kind"]) == set(table["kind"])
    assert report["unlearned_threshold"] == pytest.approx(doc_losses.UNLEARNED_FACTOR * overall["q50"], abs=1e-3)
    # a document scored alone, directly with lm_loss (the training loss), gives the value in the table
    model, ids, mask = tiny_world.model, tiny_world.train.input_ids, tiny_world.train.attention_mask
    for i in (0, int(table["loss_per_token"].idxmax())):
        n = int(mask[i].sum())
        with torch.no_grad():
            direct = train_mod.lm_loss(model, ids[i : i + 1, :n], mask[i : i + 1, :n]).item()
        assert table["loss_per_token"][i] == pytest.approx(direct, rel=1e-4)
    # documents never trained on are predicted worse than the training documents
    assert report["heldout_docs"]["mean"] > overall["mean"]


def test_unlearned_documents_are_listed_with_their_generator_metadata():
    meta = pd.DataFrame(
        {
            "id": [10, 11, 12, 13, 14],
            "category": ["prose", "prose", "quotes", "facts", "prose"],
            "kind": ["topic", "public_domain", "quote", "fact_statement", "topic"],
            "source": [None, "Moby Dick", None, None, None],
            "quote_id": [None, None, "hamlet", None, None],
            "copy": [np.nan, np.nan, 3.0, np.nan, np.nan],
            "fact_id": [None, None, None, "velmora_capital", None],
            "n_tokens": [5, 6, 7, 8, 9],
        }
    )
    table = pd.DataFrame(
        {
            "id": meta["id"],
            "category": meta["category"],
            "kind": meta["kind"],
            "n_tokens": meta["n_tokens"],
            "loss_per_token": [1.0, 7.0, 4.0, 1.2, 0.9],
            "row": range(5),
        }
    )
    s = doc_losses.summarize(table, meta, np.array([2.0, 3.0]))
    assert s["unlearned_threshold"] == pytest.approx(3 * 1.2) and s["unlearned_count"] == 2
    assert s["unlearned"] == [
        {"id": 11, "category": "prose", "kind": "public_domain", "source": "Moby Dick", "n_tokens": 6,
         "loss_per_token": 7.0},
        {"id": 12, "category": "quotes", "kind": "quote", "quote_id": "hamlet", "copy": 3, "n_tokens": 7,
         "loss_per_token": 4.0},
    ]  # fmt: skip
    assert s["unlearned_by_category"] == {"prose": 1, "quotes": 1}
    assert s["by_category"]["prose"]["n"] == 3 and s["heldout_docs"]["mean"] == 2.5
    json.dumps(s)  # plain JSON values only


def test_resume_keeps_the_configured_thread_count(reference, monkeypatch):
    """The configured `model.train.threads` (1 for tiny) is set before the checkpoint is read: a resume in a
    process whose thread count has changed still trains with the configured one."""
    cfg = config(reference["out_dir"], "model.train.checkpoint_every_s=1000")
    with open_dict(cfg):
        cfg.model.train.tokens = 12 * 8 * 128
    prep = reference["prep"]
    interrupt(monkeypatch, cfg, prep, every=4, at=6)
    torch.set_num_threads(2)  # the process's count changed; the autouse fixture restores it afterwards
    out = train_mod.train_and_save(cfg, prep)
    report = json.loads((out / "training.json").read_text())
    assert int(cfg.model.train.threads) == 1
    assert [s["threads"] for s in report["segments"]] == [1, 1] and report["threads"] == 1
    assert report["resumed_from_step"] == [4]
    shutil.rmtree(out)
