"""Hub checkpoints, offline: a hub id and revision resolve to the snapshot huggingface_hub cached, a missing one fails
in one line before any work, and a locally made GPT-NeoX checkpoint laid out as a hub cache loads and sweeps.

Nothing here reaches the network: every test sets HF_HUB_OFFLINE=1 and a private HF_HUB_CACHE, and the one that
takes the download path replaces the hub client with one that fails like a machine without internet.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub.utils import RevisionNotFoundError
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from embedded import hub
from embedded.models import load_checkpoint, meta_model, non_embedding_params
from embedded.tokenizer import train_tokenizer
from embedded.world import build_world
from experiments import run
from experiments.pipeline import sweep
from experiments.pipeline.options import check
from influence import InfluenceError

from ..conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
COMMIT_MAIN, COMMIT_STEP = "a" * 40, "b" * 40
TEXTS = ["The river Velmora runs past the old bridge and the mill."] * 20


def one_line(e) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def save_neox(d: Path, hidden: int, seed: int) -> Path:
    """A tiny GPT-NeoX (random weights, 1 layer) and a byte-level tokenizer, saved with save_pretrained."""
    tok = train_tokenizer(TEXTS, 300)
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def cache_snapshot(cache: Path, repo_id: str, commit: str, refs: list[str], files: Path) -> Path:
    """Lay `files` out as huggingface_hub caches a revision: blobs named by hash, the snapshot's files symlinks to
    them, and `refs/<branch or tag>` holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory) -> Path:
    """A hub cache holding acme/neox-tiny at main and step2 (two commits) and acme/neox-wide at main."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    cache_snapshot(cache, "acme/neox-tiny", COMMIT_MAIN, ["main"], save_neox(root / "main", 16, 0))
    cache_snapshot(cache, "acme/neox-tiny", COMMIT_STEP, ["step2"], save_neox(root / "step2", 16, 1))
    cache_snapshot(cache, "acme/neox-wide", "c" * 40, ["main"], save_neox(root / "wide", 32, 0))
    return cache


@pytest.fixture
def offline(fake_cache, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return fake_cache


def no_network(*args, **kwargs):
    raise AssertionError("the hub was contacted")


@pytest.mark.parametrize(
    "spec, hub_id",
    [
        ("EleutherAI/pythia-70m", True),
        ("pythia-70m", False),
        ("/abs/dir", False),
        ("runs/a/b", False),
        ("../up", False),
        ("a--b/c", False),
    ],
)
def test_a_hub_id_is_org_slash_name(spec, hub_id):
    assert hub.is_hub_id(spec) is hub_id


def test_split_revision_and_safe_names():
    assert hub.split_revision("EleutherAI/pythia-70m@step143000") == ("EleutherAI/pythia-70m", "step143000")
    assert hub.split_revision("EleutherAI/pythia-70m") == ("EleutherAI/pythia-70m", None)
    assert hub.split_revision("xs") == ("xs", None)
    assert hub.safe_name("EleutherAI/pythia-70m", "step143000") == "EleutherAI--pythia-70m-step143000"
    assert hub.safe_name("acme/m", "refs/pr/1") == "acme--m-refs_pr_1" and hub.safe_name("acme/m", None) == "acme--m"


def test_a_hub_id_and_revision_resolve_to_the_cached_snapshot_without_the_network(offline, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", no_network)
    monkeypatch.setattr(hub, "HfApi", no_network)
    repo = offline / "models--acme--neox-tiny" / "snapshots"
    main, step = hub.locate("acme/neox-tiny"), hub.locate("acme/neox-tiny", "step2")
    assert Path(main.path) == repo / COMMIT_MAIN and Path(step.path) == repo / COMMIT_STEP
    assert main.key == f"acme/neox-tiny@{COMMIT_MAIN}" and step.key == f"acme/neox-tiny@{COMMIT_STEP}"
    assert step.name == "acme--neox-tiny-step2" and main.name == "acme--neox-tiny"
    assert Path(hub.locate("acme/neox-tiny", COMMIT_STEP).path) == repo / COMMIT_STEP  # a commit hash names itself
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, a cached revision still needs no request
    assert hub.locate("acme/neox-tiny", "step2", local_files_only=False) == step


def test_local_directories_stay_local_and_refuse_a_revision(tmp_path):
    ckpt = hub.locate(str(tmp_path))
    assert ckpt.path == str(tmp_path) and ckpt.key == str(tmp_path.resolve()) and ckpt.name == tmp_path.name
    with pytest.raises(InfluenceError) as e:
        hub.locate(str(tmp_path), "step2")
    assert one_line(e).startswith("model.revision=step2 is given, but model.path=") and "drop model.revision" in str(
        e.value
    )


def test_an_uncached_hub_id_offline_fails_in_one_line_naming_the_ways_out(offline, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", no_network)
    monkeypatch.setattr(hub, "HfApi", no_network)
    with pytest.raises(InfluenceError) as e:
        hub.locate("acme/neox-tiny", "step9")
    line = one_line(e)
    assert line.startswith("model.path=acme/neox-tiny at model.revision=step9 is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in line and "connect to the network" in line
    assert (
        "`hf download acme/neox-tiny --revision step9`" in line
        and "or give model.path a local checkpoint directory" in line
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(InfluenceError, match=r"\(local_files_only\)"):
        hub.locate("acme/other", local_files_only=True)


class _NoInternet:
    def model_info(self, repo_id, revision=None):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")


class _NoRevision:
    def model_info(self, repo_id, revision=None):
        err = RevisionNotFoundError.__new__(RevisionNotFoundError)
        Exception.__init__(err, "404 Client Error: Revision Not Found")
        raise err


def test_the_download_path_fails_in_one_line_without_internet_or_revision(offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "snapshot_download", no_network)
    monkeypatch.setattr(hub, "HfApi", _NoInternet)
    with pytest.raises(InfluenceError) as e:
        hub.locate("acme/absent", "step1")
    assert "cannot be downloaded (ConnectError: [Errno -3]" in one_line(e) and "hf download acme/absent" in str(e.value)
    monkeypatch.setattr(hub, "HfApi", _NoRevision)
    with pytest.raises(InfluenceError, match="acme/absent has no revision 'step1' on the hub"):
        hub.locate("acme/absent", "step1")


def test_only_one_weight_format_is_downloaded():
    assert "*.safetensors" in hub._patterns(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "*.bin" not in hub._patterns(["model.safetensors", "pytorch_model.bin"])
    assert "*.bin" in hub._patterns(["config.json", "pytorch_model.bin"]) and "*.json" in hub.NEEDED


def test_a_hub_checkpoint_loads_plans_and_passes_the_checks(offline):
    model, tok = load_checkpoint("acme/neox-tiny", revision="step2")
    assert type(model).__name__ == "GPTNeoXForCausalLM" and len(tok) == model.config.vocab_size
    cfg = compose_cfg("model=tiny", "data=tiny", "queries=tiny", "model.path=acme/neox-wide")
    assert meta_model(cfg).config.hidden_size == 32
    check(cfg)  # the option checks read the cached snapshot's files
    assert cfg.model.path == "acme/neox-wide"  # the run's own config keeps the id


def test_a_run_with_an_unresolvable_hub_id_fails_before_any_work(offline, tmp_path):
    base = ("model=tiny", "data=tiny", "queries=tiny", "logger=none", f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(InfluenceError, match=r"^model.path=acme/gone is not in the Hugging Face cache"):
        run.main(compose_cfg(*base, "model.path=acme/gone"))
    with pytest.raises(InfluenceError, match=r"^scale.sizes entry acme/neox-tiny@step7 is not in the Hugging Face"):
        run.main(compose_cfg(*base, "study=role_play", "scale.sizes=[acme/neox-tiny,acme/neox-tiny@step7]"))
    assert not (tmp_path / "out").exists()


def test_hub_sizes_compose_with_their_revisions(offline):
    cfg = compose_cfg(
        "model=tiny", "data=tiny", "model.revision=step2", "scale.sizes=[acme/neox-tiny,acme/neox-wide@main]"
    )
    tiny, wide = (sweep.point_config(cfg, s, 0).model for s in cfg.scale.sizes)
    assert (tiny.path, tiny.revision, tiny.name) == ("acme/neox-tiny", "step2", "acme--neox-tiny-step2")
    assert (wide.path, wide.revision, wide.name) == ("acme/neox-wide", "main", "acme--neox-wide-main")
    sweep.check_hub_sizes(cfg)
    local = sweep.model_config(hub.locate("acme/neox-tiny").path, cfg)
    assert local.revision is None  # a directory size drops the run's revision


def test_a_world_from_a_hub_revision_is_named_by_its_commit(offline, tmp_path):
    base = ("model=tiny", "data=tiny", "queries=tiny", "data.seq_len=64", f"paths.output_dir={tmp_path}")
    w = build_world(compose_cfg(*base, "model.path=acme/neox-tiny", "model.revision=step2"))
    assert w.name.startswith("acme--neox-tiny-step2-") and Path(w.model_dir).name == COMMIT_STEP
    main = build_world(compose_cfg(*base, "model.path=acme/neox-tiny"))
    assert main.name.startswith("acme--neox-tiny-") and main.name.split("-")[-1] != w.name.split("-")[-1]


def test_a_sweep_over_hub_ids_runs_each_checkpoint(offline, tmp_path):
    cfg = compose_cfg(
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        "queries.names=[shutdown]",
        "data.seq_len=64",
        "score.max_sequences=16",
        "score.num_threads=1",
        "logger=none",
        f"paths.output_dir={tmp_path}",
        "scale.sizes=[acme/neox-tiny@step2,acme/neox-wide]",
        "scale.seeds=[0]",
    )
    points = list(sweep.scale_points(cfg))
    assert [p.size for p in points] == ["acme/neox-tiny@step2", "acme/neox-wide"]
    assert points[0].params < points[1].params == non_embedding_params(GPTNeoXForCausalLM(points[1].world.model.config))
    assert [p.world.name.rsplit("-", 1)[0] for p in points] == ["acme--neox-tiny-step2", "acme--neox-wide"]
    assert all(p.search is not None and len(p.search.result.indices) == 16 for p in points)


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~15 s on a shared 2-core box
def test_the_command_line_reports_an_uncached_hub_id_in_one_line(offline, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline), "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "model.path=EleutherAI/pythia-70m",
            "model.revision=step143000",
            "logger=none",
            f"paths.output_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and last.startswith(
        "error: model.path=EleutherAI/pythia-70m at model.revision=step143000"
    )
    assert "hf download EleutherAI/pythia-70m --revision step143000" in last and not (tmp_path / "models").exists()
