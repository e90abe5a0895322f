"""The README's library example runs as written (the public API a user copies first)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    section = README.read_text(encoding="utf-8").split("## As a plain library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_runs_on_a_trained_model(tiny_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its cache_dir="factors" lands here
    train = tiny_world.train
    scope = {
        "model": tiny_world.model,
        "tokenizer": tiny_world.tokenizer,
        "ids": train.input_ids[:12],
        "mask": train.attention_mask[:12],
    }
    exec(compile(_library_example(), str(README), "exec"), scope)
    result = scope["result"]
    assert result.scores.shape == (1, 12) and torch.isfinite(result.scores).all()
    torch.testing.assert_close(result.layer_scores.sum(-1), result.scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.token_totals.sum(-1), result.scores, rtol=1e-4, atol=1e-6)
    assert list((tmp_path / "factors").glob("ekfac-*.safetensors"))
