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
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy import stats
from tqdm import tqdm

from analysis.accuracy import correlation_bars, correlation_vs_time, summary_table
from analysis.figures import figure
from analysis.scorecard import Finding, estimators_vs_pbrf
from embedded.tabular import build_tabular
from influence import InfluenceError, LanguageModelTask, compute_scores, fit_curvature
from influence.batching import sample_indices
from influence.pbrf import PBRFArguments, pbrf_scores
from influence.threads import single_thread

from ..pipeline.stages import encode_stage, tracked_layers, training_data
from .registry import Study, option

log = logging.getLogger(__name__)

TASKS = ("diabetes", "digits", "lm")
_TABULAR_BUILD_KEYS = ("hidden", "activation", "weight_decay", "grad_tol", "max_iter")
#: what `accuracy.tabular.<task>` may set: the study-wide row counts and ε for that task, and how its MLP is built
TABULAR_KEYS = ("max_train_points", "bregman_rows", "epsilon", "n_test_points", *_TABULAR_BUILD_KEYS)


@dataclass
class LissaOptions:
    depth: int = option(500, "LiSSA recursion depth")
    batch_size: int = option(32, "LiSSA batch size")


@dataclass
class PBRFOptions:
    optimizer: str = option("lbfgs", "lbfgs, or adam (the paper's, which stalls on these ill-conditioned objectives)")
    lr: float = option(0.01, "Adam only: step size on u = (θ − θs)/ε")
    max_steps: int = option(3000, "objective/gradient evaluations per solve")
    tol: float = option(1e-3, "converged: ‖∇J‖ ≤ tol · ‖∇L(z_m)‖")
    patience: int = option(20, "Adam only: steps without progress before halving the step size")
    history: int = option(100, "L-BFGS only: curvature pairs kept")
    precondition: str = option("none", "ekfac: optimizer variables preconditioned by EK-FAC (same minimizer and test)")
    warm_start: str = option("none", "mirror: the −ε solve starts at the +ε solution reflected through θs")

    def __post_init__(self):
        if self.precondition not in ("none", "ekfac"):
            raise InfluenceError(f"accuracy pbrf.precondition={self.precondition!r}: use none or ekfac")


