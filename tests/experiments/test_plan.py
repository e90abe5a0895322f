"""`python -m experiments.plan`: exact memory figures for the tiny model, from config alone; fit_stage logs them first."""

import json
import logging
import subprocess
import sys
from pathlib import Path

from experiments import plan as planner
from experiments.pipeline.stages import fit_stage

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
TINY = ("model=tiny", "data=tiny", "queries=tiny", "queries.names=[shutdown,water]")


def test_plan_of_the_tiny_model_in_exact_bytes(capsys):
    plan = planner.main(compose_cfg(*TINY))
    # GPT-2 tiny (n_embd 64): c_fc is (P, M+1) = (256, 65), c_proj (64, 257); 2 queries at full rank
    c_fc = {
        "A": 65 * 65 * 8,
        "S": 256 * 256 * 8,
        "eigenvectors": (65 * 65 + 256 * 256) * 8,
        "lambda": 256 * 65 * 8,
        "queries": 256 * 65 * 2 * 4,
    }
    c_proj = {
        "A": 257 * 257 * 8,
        "S": 64 * 64 * 8,
        "eigenvectors": (257 * 257 + 64 * 64) * 8,
        "lambda": 64 * 257 * 8,
        "queries": 64 * 257 * 2 * 4,
    }
    assert list(plan["layers"]) == [f"transformer.h.{i}.mlp.{n}" for i in (0, 1) for n in ("c_fc", "c_proj")]
    for name, mem in plan["layers"].items():
        want = c_fc if name.endswith("c_fc") else c_proj
        assert {k: round(mem[k] * 2**20) for k in want} == want
    assert round(plan["total"]["total"] * 2**20) == 2 * (sum(c_fc.values()) + sum(c_proj.values()))
    assert plan["query_rank"] is None and plan["num_queries"] == 2
    out = capsys.readouterr().out
    assert "memory plan (MiB): ekfac, 4 layers" in out and "transformer.h.1.mlp.c_proj" in out
    # rank 8 and 2 blocks per side
    low = planner.main(compose_cfg(*TINY, "score.query_rank=8", "curvature.num_blocks=2"))
    assert round(low["layers"]["transformer.h.0.mlp.c_fc"]["queries"] * 2**20) == 8 * (256 + 65) * 2 * 4
    assert round(low["layers"]["transformer.h.0.mlp.c_fc"]["A"] * 2**20) == (32 * 32 + 33 * 33) * 8


def test_plan_cli_reads_only_a_checkpoint_config(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gpt_neox",
                "hidden_size": 128,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "intermediate_size": 512,
                "vocab_size": 1000,
            }
        )
    )
    cmd = [sys.executable, "-m", "experiments.plan", f"model.path={ckpt}", "queries=tiny", "queries.names=[shutdown]"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ekfac, 6 layers" in p.stdout and "gpt_neox.layers.2.mlp.dense_4h_to_h" in p.stdout
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ckpt"]  # a plan writes nothing
    bad = subprocess.run(
        cmd[:3] + [f"model.path={tmp_path / 'none'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 and "has no config.json" in bad.stderr


def test_fit_stage_logs_the_memory_plan_before_fitting(tiny_cfg, tiny_world, caplog):
    with caplog.at_level(logging.INFO, logger="experiments.pipeline.stages"):
        fit_stage(tiny_cfg, tiny_world)
    text = caplog.text
    assert "memory plan (MiB): ekfac, 4 layers" in text
    assert text.index("memory plan") < text.index("fitting ekfac")


def test_fit_stage_logs_how_many_sequences_it_fits_on(tiny_cfg, tiny_world, caplog, tmp_path):
    """A fit on a sample says so (the scale studies fit on 3,000 of the corpus), not the corpus size."""
    n = tiny_world.train.input_ids.shape[0]
    cfg = tiny_cfg.copy()
    cfg.paths.output_dir = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="experiments.pipeline.stages"):
        fit_stage(cfg, tiny_world)
        cfg.curvature.max_sequences = 5
        fit_stage(cfg, tiny_world)
    assert f"fitting ekfac on all {n} training sequences" in caplog.text
    assert f"fitting ekfac on 5 of the {n} training sequences" in caplog.text
