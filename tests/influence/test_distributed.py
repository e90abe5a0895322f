"""Two gloo processes give the factors, scores and top-k breakdowns of one process."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from influence import InfluenceError, LanguageModelTask, fit_curvature
from influence.distributed import init_from_env, is_main, shard
from influence.scan import scan, top_k_breakdown

from .tiny import gpt2, query_batch, token_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: the fits compared: EK-FAC with the captures kept between its passes, and with a second pass
FITS = {"ekfac": {"method": "ekfac"}, "ekfac-2pass": {"method": "ekfac", "gradient_cache_mb": 0.0}}


def _search(out: Path, method: str = "ekfac", **options):
    """Fit, scan (several chunks) and break down the top 4 of a tiny GPT-2: what every process computes."""
    torch.set_num_threads(1)
    model, task = gpt2(vocab=32, hidden=8, layers=2), LanguageModelTask()
    data, q = token_data(30, 10), query_batch(3, 4, 3)
    curv = fit_curvature(model, task, data, method=method, cache_dir=out / "factors", batch_size=4, **options)
    res = scan(model, task, curv, q, data, out / "scan", batch_size=4, chunk_batches=1, progress=False)
    _, rows = res.top_k(4)
    tops = top_k_breakdown(model, task, curv, q, data, rows, batch_size=3)
    return {
        "state": curv.state(),
        "damping": curv.damping,
        "scores": res.scores,
        "layer_scores": res.layer_scores,
        "rows": rows,
        "tops": [(t.scores, t.layer_scores, t.token_scores) for t in tops],
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    assert init_from_env()
    try:
        for name, options in FITS.items():
            torch.save(_search(Path(out) / name / "shared", **options), Path(out) / name / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _close(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _close(a[k], b[k], f"{what}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        if a.dtype.is_floating_point:
            # summation order differs between 1 and 2 ranks: eigenvectors of ~1e-9 eigenvalues move by ~1e-9
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max())), what
        else:
            assert torch.equal(a, b), what
    else:
        assert a == pytest.approx(b, rel=1e-5), what


def test_two_gloo_processes_match_one(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for name, options in FITS.items():
        out = tmp_path / name
        one = _search(out / "one", **options)
        ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
        _close(ranks[0], ranks[1], f"{name}: rank 0 vs rank 1")  # every rank ends with the same factors and results
        _close(ranks[0], one, f"{name}: 2 ranks vs 1")
        assert torch.equal(ranks[0]["rows"], one["rows"]) and torch.equal(ranks[1]["rows"], one["rows"])
        assert len(list((out / "shared" / "factors").glob("*.safetensors"))) == 1  # written once, by rank 0
        assert not list((out / "shared").rglob("*.tmp"))
        # the file rank 0 wrote is in the single-process cache format: one process reuses it as its own fit
        _close(_search(out / "shared", **options), one, f"{name}: reloaded vs 1")


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not init_from_env() and is_main()
    assert torch.equal(shard(torch.arange(5)), torch.arange(5))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InfluenceError, match="MASTER_ADDR.* not set: launch with torchrun"):
        init_from_env()
