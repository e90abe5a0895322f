"""The accuracy study end to end on tiny settings: tables, figures, a converged PBRF and exact GN, the PBRF
agreeing with the exact GN, a damping sweep, and on the tabular regression EK-FAC tracks both references better
than the plain dot product."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from embedded.tabular import build_tabular
from experiments import run as runner
from influence import InfluenceError


def test_tabular_regression_is_standardized_and_trained_to_convergence(tmp_path):
    p = build_tabular("diabetes", output_dir=tmp_path)
    assert p.train["x"].shape == (353, 10) and p.test["x"].shape == (89, 10)
    assert abs(float(p.train["y"].mean())) < 1e-9 and abs(float(p.train["y"].std()) - 1) < 1e-9
    assert p.info["training"]["grad_max"] <= 1e-5 and p.info["test_metrics"]["r2"] > 0.1
    again = build_tabular("diabetes", output_dir=tmp_path)  # cached by fingerprint
    assert all((a == b).all() for a, b in zip(p.model.parameters(), again.model.parameters()))
    assert len(list((tmp_path / "models" / "tabular").glob("diabetes-*.safetensors"))) == 1


def test_accuracy_study_end_to_end(tiny_cfg, tiny_world, tiny_output_dir):
    """Tiny settings (~1.5 min): diabetes on 12 rows of an 80-row Bregman set, the tiny LM on 3 sequences × 2 queries
    with a PBRF budget of 10 evaluations it does not meet (gradient ratio ~0.2 after 150) and an exact-GN budget of
    10 CG iterations it does not meet either: the tables must say so, not crash. Damping factors 0.1 (main) and 1."""
    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.study = "accuracy"
        cfg.accuracy = OmegaConf.create(
            {
                "tasks": ["diabetes", "lm"],
                "n_test_points": 4,
                "weight_decay": "task",  # the fixed value: the held-out selection costs ~1 min on diabetes
                "lds": {"n_subsets": 6},
                "lissa": {"depth": 50, "batch_size": 40, "tolerance": 1e-9, "max_depth": 100},
                "tabular": {"diabetes": {"max_train_points": 12, "bregman_rows": 80}},
                "linearity_rows": 2,
                "tolerance_rows": 2,
                "damping_factors": [0.1, 1.0],
                "lm_train_sequences": 3,
                "lm_queries": 2,
                "bregman_subset": 4,
                "lm_lissa": {"depth": 5, "batch_size": 4},
                "lm_pbrf": {"max_steps": 10, "tol": 1e-4},
                "lm_exact": {"max_iter": 10},
            }
        )
    tables = runner.main(cfg)
    long, summary = tables["accuracy"], tables["accuracy_summary"]
    # per task: 4 methods × test points vs the PBRF (main damping), 4 methods + the PBRF vs the exact GN (main),
    # 4 methods vs the exact GN at damping 1
    assert len(long) == 4 * (4 + 5 + 4) + 2 * (4 + 5 + 4)
    assert set(long["reference"]) == {"pbrf", "exact_gn"} and set(long["damping_factor"]) == {0.1, 1.0}
    assert (long[long["reference"] == "pbrf"]["damping_factor"] == 0.1).all()  # the PBRF at the main damping only
    assert long["main_damping"].eq(long["damping_factor"] == 0.1).all()
    assert long["pearson"].between(-1, 1).all() and long["spearman"].between(-1, 1).all()
    assert (long["seconds"] > 0).all() and (long["pbrf_seconds"] > 0).all() and (long["reference_seconds"] > 0).all()
    meta = tables["_metadata"].iloc[0]
    # the tabular ground truth is verified: every solve converged and ε vs ε/2 agree
    assert meta["diabetes/pbrf_converged"] and meta["diabetes/pbrf_linear"]
    assert meta["diabetes/pbrf_grad_ratio_max"] <= 1e-3 and meta["diabetes/bregman_rows"] == 80
    assert meta["diabetes/pbrf_epsilon"] == pytest.approx(0.1 / 80) and meta["diabetes/pbrf_epsilon_copies"] == 0.1
    assert meta["diabetes/pbrf_eps_half_rel_diff"] <= 0.05 and meta["diabetes/pbrf_eps_half_rows"] == 2
    # the LM's flags are consistent with what its optimizer achieved, and an unverified task is listed
    lm_ok = meta["lm/pbrf_grad_ratio_max"] <= 1e-4 and meta["lm/pbrf_eps_half_rel_diff"] <= 0.05
    assert bool(meta["lm/pbrf_converged"] and meta["lm/pbrf_linear"]) == bool(lm_ok)
    assert ("lm" in meta["pbrf_unverified_tasks"].split(",")) == (not lm_ok)
    assert "diabetes" not in meta["pbrf_unverified_tasks"].split(",")
    assert (long[long["task"] == "lm"]["pbrf_converged"] == meta["lm/pbrf_converged"]).all()
    assert meta["lm/pbrf_evaluations_mean_plus"] >= 10 and meta["lm/pbrf_evaluations_mean_minus"] >= 10
    assert meta["lm/pbrf_warm_start"] == "none"
    # the LM's Bregman sequences go in length-sorted chunks of 4 (its default, kept when lm_pbrf sets other keys)
    assert meta["lm/pbrf_batch_size"] == 4 and meta["diabetes/pbrf_batch_size"] == 1024
    assert meta["lm/pbrf_epsilon"] == 1e-3 and meta["lm/pbrf_epsilon_copies"] == pytest.approx(4e-3)
    # solved to tol/10, the verified ground truth barely moves; the LM's 10-evaluation budget is reported as missed
    assert meta["diabetes/pbrf_tol10_rows"] == 2 and meta["diabetes/pbrf_tol10_rel_diff"] < 0.02
    assert meta["diabetes/pbrf_tol10_grad_ratio_max"] <= 1e-4 and meta["lm/pbrf_tol10_grad_ratio_max"] > 1e-5
    # the exact GN: CG to its tolerance on diabetes at both dampings (verified); the LM's 10 iterations are not enough
    assert meta["diabetes/exact_verified"] and meta["diabetes/exact_relative_residual_max"] <= 1e-8
    assert meta["diabetes/exact_method"] == "cg" and meta["diabetes/exact_n_params"] > 2000
    assert not meta["lm/exact_verified"] and meta["lm/exact_iterations"] == 10 and meta["lm/exact_max_iter"] == 10
    assert meta["exact_unverified_tasks"] == "lm" and meta["exact_tasks"] == "diabetes,lm"
    ex = long[long["reference"] == "exact_gn"]
    assert ex["reference_verified"].eq(ex["task"] == "diabetes").all()
    assert (ex["exact_relative_residual"] > 1e-8).eq(ex["task"] == "lm").all()
    pb = long[long["reference"] == "pbrf"]
    assert pb["reference_verified"].eq(pb["pbrf_converged"] & pb["pbrf_linear"]).all()
    # LiSSA's rows carry its own residual where the implementation measures one (NaN otherwise, never elsewhere)
    assert long[long["method"] != "lissa"]["lissa_relative_residual"].isna().all()
    # every score is kept, and the correlations are those of the kept scores
    sc = tables["accuracy_scores"]
    per_factor = 4 * 12 + 2 * 3
    assert len(sc) == 6 * per_factor + 5 * per_factor  # main: 4 methods, exact, PBRF; damping 1: 4 methods, exact
    assert set(sc["method"]) == {"pbrf", "exact_gn", "ekfac", "kfac", "lissa", "identity"}
    for ref in ("pbrf", "exact_gn"):
        first = long[(long["task"] == "diabetes") & (long["reference"] == ref) & (long["method"] == "ekfac")].iloc[0]
        one = sc[(sc["task"] == "diabetes") & (sc["test_point"] == first["test_point"]) & (sc["damping_factor"] == 0.1)]
        one = one.pivot(index="train_row", columns="method", values="score")
        assert math.isclose(first["pearson"], np.corrcoef(one["ekfac"], one[ref])[0, 1], rel_tol=1e-9)
    s = summary.set_index(["task", "damping_factor", "reference", "method"])
    assert not math.isnan(s.loc[("diabetes", 0.1, "pbrf", "ekfac"), "pearson_sem"])
    for ref in ("pbrf", "exact_gn"):
        assert (
            s.loc[("diabetes", 0.1, ref, "ekfac"), "pearson_mean"]
            > s.loc[("diabetes", 0.1, ref, "identity"), "pearson_mean"]
        )
    # the PBRF is the exact GN's nonlinear counterpart: on the verified task they agree closely
    assert s.loc[("diabetes", 0.1, "exact_gn", "pbrf"), "pearson_mean"] > 0.99
    # the comparison with the paper is computed from these numbers, one sentence, for both references
    top = tables["_summary"].iloc[0]
    assert "EK-FAC ≈ LiSSA ≫ dot product" in top["finding"] and "the exact damped GN" in top["finding"]
    assert top["holds_vs_pbrf"].endswith("of 2 tasks") and top["holds_vs_exact_gn"].endswith("of 2 tasks")
    assert top["diabetes/pbrf_vs_exact_gn_pearson"] > 0.99
    run_dir = tiny_output_dir / "runs" / "latest"
    assert len(pd.read_parquet(run_dir / "accuracy_summary.parquet")) == 2 * (4 + 5 + 4)
    assert json.loads((run_dir / "metadata.json").read_text())["study"] == "accuracy"
    # LiSSA went on past its first 50 steps to max_depth and says it did not reach the tolerance
    assert meta["diabetes/lissa_depth"] == 100 and not meta["diabetes/lissa_converged"]
    assert meta["diabetes/weight_decay"] == 0.01 and meta["diabetes/weight_decay_rule"] == "fixed"
    assert 0 < meta["diabetes/train_loss"] < meta["diabetes/test_loss"]
    # the LDS from 6 retrained halves: every method and the exact GN, per test point, scored on every training row
    lds, lsum = tables["accuracy_lds"], tables["accuracy_lds_summary"]
    assert set(lds["method"]) == {"ekfac", "kfac", "lissa", "identity", "exact_gn"} and set(lds["task"]) == {"diabetes"}
    assert len(lds) == 5 * 4 and lds["lds"].between(-1, 1).all() and (lds["n_subsets"] == 6).all()
    assert meta["diabetes/lds_n_subsets"] == 6 and meta["diabetes/lds_subset_rows"] == round(0.5 * 353)
    assert meta["diabetes/lds_retrain_grad_max"] <= 1e-5  # every retrain converged
    ls = lsum.set_index("method")
    assert ls.loc["exact_gn", "lds_mean"] > ls.loc["identity", "lds_mean"]  # curvature helps on the regression
    assert (ls["lds_ci_low"] <= ls["lds_mean"]).all() and (ls["lds_mean"] <= ls["lds_ci_high"]).all()
    assert top["diabetes/lds_exact_gn"] == pytest.approx(ls.loc["exact_gn", "lds_mean"])
    for stem in ("fig6_accuracy", "fig7_accuracy_vs_time", "accuracy_vs_damping", "accuracy_lds"):
        assert (run_dir / "figures" / f"{stem}.png").exists(), stem


def test_accuracy_options_are_checked():
    from experiments.studies.accuracy import LDSOptions, Options

    with pytest.raises(InfluenceError, match="damping_factors value must be > 0"):
        Options(damping_factors=[0.1, 0.0])
    with pytest.raises(InfluenceError, match="accuracy.lm_epsilon='often'"):
        Options(lm_epsilon="often")
    with pytest.raises(InfluenceError, match="pbrf.batch_size=0"):
        Options(lm_pbrf={"batch_size": 0})
    with pytest.raises(InfluenceError, match="lm_exact has no setting"):
        Options(lm_exact={"tasks": ["lm"]})
    with pytest.raises(InfluenceError, match="accuracy.exact: method='lu'"):
        Options(lm_exact={"method": "lu"})
    assert Options(damping_factor=0.1, damping_factors=[1.0, 0.1, 0.01]).factors == [0.1, 1.0, 0.01]
    with pytest.raises(InfluenceError, match="weight_decay must be a number or 'auto'"):
        Options(weight_decay="big")
    with pytest.raises(InfluenceError, match="accuracy.lds needs n_subsets"):
        LDSOptions(n_subsets=2)
    with pytest.raises(InfluenceError, match=r"accuracy.tabular.digits.epsilon='big': use auto"):
        Options(tabular={"digits": {"epsilon": "big"}})
    with pytest.raises(InfluenceError, match="accuracy.epsilon_copies=2"):
        Options(epsilon_copies=2)


def test_the_pbrf_epsilon_is_a_share_of_one_copy_unless_given():
    from experiments.studies.accuracy import Options, pbrf_epsilon

    opts = Options()
    assert pbrf_epsilon("auto", opts, 353) == pytest.approx(0.1 / 353)
    assert pbrf_epsilon("auto", Options(epsilon_copies=0.05), 400) == pytest.approx(0.05 / 400)
    assert pbrf_epsilon(1e-3, opts, 353) == 1e-3  # a number is taken as given (a warning above 0.5 copies)


def test_the_tabular_weight_decay_is_chosen_on_held_out_loss_unless_fixed():
    from experiments.studies.accuracy import Options, _build_options

    assert Options().weight_decay == "auto"  # the default: as a practitioner would train
    assert _build_options(Options(), {}) == {"weight_decay": "auto"}
    assert _build_options(Options(weight_decay="task"), {}) == {}  # the task's own fixed value (saturated variant)
    assert _build_options(Options(weight_decay=1e-3), {"weight_decay": 0.1, "hidden": [8]}) == {
        "weight_decay": 0.1,
        "hidden": [8],
    }
