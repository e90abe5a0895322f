"""How accurate are the estimators? EK-FAC, K-FAC, LiSSA and the dot product against the PBRF (Figs. 6–7, spec §5).

Per task, every estimator is the `influence` library's (`fit_curvature` + `compute_scores`, same layers,
same data), and the ground truth is `influence.pbrf.pbrf_scores` with EK-FAC's per-layer damping.
K-FAC and LiSSA are given that same damping too, so every method targets the same (G + λI)⁻¹; the
identity is the undamped dot product. Tasks: the tabular regression and classification of
`embedded.tabular` (f = loss on a random test point; G and the Bregman term over the training rows,
or a configured subset) and the world's language model (f = log p(completion | prompt) of its first
queries; G and the Bregman term over a fixed subset of training sequences). The scored training rows are
drawn from the Bregman rows.

The ground truth is checked, not assumed: every PBRF solve must reach `pbrf.tol` (gradient norm relative to
‖∇L(z_m)‖) within `pbrf.max_steps` evaluations, and on the first `linearity_rows` scored rows the PBRF is
solved again at ε/2, whose central differences must agree with ε's to `linearity_tol` (relative norm). A
task that fails either check is not dropped or fatal: its correlations are still computed, but every
row of the tables carries `pbrf_converged` / `pbrf_linear` = False, the achieved gradient ratio and the
ε vs ε/2 disagreement, the figures label it, and the metadata lists it under `pbrf_unverified_tasks`.
With `tolerance_rows` > 0 the first rows are also solved to tol/10 and the relative change of their scores is
reported (`pbrf_tol10_rel_diff`): the ground truth's own truncation error at the chosen tolerance.
Every score (each method's and the PBRF's, per test point and training row) is kept in `accuracy_scores`.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy import stats
from tqdm import tqdm

from analysis.accuracy import summary_table
from influence import InfluenceError, LanguageModelTask, compute_scores, fit_curvature
from influence.batching import sample_indices
from influence.pbrf import pbrf_scores
from influence.threads import single_thread

from ..pipeline.stages import encode_stage, tracked_layers, training_data
from embedded.tabular import build_tabular
from . import register

log = logging.getLogger(__name__)

DEFAULTS = {
    "tasks": ["diabetes", "digits", "lm"],
    "methods": ["ekfac", "kfac", "lissa", "identity"],
    "n_test_points": 10,
    "max_train_points": 500,
    "test_fraction": 0.2,
    "epsilon": 1e-3,
    "lissa": {"depth": 500, "batch_size": 32},
    "pbrf": {"optimizer": "lbfgs", "lr": 0.01, "max_steps": 3000, "tol": 1e-3, "patience": 20, "history": 100,
             "precondition": "none",  # "ekfac": optimizer variables preconditioned by EK-FAC (same minimizer and test)
             "warm_start": "none"},   # "mirror": the −ε solve starts at the +ε solution reflected through θs
    "linearity_rows": 10,   # scored rows re-solved at ε/2 (0: no check, and pbrf_linear is False)
    "linearity_tol": 0.05,  # ‖s(ε) − s(ε/2)‖ / ‖s(ε/2)‖ above this: the PBRF is not in its linear regime
    "tolerance_rows": 0,    # scored rows re-solved at tol/10 (3x max_steps): how far the ground truth moves
    "tabular": {},          # per tabular task: max_train_points, bregman_rows, epsilon, hidden, activation, ...
    "lm_train_sequences": 20,
    "lm_queries": 5,
    "bregman_subset": 32,   # LM: fitting sequences for G and the Bregman term
    "lm_epsilon": 1e-3,
    "lm_lissa": {"depth": 100, "batch_size": 8},
    "lm_pbrf_dtype": "float64",
    "lm_pbrf": {},          # LM overrides of `pbrf` (e.g. tol, max_steps, history)
}
_TABULAR_BUILD_KEYS = ("hidden", "activation", "weight_decay", "grad_tol", "max_iter")


def settings(cfg) -> dict:
    """The `accuracy:` block over the defaults (nested dicts merged)."""
    user = OmegaConf.to_container(cfg.accuracy, resolve=True) if cfg.get("accuracy") is not None else {}
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise InfluenceError(f"accuracy has no setting(s) {unknown}: valid settings are {sorted(DEFAULTS)}")
    out = {}
    for k, v in DEFAULTS.items():
        u = user.get(k, v)
        out[k] = {**v, **(u or {})} if isinstance(v, dict) else u
    if int(out["n_test_points"]) < 1 or int(out["lm_queries"]) < 1 or int(out["lm_train_sequences"]) < 3:
        raise InfluenceError("accuracy needs n_test_points >= 1, lm_queries >= 1 and lm_train_sequences >= 3")
    if int(out["linearity_rows"]) < 0 or not float(out["linearity_tol"]) > 0 or int(out["tolerance_rows"]) < 0:
        raise InfluenceError("accuracy needs linearity_rows >= 0, tolerance_rows >= 0 and linearity_tol > 0")
    return out


def _correlations(est: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    x, y = est.double().numpy(), truth.double().numpy()
    if np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def compare(model, task, layers, fit_data, score_data, score_rows, queries, query_names, methods, method_options,
            pbrf_options, task_name, linearity_rows: int = 10, linearity_tol: float = 0.05,
            tolerance_rows: int = 0) -> tuple[list[dict], dict, pd.DataFrame]:
    """Every estimator and the PBRF on (queries × score_rows): one row per (method, query), PBRF stats, and
    every score (long: task, test point, training row, method incl. "pbrf")."""
    if "ekfac" not in methods:
        raise InfluenceError("accuracy.methods must include ekfac: its per-layer damping defines the PBRF target")
    fitted, seconds = {}, {}
    for method in ["ekfac"] + [m for m in methods if m != "ekfac"]:
        t0 = time.perf_counter()
        curv = fit_curvature(model, task, fit_data, method=method, layers=layers, **method_options.get(method, {}))
        if method in ("kfac", "lissa"):  # the same λ_ℓ as EK-FAC and the PBRF (identity stays undamped)
            curv.info["own_damping"] = ";".join(f"{k}={v:.6g}" for k, v in curv.damping.items())
            curv.damping = dict(fitted["ekfac"][0].damping)
        result = compute_scores(model, task, curv, queries, score_data, indices=score_rows)
        seconds[method] = time.perf_counter() - t0
        fitted[method] = (curv, result.scores)
        log.info("%s %s: %.2fs", task_name, method, seconds[method])
    damping = fitted["ekfac"][0].damping
    options = {**pbrf_options, "on_failure": "record"}
    precondition = str(options.pop("precondition", "none"))
    if precondition not in ("none", "ekfac"):
        raise InfluenceError(f"accuracy pbrf.precondition={precondition!r}: use none or ekfac")
    if precondition == "ekfac":
        options["preconditioner"] = fitted["ekfac"][0]

    def solve(rows, label: str, **changes):
        """The PBRF of `rows` with `options` changed by `changes`, with a progress bar."""
        with tqdm(total=len(rows), desc=f"{task_name} PBRF{label}", unit="row", mininterval=5.0) as bar:
            return pbrf_scores(model, task, score_data, queries, damping, bregman_data=fit_data, indices=rows,
                               layers=layers, progress=bar.update, **{**options, **changes})

    def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
        return float((a - ref).norm() / ref.norm()) if ref.norm() > 0 else math.nan

    t0 = time.perf_counter()
    truth = solve(score_rows, "")
    pbrf_seconds = time.perf_counter() - t0
    log.info("%s PBRF: %.1fs, evaluations per solve %.0f (max %d), gradient ratio max %.3g (tol %g)", task_name,
             pbrf_seconds, float(truth.steps.double().mean()), int(truth.steps.max()), float(truth.grad_norm.max()),
             float(truth.metadata["tol"]))
    # linear regime: the central differences at ε/2 on the first rows must agree with ε's
    k = min(int(linearity_rows), len(score_rows))
    half_diff, half_converged = math.nan, False
    if k > 0:
        t1 = time.perf_counter()
        half = solve(score_rows[:k], " at ε/2", epsilon=truth.epsilon / 2)
        half_diff = rel_diff(truth.scores[:, :k], half.scores)
        half_converged = half.converged
        log.info("%s PBRF at ε/2 on %d rows: relative difference %.3g (%.1fs)", task_name, k, half_diff,
                 time.perf_counter() - t1)
    # truncation: the first rows solved to a tenth of the tolerance; how far the ground truth moves
    kt = min(int(tolerance_rows), len(score_rows))
    tight_diff, tight_ratio = math.nan, math.nan
    if kt > 0:
        t1 = time.perf_counter()
        tight = solve(score_rows[:kt], " at tol/10", tol=float(options["tol"]) / 10,
                      max_steps=3 * int(options["max_steps"]))
        tight_diff = rel_diff(truth.scores[:, :kt], tight.scores)
        tight_ratio = float(tight.grad_norm.max())
        log.info("%s PBRF at tol/10 on %d rows: relative difference %.3g, gradient ratio max %.3g (%.1fs)", task_name,
                 kt, tight_diff, tight_ratio, time.perf_counter() - t1)
    converged = bool(truth.converged and (half_converged or k == 0))
    linear = bool(k > 0 and half_diff <= float(linearity_tol))
    if not (converged and linear):
        log.warning("%s: the PBRF ground truth is NOT verified (converged=%s, gradient ratio max %.3g vs tol %g; "
                    "ε vs ε/2 relative difference %.3g vs %g): its correlations are reported but flagged", task_name,
                    converged, float(truth.grad_norm.max()), float(truth.metadata["tol"]), half_diff, linearity_tol)
    rows = []
    for method in methods:
        scores = fitted[method][1]
        for qi, qname in enumerate(query_names):
            p, s = _correlations(scores[qi], truth.scores[qi])
            rows.append({"task": task_name, "method": method, "test_point": qname, "pearson": p, "spearman": s,
                         "seconds": seconds[method], "n_train_points": len(score_rows),
                         "pbrf_seconds": pbrf_seconds, "pbrf_converged": converged, "pbrf_linear": linear,
                         "pbrf_grad_ratio_max": float(truth.grad_norm.max()), "pbrf_eps_half_rel_diff": half_diff})
    info = {f"{task_name}/pbrf_seconds": pbrf_seconds,
            f"{task_name}/pbrf_evaluations_mean": float(truth.steps.double().mean()),
            f"{task_name}/pbrf_evaluations_max": int(truth.steps.max()),
            f"{task_name}/pbrf_evaluations_mean_plus": float(truth.steps[:, 0].double().mean()),
            f"{task_name}/pbrf_evaluations_mean_minus": float(truth.steps[:, 1].double().mean()),
            f"{task_name}/pbrf_grad_ratio_max": float(truth.grad_norm.max()),
            f"{task_name}/pbrf_tol": float(truth.metadata["tol"]),
            f"{task_name}/pbrf_solves_unconverged": int((truth.grad_norm > float(truth.metadata["tol"])).sum()),
            f"{task_name}/pbrf_converged": converged,
            f"{task_name}/pbrf_linear": linear,
            f"{task_name}/pbrf_eps_half_rel_diff": half_diff,
            f"{task_name}/pbrf_eps_half_rows": k,
            f"{task_name}/pbrf_tol10_rel_diff": tight_diff,
            f"{task_name}/pbrf_tol10_grad_ratio_max": tight_ratio,
            f"{task_name}/pbrf_tol10_rows": kt,
            f"{task_name}/pbrf_epsilon": truth.epsilon,
            f"{task_name}/pbrf_optimizer": truth.metadata["optimizer"],
            f"{task_name}/pbrf_preconditioner": truth.metadata["preconditioner"],
            f"{task_name}/pbrf_warm_start": truth.metadata["warm_start"],
            f"{task_name}/pbrf_max_steps": int(truth.metadata["max_steps"]),
            f"{task_name}/bregman_rows": truth.metadata["n_bregman"],
            f"{task_name}/n_train_points": len(score_rows),
            f"{task_name}/n_test_points": len(query_names),
            f"{task_name}/damping": truth.metadata["damping"],
            **{f"{task_name}/{m}_seconds": seconds[m] for m in methods}}
    for m in ("kfac", "lissa"):
        if m in fitted:
            info[f"{task_name}/{m}_own_damping"] = fitted[m][0].info["own_damping"]
    if "lissa" in fitted:
        info[f"{task_name}/lissa_scale"] = fitted["lissa"][0].info.get("scale", "")
        info[f"{task_name}/lissa_final_relative_step_max"] = fitted["lissa"][0].diagnostics.get("final_relative_step", "")
    train_rows = [int(r) for r in score_rows]
    scores = pd.DataFrame([
        {"task": task_name, "test_point": qname, "train_row": r, "method": method, "score": float(mat[qi, j])}
        for method, mat in [("pbrf", truth.scores)] + [(m, fitted[m][1]) for m in methods]
        for qi, qname in enumerate(query_names) for j, r in enumerate(train_rows)])
    return rows, info, scores


def _method_options(s: dict, methods: list[str], seed: int, lissa: dict) -> dict:
    opts = {m: {"seed": seed} for m in methods if m != "identity"}
    if "lissa" in opts:
        opts["lissa"].update(lissa)
    return opts


def tabular_task(name: str, s: dict, cfg) -> tuple[list[dict], dict, pd.DataFrame]:
    seed = int(cfg.seed)
    per = dict(s["tabular"].get(name) or {})
    unknown = sorted(set(per) - {"max_train_points", "bregman_rows", "epsilon", "n_test_points", *_TABULAR_BUILD_KEYS})
    if unknown:
        raise InfluenceError(f"accuracy.tabular.{name} has no setting(s) {unknown}")
    problem = build_tabular(name, output_dir=cfg.paths.output_dir, seed=seed, test_fraction=float(s["test_fraction"]),
                            **{k: per[k] for k in _TABULAR_BUILD_KEYS if k in per})
    n_train, n_test = problem.train["x"].shape[0], problem.test["x"].shape[0]
    # the scored rows lie inside the Bregman rows: otherwise the −ε side of the PBO has nothing anchoring
    # h(x_m) but the proximity term, and is unbounded below for small damping
    fit_rows = sample_indices(n_train, per.get("bregman_rows"), seed + 1)
    rows = fit_rows[sample_indices(len(fit_rows), int(per.get("max_train_points", s["max_train_points"])), seed)]
    fit_data = {k: v[fit_rows] for k, v in problem.train.items()}
    test_rows = sample_indices(n_test, int(per.get("n_test_points", s["n_test_points"])), seed + 2)
    queries = {k: v[test_rows] for k, v in problem.test.items()}
    methods = list(s["methods"])
    pbrf = {**s["pbrf"], "epsilon": float(per.get("epsilon", s["epsilon"]))}
    out, info, scores = compare(problem.model, problem.task, problem.layers, fit_data, problem.train, rows, queries,
                                [f"test_{int(i)}" for i in test_rows], methods,
                                _method_options(s, methods, seed, s["lissa"]), pbrf, name, int(s["linearity_rows"]),
                                float(s["linearity_tol"]), int(s["tolerance_rows"]))
    info[f"{name}/model"] = (f"MLP {problem.info['hidden']} {problem.info['activation']}, weight decay "
                             f"{problem.info['weight_decay']}, train {problem.info['train_metrics']}, "
                             f"test {problem.info['test_metrics']}")
    return out, info, scores


def lm_task(s: dict, cfg, world) -> tuple[list[dict], dict, pd.DataFrame]:
    seed = int(cfg.seed)
    data = training_data(world)
    n = data["input_ids"].shape[0]
    if int(s["bregman_subset"]) < int(s["lm_train_sequences"]):
        raise InfluenceError("accuracy.bregman_subset must be >= lm_train_sequences: the scored sequences are drawn "
                             "from the Bregman subset (the PBO's −ε side is unbounded for a sequence outside it)")
    fit_rows = sample_indices(n, int(s["bregman_subset"]), seed)
    rows = fit_rows[sample_indices(len(fit_rows), int(s["lm_train_sequences"]), seed + 1)]
    queries = list(world.queries)[: int(s["lm_queries"])]
    encoded = encode_stage(world, queries)
    fit_data = {k: v[fit_rows] for k, v in data.items()}
    methods = list(s["methods"])
    dtype = getattr(torch, str(s["lm_pbrf_dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise InfluenceError(f"accuracy.lm_pbrf_dtype={s['lm_pbrf_dtype']!r} is not a torch dtype: use float64 or float32")
    pbrf = {**s["pbrf"], **s["lm_pbrf"], "epsilon": float(s["lm_epsilon"]), "dtype": dtype, "batch_size": 16}
    out, info, scores = compare(world.model, LanguageModelTask(), tracked_layers(cfg, world.model), fit_data, data,
                                rows, encoded, [q.name for q in queries], methods,
                                _method_options(s, methods, seed, s["lm_lissa"]), pbrf, "lm", int(s["linearity_rows"]),
                                float(s["linearity_tol"]), int(s["tolerance_rows"]))
    info["lm/model"] = world.name
    return out, info, scores


@register("accuracy")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    s = settings(cfg)
    unknown = sorted(set(s["tasks"]) - {"diabetes", "digits", "lm"})
    if unknown:
        raise InfluenceError(f"accuracy.tasks has unknown task(s) {unknown}: choose from diabetes, digits, lm")
    rows, info, scores = [], {}, []
    t0 = time.perf_counter()
    for name in s["tasks"]:
        with single_thread(cfg.score.get("num_threads") == 1):
            r, i, sc = lm_task(s, cfg, world) if name == "lm" else tabular_task(name, s, cfg)
        rows += r
        info.update(i)
        scores.append(sc)
    long = pd.DataFrame(rows)
    summary = summary_table(long)
    unverified = [t for t in s["tasks"] if not (info[f"{t}/pbrf_converged"] and info[f"{t}/pbrf_linear"])]
    meta = {"study": "accuracy", "pbrf_unverified_tasks": ",".join(unverified),
            "settings": OmegaConf.to_yaml(OmegaConf.create(s)), "seconds": time.perf_counter() - t0,
            "pbrf": "central difference at ±epsilon; Bregman term over the fitting rows; EK-FAC's per-layer damping "
                    "(also given to K-FAC and LiSSA); f = loss on the test point (tabular), log p(completion|prompt) (LM)",
            **{k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()}}
    return {"accuracy": long, "accuracy_summary": summary, "accuracy_scores": pd.concat(scores, ignore_index=True),
            "_metadata": pd.DataFrame([meta])}
