"""`experiment=paper`: every selected study in its own folder, one report (md + self-contained HTML), the scorecard."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.paper import check_overrides, paper_options, plan_sections, study_overrides
from experiments.studies import get_study, paper_studies
from influence import InfluenceError

from .conftest import TINY_QUERIES, compose_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_each_study_gets_the_overrides_that_apply_to_it():
    cfg = compose_cfg("experiment=paper")
    cli = ["experiment=paper", "model=tiny", "sparsity.tail=200", "score.top_k=3", "paper.studies=[sparsity]"]
    assert study_overrides("sparsity", cfg, cli) == [
        "experiment=sparsity",
        "model=tiny",
        "sparsity.tail=200",
        "score.top_k=3",
    ]
    assert study_overrides("concentration", cfg, cli) == ["experiment=concentration", "model=tiny", "score.top_k=3"]
    own = list(cfg.paper.overrides.accuracy)
    assert "accuracy.tasks=[diabetes,digits]" in own
    assert study_overrides("accuracy", cfg, cli)[-len(own) :] == own  # the paper's own, last
    scale = study_overrides("abstraction", cfg, cli)
    assert scale[-len(cfg.paper.scale_overrides) :] == list(cfg.paper.scale_overrides)
    check_overrides(["sparsity", "concentration"], cli)
    with pytest.raises(InfluenceError, match="sparsity.tial"):
        check_overrides(["sparsity", "concentration"], [*cli, "sparsity.tial=3"])


def test_the_sections_come_from_the_study_descriptors_and_bad_keys_fail_before_any_work():
    cfg = compose_cfg("experiment=paper")
    assert paper_options(cfg).studies is None  # null: every study of the paper, in its order
    sections = plan_sections(paper_studies(), cfg, ["experiment=paper"])
    assert [s.study for s in sections] == [s.name for s in paper_studies()]
    assert sections[0].title == get_study("query_rank").title and sections[0].config.study == "query_rank"
    bad = compose_cfg("experiment=paper", "++paper.overrides.sparsity=['sparsity.tial=1']")
    with pytest.raises(InfluenceError, match=r"sparsity: .*tial") as e:
        plan_sections([get_study("concentration"), get_study("sparsity")], bad, ["experiment=paper"])
    assert "\n" not in str(e.value)
    with pytest.raises(InfluenceError, match=r"paper\.overrides has unknown studies \['sparsty'\]"):
        paper_options(compose_cfg("experiment=paper", "++paper.overrides.sparsty=[]"))


def test_paper_runs_the_selected_studies_into_one_report(tiny_cfg, tmp_path):
    out = tiny_cfg.paths.output_dir  # the session's tiny models, factors and scans are reused
    run = tmp_path / "paper"
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "experiment=paper",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={out}",
        "score.num_threads=1",
        "logger=none",
        "paper.studies=[memorization,concentration]",
        f"hydra.run.dir={run}",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    for study in ("memorization", "concentration"):
        assert (run / study / "report.md").exists() and (run / study / "config.yaml").exists()
        assert "model:\n  name: gpt2-tiny" in (run / study / "config.yaml").read_text()
    card = pd.read_parquet(run / "scorecard.parquet")
    conc = card[card["study"] == "concentration"].iloc[0]
    share = pd.read_parquet(run / "concentration" / "concentration.parquet")
    assert conc["value"] == pytest.approx(share[share["top_fraction"] == 0.01]["share"].median())
    assert set(card[card["study"] == "sparsity"]["reproduced"]) == {"not run"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sections"] == 2 and summary["sections_failed"] == 0
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "Findings scorecard" in html and "Memorization" in html
    md = (run / "report.md").read_text()
    assert md.index("Concentration") < md.index("Memorization")  # the paper's order, not the command line's
    timings = pd.read_parquet(run / "timings.parquet")
    assert list(timings["study"]) == ["concentration", "memorization"] and (timings["status"] == "ok").all()


def test_unknown_paper_study_fails_with_the_options(tiny_cfg, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "experiment=paper",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "logger=none",
        "paper.studies=[sparsity,wordorder]",
        f"hydra.run.dir={tmp_path}/bad",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "wordorder" in p.stderr and "word_order" in p.stderr
    assert not (tmp_path / "bad" / "report.md").exists()
