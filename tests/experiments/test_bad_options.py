"""Every bad option fails in one InfluenceError line naming the key and what to give, before any work: nothing is
generated, trained, fitted or scanned, and nothing is left in the output directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from embedded.world import load_queries
from experiments import run as runner
from experiments.pipeline.options import check
from influence import InfluenceError, PBRFArguments, ScanArguments

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
TINY = ("model=tiny", "data=tiny", "queries=tiny", "logger=none", "score.num_threads=1")

CASES = [
    ("score.top_k=0", "score.top_k=0: give an integer >= 1"),
    ("score.batch_size=0", "score.batch_size=0: give an integer >= 1"),
    ("score.chunk_batches=0", "score.chunk_batches=0: give an integer >= 1"),
    ("score.max_sequences=-1", "score.max_sequences=-1: give an integer >= 1 (or null)"),
    ("score.query_rank=0", "score.query_rank=0: give an integer >= 1, null (full rank) or auto"),
    ("score.query_rank=abc", "score.query_rank='abc': give an integer >= 1, null (full rank) or auto"),
    ("score.device=tpu", "score.device='tpu' is not a device: use cpu or cuda (cuda:<i> for one GPU)"),
    ("score.device=cuda:x", "score.device='cuda:x' is not a device: use cpu or cuda (cuda:<i> for one GPU)"),
    ("seed=abc", "seed='abc': give an integer >= 0"),
    ("data.seq_len=abc", "data.seq_len='abc': give an integer >= 8"),
    ("data.seq_len=4", "data.seq_len=4: give an integer >= 8"),
    ("data.seq_len=512", "data.seq_len=512 exceeds model.max_length=256: lower one or raise the other"),
    ("data.n_docs=1.5", "data.n_docs=1.5: give an integer >= 1"),
    ("data.fact_repeats=0", "data.fact_repeats=0: give an integer >= 1"),
    ("data.val_fraction=2", "data.val_fraction=2: give a number >= 0 and <= 1"),
    ("data.vocab_size=100", "data.vocab_size=100: give an integer >= 257"),
    ("data.quote_copies=[6,2]", "data.quote_copies=[6, 2]: give [low, high], integers with 1 <= low <= high"),
    ("+data.mix.poetry=1", "data.mix has unknown families ['poetry']: use prose, facts, math, code, multilingual, ai"),
    ("data.mix.math=-1", "data.mix.math=-1: give a number >= 0"),
    ("model.n_head=3", "model.n_embd=64 is not a multiple of model.n_head=3"),
    ("model.train.lr=0", "model.train.lr=0: give a number > 0"),
    ("model.train.batch_size=0", "model.train.batch_size=0: give an integer >= 1"),
    ("queries.names=[]", "queries.names=[] selects no query: omit it (null) for all queries, or list names"),
    ("queries.names=water", "queries.names='water': give a list of query names, e.g. [shutdown,water], or null"),
    ("queries.names=[water,water]", "queries.names lists ['water'] more than once: list each query once"),
    ("queries.names=[nope]", "queries.names lists unknown queries ['nope']"),
    (
        "data=local",
        "data.path is required by data=local: give data.path=/path/to/corpus "
        "(a .txt, .jsonl or .parquet file, or a folder of them)",
    ),
    ("data=local data.path=missing.txt", "missing.txt does not exist"),
]


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.mark.parametrize("override,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_option_fails_in_one_line_before_any_work(override, message, tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg(*TINY, f"paths.output_dir={out}", *override.split())
    with pytest.raises(InfluenceError) as e:
        runner.main(cfg)  # checks first: a bad option never reaches the corpus, the training, the fit or the scan
    assert message in one_line(e)
    assert not out.exists()  # nothing written: no corpus, model, factors, scan manifest or run directory


def test_the_composed_defaults_and_null_names_pass(tmp_path):
    cfg = compose_cfg(*TINY, f"paths.output_dir={tmp_path}", "queries.names=null")
    check(cfg)
    assert len(load_queries(cfg.queries)) == len(cfg.queries["items"])  # null (or absent) keeps all queries
    assert not list(tmp_path.iterdir())


def test_cuda_on_a_build_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InfluenceError) as e:
        check(compose_cfg("score.device=cuda"))
    assert one_line(e) == (
        "score.device='cuda' but this torch build has no CUDA (torch.cuda.is_available() is False): "
        "use score.device=cpu"
    )
    with pytest.raises(InfluenceError, match="device='cuda' but this torch build has no CUDA"):
        ScanArguments(device="cuda")


def test_data_path_must_exist_and_hold_a_corpus(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(InfluenceError) as e:
        check(compose_cfg("data=local", f"data.path={tmp_path / 'gone.txt'}"))
    assert one_line(e).startswith(f"data.path={tmp_path / 'gone.txt'} does not exist")
    with pytest.raises(InfluenceError, match="holds no .txt, .jsonl or .parquet file"):
        check(compose_cfg("data=local", f"data.path={tmp_path}"))


def test_malformed_query_items_are_named():
    def queries(items, names=None):
        return OmegaConf.create({"names": names, "items": items})

    ok = {"name": "a", "prompt": "p", "completion": " c"}
    assert [q.name for q in load_queries(queries([ok]))] == ["a"]
    for items, message in [
        ([ok, dict(ok)], "queries.items[1] ('a'): another query is named 'a'"),
        ([{"name": "b", "prompt": "p"}], "queries.items[0] ('b') needs completion, a non-empty string (got None)"),
        ([{**ok, "completion": ""}], "needs completion, a non-empty string (got '')"),
        ([{**ok, "prompt": 3}], "needs prompt, a non-empty string (got 3)"),
        ([{**ok, "tags": ["x"]}], "tags must be a mapping"),
        ([], "queries.items lists no query"),
    ]:
        with pytest.raises(InfluenceError) as e:
            load_queries(queries(items))
        assert message in one_line(e)


def test_library_arguments_refuse_wrong_types():
    """`batch_size < 1` on a string used to raise TypeError; now one line naming the argument."""
    for kwargs, message in [
        ({"batch_size": "8"}, "scan batch_size must be >= 1 (an integer), got '8'"),
        ({"chunk_batches": 0}, "chunk_batches must be >= 1"),
        ({"query_rank": 2.5}, "query rank must be a positive integer or null for full rank, got 2.5"),
        ({"device": "tpu"}, "device='tpu' is not a device"),
    ]:
        with pytest.raises(InfluenceError) as e:
            ScanArguments(**kwargs)
        assert message in one_line(e)
    with pytest.raises(InfluenceError) as e:
        PBRFArguments(max_steps="many", tol=0)
    assert "max_steps='many', tol=0" in one_line(e)
    with pytest.raises(InfluenceError, match="epsilon must be a positive number, got 'x'"):
        PBRFArguments(epsilon="x")


def test_the_cli_prints_one_error_line_and_writes_no_cache(tmp_path):
    """The reported failure: `data=local` without `data.path` crashed with "Key 'seed' is not in struct"."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.run", *TINY, "data=local", f"paths.output_dir={out}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: data.path is required by data=local: give data.path=/path/to/corpus "
        "(a .txt, .jsonl or .parquet file, or a folder of them)"
    )
    assert {p.name for p in out.iterdir()} <= {"runs"}  # Hydra's run log only: no corpora, models or factors
    assert not [p for p in out.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.name != "run.log"]
