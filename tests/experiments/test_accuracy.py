"""The accuracy study end to end on tiny settings: tables, figures, a converged PBRF, and on the tabular
regression EK-FAC tracks the PBRF better than the plain dot product."""

import json
import math

import numpy as np
import pandas as pd
from omegaconf import OmegaConf, open_dict

from embedded.tabular import build_tabular
from experiments import run as runner


def test_tabular_regression_is_standardized_and_trained_to_convergence(tmp_path):
    p = build_tabular("diabetes", output_dir=tmp_path)
    assert p.train["x"].shape == (353, 10) and p.test["x"].shape == (89, 10)
    assert abs(float(p.train["y"].mean())) < 1e-9 and abs(float(p.train["y"].std()) - 1) < 1e-9
    assert p.info["training"]["grad_max"] <= 1e-5 and p.info["test_metrics"]["r2"] > 0.1
    again = build_tabular("diabetes", output_dir=tmp_path)  # cached by fingerprint
    assert all((a == b).all() for a, b in zip(p.model.parameters(), again.model.parameters()))
    assert len(list((tmp_path / "models" / "tabular").glob("diabetes-*.safetensors"))) == 1


def test_accuracy_study_end_to_end(tiny_cfg, tiny_world, tiny_output_dir):
    """Tiny settings (< 1 min): diabetes on 12 rows of an 80-row Bregman set, the tiny LM on 3 sequences × 2 queries
    with a PBRF budget of 10 evaluations it does not meet (gradient ratio ~0.2 after 150): the tables must say so,
    not crash."""
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.study = "accuracy"
        cfg.accuracy = OmegaConf.create(
            {
                "tasks": ["diabetes", "lm"],
                "n_test_points": 4,
                "lissa": {"depth": 50, "batch_size": 40},
                "tabular": {"diabetes": {"max_train_points": 12, "bregman_rows": 80}},
                "linearity_rows": 2,
                "tolerance_rows": 2,
                "lm_train_sequences": 3,
                "lm_queries": 2,
                "bregman_subset": 4,
                "lm_lissa": {"depth": 5, "batch_size": 4},
                "lm_pbrf": {"max_steps": 10, "tol": 1e-4},
            }
        )
    tables = runner.main(cfg)
    long, summary = tables["accuracy"], tables["accuracy_summary"]
    assert len(long) == 4 * 4 + 4 * 2  # methods × test points, per task
    assert long["pearson"].between(-1, 1).all() and long["spearman"].between(-1, 1).all()
    assert (long["seconds"] > 0).all() and (long["pbrf_seconds"] > 0).all()
    meta = tables["_metadata"].iloc[0]
    # the tabular ground truth is verified: every solve converged and ε vs ε/2 agree
    assert meta["diabetes/pbrf_converged"] and meta["diabetes/pbrf_linear"]
    assert meta["diabetes/pbrf_grad_ratio_max"] <= 1e-3 and meta["diabetes/bregman_rows"] == 80
    assert meta["diabetes/pbrf_eps_half_rel_diff"] <= 0.05 and meta["diabetes/pbrf_eps_half_rows"] == 2
    # the LM's flags are consistent with what its optimizer achieved, and an unverified task is listed
    lm_ok = meta["lm/pbrf_grad_ratio_max"] <= 1e-4 and meta["lm/pbrf_eps_half_rel_diff"] <= 0.05
    assert bool(meta["lm/pbrf_converged"] and meta["lm/pbrf_linear"]) == bool(lm_ok)
    assert ("lm" in meta["pbrf_unverified_tasks"].split(",")) == (not lm_ok)
    assert "diabetes" not in meta["pbrf_unverified_tasks"].split(",")
    assert (long[long["task"] == "lm"]["pbrf_converged"] == meta["lm/pbrf_converged"]).all()
    assert meta["lm/pbrf_evaluations_mean_plus"] >= 10 and meta["lm/pbrf_evaluations_mean_minus"] >= 10
    assert meta["lm/pbrf_warm_start"] == "none"
    # solved to tol/10, the verified ground truth barely moves; the LM's 10-evaluation budget is reported as missed
    assert meta["diabetes/pbrf_tol10_rows"] == 2 and meta["diabetes/pbrf_tol10_rel_diff"] < 0.02
    assert meta["diabetes/pbrf_tol10_grad_ratio_max"] <= 1e-4 and meta["lm/pbrf_tol10_grad_ratio_max"] > 1e-5
    # every score is kept, and the correlations are those of the kept scores
    sc = tables["accuracy_scores"]
    assert len(sc) == 5 * (4 * 12 + 2 * 3) and set(sc["method"]) == {"pbrf", "ekfac", "kfac", "lissa", "identity"}
    one = sc[(sc["task"] == "diabetes") & (sc["test_point"] == long["test_point"].iloc[0])].pivot(
        index="train_row", columns="method", values="score"
    )
    assert math.isclose(long["pearson"].iloc[0], np.corrcoef(one["ekfac"], one["pbrf"])[0, 1], rel_tol=1e-9)
    s = summary.set_index(["task", "method"])
    assert not math.isnan(s.loc[("diabetes", "ekfac"), "pearson_sem"])
    assert s.loc[("diabetes", "ekfac"), "pearson_mean"] > s.loc[("diabetes", "identity"), "pearson_mean"]
    run_dir = tiny_output_dir / "runs" / "latest"
    assert len(pd.read_parquet(run_dir / "accuracy_summary.parquet")) == 8
    assert json.loads((run_dir / "metadata.json").read_text())["study"] == "accuracy"
    assert (run_dir / "figures" / "fig6_accuracy.png").exists() and (
        run_dir / "figures" / "fig7_accuracy_vs_time.png"
    ).exists()
