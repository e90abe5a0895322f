"""The negative-influence study: a study added as four files (its module, its preset, its analysis, this test)."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from experiments import run as runner
from experiments.pipeline.stages import search_stage
from experiments.studies import STUDIES, paper_studies

from .conftest import TINY_QUERIES, compose_cfg


def test_negative_influences_lists_each_querys_lowest_scores_and_their_share(tiny_cfg, tiny_world):
    assert "negative_influences" in STUDIES and "negative_influences" not in [s.name for s in paper_studies()]
    cfg = compose_cfg(
        "experiment=negative_influences",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "score.num_threads=1",
        "logger=none",
        "negative_influences.top_k=3",
    )
    with open_dict(cfg):
        cfg.negative_influences.queries = ["shutdown", "water"]
    tables = runner.main(cfg)
    low, balance = tables["negative_influences"], tables["sign_balance"]
    assert list(balance["query"]) == ["shutdown", "water"] and (low.groupby("query")["rank"].max() == 3).all()
    result = search_stage(cfg, tiny_world).result  # the study's own (cached) scan
    for q in ("shutdown", "water"):
        s = result.scores[result.query_names.index(q)].numpy()
        assert low[low["query"] == q].sort_values("rank")["score"].to_numpy() == pytest.approx(np.sort(s)[:3])
        row = balance.set_index("query").loc[q]
        assert row["negative_share"] == pytest.approx(-s[s < 0].sum() / np.abs(s).sum())
        assert row["bottom_over_top"] == pytest.approx(-s.min() / s.max())
    r = low.iloc[0]
    assert r["text"] == tiny_world.train.texts[int(r["row"])]
    run_dir = Path(cfg.paths.output_dir) / "runs" / "latest"
    assert (run_dir / "figures" / "sign_balance.png").exists()
    assert "## Table `sign_balance`" in (run_dir / "report.md").read_text()
