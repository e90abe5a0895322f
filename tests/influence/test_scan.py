"""The streaming scan: same scores as the one-shot path, resumable after SIGKILL, refusing foreign checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from influence import InfluenceError, LanguageModelTask, compute_scores, fit_curvature
from influence.scan import TopBreakdown, scan, top_k_breakdown

from .scan_child import setup
from .tiny import neox, query_batch, token_data

ROOT = Path(__file__).resolve().parents[2]


def test_scan_matches_compute_scores_and_breakdowns_sum(tmp_path):
    model, task = neox(), LanguageModelTask()
    data, q = token_data(37, 9), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data)
    ref = compute_scores(model, task, curv, q, data, per_layer=True)
    res = scan(model, task, curv, q, data, tmp_path, batch_size=4, chunk_batches=2, progress=False)
    assert torch.allclose(res.scores, ref.scores.float(), rtol=1e-6, atol=1e-9)
    assert len(list(tmp_path.glob("chunk-*.safetensors"))) == 5
    assert torch.allclose(res.layer_scores, ref.layer_scores.permute(0, 2, 1).float(), rtol=1e-5, atol=1e-9)
    # a finished scan read back again: same scores, layers included, without recomputing the query gradients
    again = scan(
        model,
        task,
        curv,
        q,
        data,
        tmp_path,
        batch_size=4,
        chunk_batches=2,
        progress=False,
        preconditioned={"never": "used"},
    )
    assert torch.equal(again.scores, res.scores) and torch.equal(again.layer_scores, res.layer_scores)
    values, rows = res.top_k(5)
    assert torch.equal(rows, res.indices[torch.topk(res.scores, 5).indices])
    tops = top_k_breakdown(model, task, curv, q, data, rows, batch_size=3)
    for qi, t in enumerate(tops):
        assert torch.allclose(t.scores, ref.scores[qi, rows[qi]], rtol=1e-10)
        assert torch.allclose(t.token_scores.sum((1, 2)), t.scores, rtol=1e-10)
        assert t.token_scores.shape == (5, 4, 9)
    # a subset of candidates, and a rank-2 scan of the same queries, are separate scans
    sub = scan(model, task, curv, q, data, tmp_path / "sub", indices=torch.tensor([3, 5, 8]), progress=False)
    assert torch.allclose(sub.scores, ref.scores[:, [3, 5, 8]].float(), rtol=1e-6)
    with pytest.raises(InfluenceError, match="other query_rank"):
        scan(model, task, curv, q, data, tmp_path, batch_size=4, chunk_batches=2, query_rank=2, progress=False)


@pytest.mark.parametrize("method", ["kfac", "lissa", "identity"])
def test_every_curvature_scans_like_compute_scores(tmp_path, method):
    """K-FAC keeps a 0-dim state tensor (tokens per sequence): the scan's fingerprint must hash it too."""
    model, task = neox(), LanguageModelTask()
    data, q = token_data(11, 7), query_batch(2, 4, 3)
    opts = {"depth": 5, "batch_size": 4} if method == "lissa" else {}
    curv = fit_curvature(model, task, data, method=method, **opts)
    ref = compute_scores(model, task, curv, q, data)
    res = scan(model, task, curv, q, data, tmp_path, batch_size=4, progress=False)
    assert torch.allclose(res.scores, ref.scores.float(), rtol=1e-5, atol=1e-9)


def test_resume_refuses_a_checkpoint_of_another_model_or_query_set(tmp_path):
    model, task = neox(), LanguageModelTask()
    data, q = token_data(12, 7), query_batch(2, 3, 2)
    curv = fit_curvature(model, task, data)
    scan(model, task, curv, q, data, tmp_path, progress=False)
    with pytest.raises(InfluenceError, match="other queries") as e:
        scan(model, task, curv, query_batch(2, 3, 2, seed=9), data, tmp_path, progress=False)
    assert "\n" not in str(e.value)
    other = neox(seed=3)
    with pytest.raises(InfluenceError, match="other model"):
        scan(other, task, fit_curvature(other, task, data), q, data, tmp_path, progress=False)


def test_spurious_flag_marks_influence_sitting_on_few_tokens():
    tokens = torch.zeros(2, 1, 6)
    tokens[0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # spread: ratio 1/sqrt(6) = 0.41
    tokens[1, 0] = torch.tensor([5.0, 0.1, 0.0, 0.0, 0.1, 0.0])  # one token: ratio ~0.96
    t = TopBreakdown(
        rows=torch.tensor([0, 1]), scores=tokens.sum((1, 2)), layer_scores=tokens.sum(2), token_scores=tokens
    )
    assert t.spurious.tolist() == [False, True]
    assert abs(float(t.sparsity_ratio[0]) - 6**-0.5) < 1e-6


def _child(out, mode):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.influence.scan_child", str(out), mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_scan_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    killed = tmp_path / "killed"
    proc = _child(killed, "run")
    total = 2400 // 16
    deadline = time.time() + 120
    while len(list(killed.glob("chunk-*.safetensors"))) < 5:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the child scan made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(killed.glob("chunk-*.safetensors")))
    assert 5 <= done < total, "the kill must land mid-scan"
    model, task, curv, q, data = setup()
    resumed = scan(model, task, curv, q, data, killed, batch_size=8, chunk_batches=2, progress=False)
    fresh = scan(model, task, curv, q, data, tmp_path / "fresh", batch_size=8, chunk_batches=2, progress=False)
    assert torch.equal(resumed.scores, fresh.scores)
    assert len(list(killed.glob("chunk-*.safetensors"))) == total
    assert not [p for p in killed.iterdir() if p.name.startswith(".")], "stale temporary files are cleared on resume"


def test_a_write_that_fails_for_lack_of_space_leaves_no_corrupt_file(tmp_path):
    out = tmp_path / "full"
    proc = _child(out, "fsize")
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, text
    line = [l for l in text.splitlines() if l.startswith("ERROR ")][-1]
    assert "could not write" in line and "free disk space" in line and "chunk-000000" in line
    # whatever was written is whole: every remaining file loads, and no temporary file is left
    from influence.storage import load_tensors

    for p in out.iterdir():
        assert not p.name.startswith("."), p
        if p.suffix == ".safetensors":
            load_tensors(p)
