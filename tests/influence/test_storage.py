"""Every cached tensor file is verified on load: flipped bytes are recomputed (factors, scan chunks) or named,
never read as if they were scores; temporaries of live writers survive a second process's clean-up."""

import json
import logging
import os
import socket
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from influence import InfluenceError, LanguageModelTask, fit_curvature
from influence.scan import scan
from influence.storage import (
    CorruptFileError,
    atomic_dir,
    check_dir,
    load_tensors,
    remove_stale_temporaries,
    save_tensors,
    verify_checksums,
)

from .tiny import neox, query_batch, token_data


def flip_byte(path, from_end=9):
    """Corrupt one byte of a file's data region (safetensors keep the header at the start)."""
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_tensor_file_is_caught_and_named(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.arange(20, dtype=torch.float32)}, {"k": "v"})
    tensors, meta = load_tensors(path, require_checksum=True)
    assert meta == {"k": "v"} and torch.equal(tensors["a"], torch.arange(20, dtype=torch.float32))
    flip_byte(path)
    with pytest.raises(CorruptFileError, match=r"t\.safetensors does not match its checksum"):
        load_tensors(path)


def test_a_truncated_or_unverifiable_tensor_file_is_corrupt(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.ones(64)}, {})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorruptFileError, match="corrupt or not a safetensors file"):
        load_tensors(path)
    save_file({"a": torch.ones(3)}, str(path))  # written without a checksum (an older version)
    assert torch.equal(load_tensors(path)[0]["a"], torch.ones(3))
    with pytest.raises(CorruptFileError, match="carries no checksum"):
        load_tensors(path, require_checksum=True)


@pytest.fixture(scope="module")
def tiny_lm():
    model, task = neox(vocab=64, hidden=16, inter=32, dtype=torch.float32), LanguageModelTask()
    return model, task, token_data(96, 12, vocab=64), query_batch(2, 4, 3, vocab=64)


def test_flipped_factor_bytes_are_refitted_not_used(tiny_lm, tmp_path, caplog):
    model, task, data, _ = tiny_lm
    first = fit_curvature(model, task, data, cache_dir=tmp_path)
    (path,) = tmp_path.glob("ekfac-*.safetensors")
    flip_byte(path)
    with caplog.at_level(logging.WARNING, logger="influence.fitting"):
        again = fit_curvature(model, task, data, cache_dir=tmp_path)
    assert "does not match its checksum" in caplog.text and "refitting" in caplog.text
    for k, v in first.state().items():
        assert torch.equal(again.state()[k], v), k
    load_tensors(path, require_checksum=True)  # the refit replaced the corrupt file


def test_flipped_chunk_bytes_are_rescanned_and_a_corrupt_manifest_restarts_the_scan(tiny_lm, tmp_path, caplog):
    model, task, data, queries = tiny_lm
    curv = fit_curvature(model, task, data)
    opts = dict(batch_size=8, chunk_batches=2, progress=False)
    fresh = scan(model, task, curv, queries, data, tmp_path / "fresh", **opts)
    out = tmp_path / "scan"
    scan(model, task, curv, queries, data, out, **opts)
    flip_byte(out / "chunk-000001.safetensors")
    legacy = out / "chunk-000002.safetensors"
    tensors, meta = load_tensors(legacy)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(legacy), metadata=meta)  # no checksum
    with caplog.at_level(logging.WARNING, logger="influence.scan"):
        resumed = scan(model, task, curv, queries, data, out, **opts)
    assert "rescanned 2 chunk(s)" in caplog.text and "chunk-000001" in caplog.text
    assert torch.equal(resumed.scores, fresh.scores) and torch.equal(resumed.layer_scores, fresh.layer_scores)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["curvature"] = "0" * len(manifest["curvature"])  # a changed value that is still valid JSON
    (out / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="influence.scan"):
        again = scan(model, task, curv, queries, data, out, **opts)
    assert "manifest.json is corrupt" in caplog.text  # not "a scan with other curvature"
    assert torch.equal(again.scores, fresh.scores)


def test_a_resuming_process_keeps_a_live_writers_temporaries(tmp_path):
    host = socket.gethostname().replace(".", "_")
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = tmp_path / f".chunk-000003.safetensors.{host}-{live.pid}.ab12cd.tmp"
        gone = tmp_path / f".chunk-000004.safetensors.{host}-{dead.pid}.ef34gh.tmp"
        other_host = tmp_path / f".chunk-000005.safetensors.elsewhere-{dead.pid}.ij56kl.tmp"
        for p in (mine, gone, other_host):
            p.write_bytes(b"partial")
        assert remove_stale_temporaries(tmp_path) == [gone]
        assert mine.exists() and other_host.exists() and not gone.exists()
    finally:
        live.kill()


def test_a_directory_of_files_is_verified_against_its_checksums(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(os.urandom(256))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.json").write_text("{}")
    assert verify_checksums(final, "fix it")
    flip_byte(final / "weights.bin", from_end=100)
    with pytest.raises(
        CorruptFileError, match=r"weights\.bin does not match its checksum \(the file is corrupt\): fix"
    ):
        check_dir(final, "fix it")
    (final / "sub" / "tokenizer.json").unlink()
    (final / "checksums.json").unlink()  # an older version's directory: trusted on first use, checked afterwards
    check_dir(final, "fix it")
    assert "sub/tokenizer.json" not in json.loads((final / "checksums.json").read_text())
    assert isinstance(CorruptFileError(final, "x", "y"), InfluenceError)