@dataclass
class Options:
    tasks: list[str] = option(help="of diabetes, digits, lm", factory=lambda: list(TASKS))
    methods: list[str] = option(
        help="estimators compared; ekfac is required (its damping defines the PBRF target)",
        factory=lambda: ["ekfac", "kfac", "lissa", "identity"],
    )
    n_test_points: int = option(10, "random test points per tabular task (f = loss on the point)")
    max_train_points: int = option(500, "training points whose influence is compared")
    test_fraction: float = option(0.2, "seeded train/test split of the tabular data")
    epsilon: float = option(1e-3, "PBRF weight of z_m; must stay well below 1/N (N = Bregman rows)")
    lissa: LissaOptions = option(help="LiSSA's settings on the tabular tasks", factory=LissaOptions)
    pbrf: PBRFOptions = option(help="the PBRF solver", factory=PBRFOptions)
    linearity_rows: int = option(10, "scored rows re-solved at ε/2 (0: no check, and pbrf_linear is False)")
    linearity_tol: float = option(0.05, "‖s(ε) − s(ε/2)‖ / ‖s(ε/2)‖ above this: the PBRF is not in its linear regime")
    tolerance_rows: int = option(0, "scored rows re-solved at tol/10 (3x max_steps): how far the ground truth moves")
    tabular: dict[str, dict[str, Any]] = option(
        help=f"per tabular task: any of {', '.join(TABULAR_KEYS)}",
        factory=lambda: {"digits": {"max_train_points": 100, "bregman_rows": 400, "epsilon": 5e-4}},
    )
    lm_train_sequences: int = option(20, "LM: training sequences whose influence on each query is compared")
    lm_queries: int = option(5, "LM: the world's first queries (f = log p(completion | prompt))")
    bregman_subset: int = option(32, "LM: fitting sequences for G and the Bregman term")
    lm_epsilon: float = option(1e-3, "LM: the PBRF's ε")
    lm_lissa: LissaOptions = option(help="LM: LiSSA's settings", factory=lambda: LissaOptions(depth=100, batch_size=8))
    lm_pbrf_dtype: str = option("float64", "LM: the PBRF's dtype (float64 or float32)")
    lm_pbrf: dict[str, Any] = option(help="LM: overrides of `pbrf`", factory=lambda: {"tol": 1e-3, "max_steps": 3000})

    def __post_init__(self):
        if sorted(set(self.tasks) - set(TASKS)):
            raise InfluenceError(
                f"accuracy.tasks has unknown task(s) {sorted(set(self.tasks) - set(TASKS))}: "
                f"choose from {', '.join(TASKS)}"
            )
        if "ekfac" not in self.methods:
            raise InfluenceError("accuracy.methods must include ekfac: its per-layer damping defines the PBRF target")
        if self.n_test_points < 1 or self.lm_queries < 1 or self.lm_train_sequences < 3:
            raise InfluenceError("accuracy needs n_test_points >= 1, lm_queries >= 1 and lm_train_sequences >= 3")
        if self.linearity_rows < 0 or not self.linearity_tol > 0 or self.tolerance_rows < 0:
            raise InfluenceError("accuracy needs linearity_rows >= 0, tolerance_rows >= 0 and linearity_tol > 0")
        for name, per in self.tabular.items():
            unknown = sorted(set(per or {}) - set(TABULAR_KEYS))
            if unknown:
                raise InfluenceError(f"accuracy.tabular.{name}: no setting(s) {unknown}: use {', '.join(TABULAR_KEYS)}")
            if name not in TASKS[:2]:
                raise InfluenceError(f"accuracy.tabular.{name}: not a tabular task: use {', '.join(TASKS[:2])}")
        unknown = sorted(set(self.lm_pbrf) - {f.name for f in fields(PBRFOptions)})
        if unknown:
            raise InfluenceError(
                f"accuracy.lm_pbrf has no setting(s) {unknown}: it overrides pbrf's "
                f"{', '.join(f.name for f in fields(PBRFOptions))}"
            )
        if not isinstance(getattr(torch, self.lm_pbrf_dtype, None), torch.dtype):
            raise InfluenceError(
                f"accuracy.lm_pbrf_dtype={self.lm_pbrf_dtype!r} is not a torch dtype: use float64 or float32"
            )
        if "lm" in self.tasks and self.bregman_subset < self.lm_train_sequences:
            raise InfluenceError(
                "accuracy.bregman_subset must be >= lm_train_sequences: the scored sequences are "
                "drawn from the Bregman subset (the PBO's −ε side is unbounded for a sequence "
                "outside it)"
            )


def _correlations(est: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    x, y = est.double().numpy(), truth.double().numpy()
    if np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def compare(
    model,
    task,
    layers,
    fit_data,
    score_data,
    score_rows,
    queries,
    query_names,
    methods,
    method_options,
    pbrf_options,
    task_name,
    linearity_rows: int = 10,
    linearity_tol: float = 0.05,
    tolerance_rows: int = 0,
) -> tuple[list[dict], dict, pd.DataFrame]:
    """Every estimator and the PBRF on (queries × score_rows): one row per (method, query), PBRF stats, and
    every score (long: task, test point, training row, method incl. "pbrf")."""
    if "ekfac" not in methods:
        raise InfluenceError("accuracy.methods must include ekfac: its per-layer damping defines the PBRF target")
    fitted, seconds = {}, {}
    for method in ["ekfac"] + [m for m in methods if m != "ekfac"]:
        t0 = time.perf_counter()
        curv = fit_curvature(model, task, fit_data, method=method, layers=layers, **method_options.get(method, {}))
        if method != "ekfac" and any(curv.damping.values()):  # a damped method: the λ_ℓ of EK-FAC and the PBRF
            # (an undamped one, the dot product, stays undamped)
            own = ";".join(f"{k}={v:.6g}" for k, v in curv.damping.items())
            curv = curv.with_damping(fitted["ekfac"][0].damping)
            curv.info["own_damping"] = own
        result = compute_scores(model, task, curv, queries, score_data, indices=score_rows)
        seconds[method] = time.perf_counter() - t0
        fitted[method] = (curv, result.scores)
        log.info("%s %s: %.2fs", task_name, method, seconds[method])
    damping = fitted["ekfac"][0].damping
    options = {**pbrf_options, "on_failure": "record"}
    precondition = str(options.pop("precondition", "none"))
    if precondition not in ("none", "ekfac"):
        raise InfluenceError(f"accuracy pbrf.precondition={precondition!r}: use none or ekfac")
    preconditioner = fitted["ekfac"][0] if precondition == "ekfac" else None

    def solve(rows, label: str, **changes):
        """The PBRF of `rows` with `options` changed by `changes`, with a progress bar."""
        with tqdm(total=len(rows), desc=f"{task_name} PBRF{label}", unit="row", mininterval=5.0) as bar:
            return pbrf_scores(
                model,
                task,
                score_data,
                queries,
                damping,
                PBRFArguments(**{**options, **changes}),
                bregman_data=fit_data,
                indices=rows,
                layers=layers,
                preconditioner=preconditioner,
                progress=bar.update,
            )

    def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
        return float((a - ref).norm() / ref.norm()) if ref.norm() > 0 else math.nan

    t0 = time.perf_counter()
    truth = solve(score_rows, "")
    pbrf_seconds = time.perf_counter() - t0
    log.info(
        "%s PBRF: %.1fs, evaluations per solve %.0f (max %d), gradient ratio max %.3g (tol %g)",
        task_name,
        pbrf_seconds,
        float(truth.steps.double().mean()),
        int(truth.steps.max()),
        float(truth.grad_norm.max()),
        float(truth.metadata["tol"]),
    )
    # linear regime: the central differences at ε/2 on the first rows must agree with ε's
    k = min(int(linearity_rows), len(score_rows))
    half_diff, half_converged = math.nan, False
    if k > 0:
        t1 = time.perf_counter()
        half = solve(score_rows[:k], " at ε/2", epsilon=truth.epsilon / 2)
        half_diff = rel_diff(truth.scores[:, :k], half.scores)
        half_converged = half.converged
        log.info(
            "%s PBRF at ε/2 on %d rows: relative difference %.3g (%.1fs)",
            task_name,
            k,
            half_diff,
            time.perf_counter() - t1,
        )
    # truncation: the first rows solved to a tenth of the tolerance; how far the ground truth moves
    kt = min(int(tolerance_rows), len(score_rows))
    tight_diff, tight_ratio = math.nan, math.nan
    if kt > 0:
        t1 = time.perf_counter()
        tight = solve(
            score_rows[:kt], " at tol/10", tol=float(options["tol"]) / 10, max_steps=3 * int(options["max_steps"])
        )
        tight_diff = rel_diff(truth.scores[:, :kt], tight.scores)
        tight_ratio = float(tight.grad_norm.max())
        log.info(
            "%s PBRF at tol/10 on %d rows: relative difference %.3g, gradient ratio max %.3g (%.1fs)",
            task_name,
            kt,
            tight_diff,
            tight_ratio,
            time.perf_counter() - t1,
        )
    converged = bool(truth.converged and (half_converged or k == 0))
    linear = bool(k > 0 and half_diff <= float(linearity_tol))
    if not (converged and linear):
        log.warning(
            "%s: the PBRF ground truth is NOT verified (converged=%s, gradient ratio max %.3g vs tol %g; "
            "ε vs ε/2 relative difference %.3g vs %g): its correlations are reported but flagged",
            task_name,
            converged,
            float(truth.grad_norm.max()),
            float(truth.metadata["tol"]),
            half_diff,
            linearity_tol,
        )
    rows = []
    for method in methods:
        scores = fitted[method][1]
        for qi, qname in enumerate(query_names):
            p, s = _correlations(scores[qi], truth.scores[qi])
            rows.append(
                {
                    "task": task_name,
                    "method": method,
                    "test_point": qname,
                    "pearson": p,
                    "spearman": s,
                    "seconds": seconds[method],
                    "n_train_points": len(score_rows),
                    "pbrf_seconds": pbrf_seconds,
                    "pbrf_converged": converged,
                    "pbrf_linear": linear,
                    "pbrf_grad_ratio_max": float(truth.grad_norm.max()),
                    "pbrf_eps_half_rel_diff": half_diff,
                }
            )
    info = {
        f"{task_name}/pbrf_seconds": pbrf_seconds,
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
        **{f"{task_name}/{m}_seconds": seconds[m] for m in methods},
    }
    for m, (curv, _) in fitted.items():
        if "own_damping" in curv.info:
            info[f"{task_name}/{m}_own_damping"] = curv.info["own_damping"]
    if "lissa" in fitted:
        info[f"{task_name}/lissa_scale"] = fitted["lissa"][0].info.get("scale", "")
        info[f"{task_name}/lissa_final_relative_step_max"] = fitted["lissa"][0].diagnostics.get(
            "final_relative_step", ""
        )
    train_rows = [int(r) for r in score_rows]
    scores = pd.DataFrame(
        [
            {"task": task_name, "test_point": qname, "train_row": r, "method": method, "score": float(mat[qi, j])}
            for method, mat in [("pbrf", truth.scores)] + [(m, fitted[m][1]) for m in methods]
            for qi, qname in enumerate(query_names)
            for j, r in enumerate(train_rows)
        ]
    )
    return rows, info, scores


def _method_options(methods: list[str], seed: int, lissa: LissaOptions) -> dict:
    opts = {m: {"seed": seed} for m in methods if m != "identity"}
    if "lissa" in opts:
        opts["lissa"].update(asdict(lissa))
    return opts


def tabular_task(name: str, opts: Options, cfg) -> tuple[list[dict], dict, pd.DataFrame]:
    seed = int(cfg.seed)
    per = dict(opts.tabular.get(name) or {})  # this task's settings; the study-wide ones otherwise
    problem = build_tabular(
        name,
        output_dir=cfg.paths.output_dir,
        seed=seed,
        test_fraction=opts.test_fraction,
        **{k: per[k] for k in _TABULAR_BUILD_KEYS if k in per},
    )
    n_train, n_test = problem.train["x"].shape[0], problem.test["x"].shape[0]
    # the scored rows lie inside the Bregman rows: otherwise the −ε side of the PBO has nothing anchoring
    # h(x_m) but the proximity term, and is unbounded below for small damping
    fit_rows = sample_indices(n_train, per.get("bregman_rows"), seed + 1)
    rows = fit_rows[sample_indices(len(fit_rows), int(per.get("max_train_points", opts.max_train_points)), seed)]
    fit_data = {k: v[fit_rows] for k, v in problem.train.items()}
    test_rows = sample_indices(n_test, int(per.get("n_test_points", opts.n_test_points)), seed + 2)
    queries = {k: v[test_rows] for k, v in problem.test.items()}
    methods = list(opts.methods)
    pbrf = {**asdict(opts.pbrf), "epsilon": float(per.get("epsilon", opts.epsilon))}
    out, info, scores = compare(
        problem.model,
        problem.task,
        problem.layers,
        fit_data,
        problem.train,
        rows,
        queries,
        [f"test_{int(i)}" for i in test_rows],
        methods,
        _method_options(methods, seed, opts.lissa),
        pbrf,
        name,
        opts.linearity_rows,
        opts.linearity_tol,
        opts.tolerance_rows,
    )
    info[f"{name}/model"] = (
        f"MLP {problem.info['hidden']} {problem.info['activation']}, weight decay "
        f"{problem.info['weight_decay']}, train {problem.info['train_metrics']}, "
        f"test {problem.info['test_metrics']}"
    )
    return out, info, scores


def lm_task(opts: Options, cfg, world) -> tuple[list[dict], dict, pd.DataFrame]:
    seed = int(cfg.seed)
    data = training_data(world)
    n = data["input_ids"].shape[0]
    fit_rows = sample_indices(n, opts.bregman_subset, seed)
    rows = fit_rows[sample_indices(len(fit_rows), opts.lm_train_sequences, seed + 1)]
    queries = list(world.queries)[: opts.lm_queries]
    encoded = encode_stage(world, queries)
    fit_data = {k: v[fit_rows] for k, v in data.items()}
    methods = list(opts.methods)
    pbrf = {
        **asdict(opts.pbrf),
        **opts.lm_pbrf,
        "epsilon": float(opts.lm_epsilon),
        "dtype": getattr(torch, opts.lm_pbrf_dtype),
        "batch_size": 16,
    }
    out, info, scores = compare(
        world.model,
        LanguageModelTask(),
        tracked_layers(cfg, world.model),
        fit_data,
        data,
        rows,
        encoded,
        [q.name for q in queries],
        methods,
        _method_options(methods, seed, opts.lm_lissa),
        pbrf,
        "lm",
        opts.linearity_rows,
        opts.linearity_tol,
        opts.tolerance_rows,
    )
    info["lm/model"] = world.name
    return out, info, scores


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    rows, info, scores = [], {}, []
    t0 = time.perf_counter()
    for name in opts.tasks:
        with single_thread(cfg.score.num_threads == 1):
            r, i, sc = lm_task(opts, cfg, world) if name == "lm" else tabular_task(name, opts, cfg)
        rows += r
        info.update(i)
        scores.append(sc)
    long = pd.DataFrame(rows)
    summary = summary_table(long)
    unverified = [t for t in opts.tasks if not (info[f"{t}/pbrf_converged"] and info[f"{t}/pbrf_linear"])]
    meta = {
        "study": "accuracy",
        "pbrf_unverified_tasks": ",".join(unverified),
        "settings": OmegaConf.to_yaml(OmegaConf.structured(opts)),
        "seconds": time.perf_counter() - t0,
        "pbrf": "central difference at ±epsilon; Bregman term over the fitting rows; EK-FAC's per-layer damping "
        "(also given to K-FAC and LiSSA); f = loss on the test point (tabular), log p(completion|prompt) (LM)",
        **{k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()},
    }
    return {
        "accuracy": long,
        "accuracy_summary": summary,
        "accuracy_scores": pd.concat(scores, ignore_index=True),
        "_metadata": pd.DataFrame([meta]),
    }


STUDY = Study(
    name="accuracy",
    title="How accurate is EK-FAC? The PBRF ground truth",
    where="§5.1, Figs. 6–7",
    order=30,
    run=run,
    options=Options,
    figures=(
        figure("fig6_accuracy", correlation_bars, "accuracy_summary"),
        figure("fig7_accuracy_vs_time", correlation_vs_time, "accuracy_summary"),
    ),
    findings=(
        Finding(
            "EK-FAC ≈ LiSSA ≫ dot product against the PBRF",
            "EK-FAC and LiSSA similar, both well above the dot product",
            "per task |EK-FAC − LiSSA| ≤ 0.1 and EK-FAC − dot ≥ 0.1 (Pearson)",
            estimators_vs_pbrf,
        ),
    ),
    long_tables=frozenset({"accuracy_scores"}),
)
