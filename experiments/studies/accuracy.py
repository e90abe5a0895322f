"""How accurate are the estimators? EK-FAC, K-FAC, LiSSA and the dot product against two references: the PBRF
and the exact damped Gauss–Newton influence (Figs. 6–7, spec §5), across a damping sweep.

Per task, every estimator is the `influence` library's (`fit_curvature` + `compute_scores`, same layers,
same data). Two references, each with EK-FAC's per-layer damping λ_ℓ = `damping_factor` × the mean eigenvalue of
EK-FAC's G_ℓ (K-FAC and LiSSA are given that same damping too, so every method targets the same (G + λI)⁻¹; the
identity is the undamped dot product):
- the PBRF, `influence.pbrf.pbrf_scores` (the paper's ground truth, nonlinear in ε);
- the exact damped Gauss–Newton influence, `influence.exact.ExactGaussNewton`: (G + λI)⁻¹∇f solved over all
  tracked layers jointly (cross-layer blocks kept), G the exact Gauss–Newton over the fitting rows (the PBRF's
  Hessian at θs), dense for a few thousand parameters and by EK-FAC-preconditioned conjugate gradients otherwise.
  It is the PBRF's linearization, so an estimator's distance to it is estimator error alone, and the PBRF's
  distance to it (the `pbrf` method's rows against `exact_gn`) is the PBRF's nonlinearity and truncation.
Tasks: the tabular regression and classification of `embedded.tabular` (f = loss on a random test point; G and the
Bregman term over the training rows, or a configured subset) and the world's language model (f = log p(completion
| prompt) of its first queries; G and the Bregman term over a fixed subset of training sequences). The scored
training rows are drawn from the Bregman rows. `exact.tasks` chooses the tasks with the exact reference.

The tabular models are trained as a practitioner would: `weight_decay` "auto" chooses it on held-out loss
(`embedded.tabular.select_weight_decay`) before any influence is computed, and their train/test loss and accuracy
are in the metadata (`task` keeps each task's fixed value, the saturated variant). A third, retraining-based
reference on the tabular tasks, the linear datamodeling score (`lds`; `analysis.lds`): `lds.n_subsets` models
retrained from scratch on random `lds.fraction` subsets (`embedded.tabular.retrain_on_subsets`), and per method the
Spearman r over subsets between its summed scores of each subset's rows (every training row scored, main
damping) and the retrained model's f on the test point (tables `accuracy_lds`, `accuracy_lds_summary`).

Damping sweep: at every factor of `damping_factors` (and `damping_factor`, the main one, which Figs. 6–7 and the
scorecard read) every method is fitted with that factor and compared with the exact reference at EK-FAC's damping
for it. The PBRF depends on the damping too, and each solve costs hundreds of objective evaluations per training
row, so it is solved at the main damping only: the sweep compares the methods with the exact reference.

The references are checked, not assumed. PBRF: every solve must reach `pbrf.tol` (gradient norm relative to
‖∇L(z_m)‖) within `pbrf.max_steps` evaluations, and on the first `linearity_rows` scored rows the PBRF is
solved again at ε/2, whose central differences must agree with ε's to `linearity_tol` (relative norm). A
task that fails either check is not dropped or fatal: its correlations are still computed, but every
row of the tables carries `pbrf_converged` / `pbrf_linear` = False, the achieved gradient ratio and the
ε vs ε/2 disagreement, the figures label it, and the metadata lists it under `pbrf_unverified_tasks`.
With `tolerance_rows` > 0 the first rows are also solved to tol/10 and the relative change of their scores is
reported (`pbrf_tol10_rel_diff`): the ground truth's own truncation error at the chosen tolerance. Exact GN:
verified when its measured relative residual max_q ‖(G + λI)x_q − ∇f_q‖/‖∇f_q‖ is at most `exact.tol`
(`exact_relative_residual`; failures listed under `exact_unverified_tasks`). Every row says whether its
reference was verified (`reference_verified`), and LiSSA's rows carry its own measured residual
(`lissa_relative_residual`, where the LiSSA implementation reports one).

Tables: `accuracy` (one row per task × damping factor × reference × method × test point: Pearson and Spearman
r, the method's seconds, fitting included), `accuracy_summary` (mean ± standard error over test points per task ×
damping × reference × method), `accuracy_scores` (every score, each method's, the exact reference's and the
PBRF's, per damping, test point and training row), `accuracy_lds` / `accuracy_lds_summary` (the LDS per method and
test point, and its mean with a bootstrap interval) and `_summary` (the comparison with the paper's
"EK-FAC ≈ LiSSA ≫ dot product", per reference, computed from the main damping's numbers, and each task's LDS).
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

from analysis.accuracy import (
    correlation_bars,
    correlation_vs_damping,
    correlation_vs_time,
    lds_bars,
    paper_comparison,
    summary_table,
)
from analysis.figures import figure
from analysis.lds import lds_summary, linear_datamodeling_score
from analysis.scorecard import Finding, estimators_vs_pbrf
from embedded.tabular import build_tabular, is_auto_weight_decay, retrain_on_subsets
from influence import InfluenceError, LanguageModelTask, compute_scores, fit_curvature
from influence.batching import sample_indices
from influence.exact import ExactGaussNewton
from influence.pbrf import PBRFArguments, pbrf_scores
from influence.threads import single_thread

from ..pipeline.stages import encode_stage, tracked_layers, training_data
from .registry import Study, option

log = logging.getLogger(__name__)

TASKS = ("diabetes", "digits", "lm")
REFERENCES = ("pbrf", "exact_gn")
_TABULAR_BUILD_KEYS = ("hidden", "activation", "weight_decay", "grad_tol", "max_iter")
#: what `accuracy.tabular.<task>` may set: the study-wide row counts and ε for that task, and how its MLP is built
TABULAR_KEYS = ("max_train_points", "bregman_rows", "epsilon", "n_test_points", *_TABULAR_BUILD_KEYS)


@dataclass
class LissaOptions:
    depth: int = option(500, "LiSSA recursion depth (the first stage, with tolerance)")
    batch_size: int = option(32, "LiSSA batch size")
    tolerance: float | None = option(None, "go deeper (doubling) until the relative residual is at most this")
    max_depth: int = option(6400, "the most steps tolerance may take a solve to")


@dataclass
class LDSOptions:
    n_subsets: int = option(100, "retrained models per tabular task (0: no LDS); each a from-scratch L-BFGS fit")
    fraction: float = option(0.5, "share of the training rows in each subset")
    tasks: list[str] = option(help="tabular tasks with the LDS", factory=lambda: list(TASKS[:2]))
    vary_init: bool = option(False, "each retrain from its own seeded initialization (default: the model's)")

    def __post_init__(self):
        if sorted(set(self.tasks) - set(TASKS[:2])):
            raise InfluenceError(f"accuracy.lds.tasks: {sorted(set(self.tasks) - set(TASKS[:2]))} not tabular tasks")
        if self.n_subsets < 0 or (0 < self.n_subsets < 3) or not 0 < self.fraction < 1:
            raise InfluenceError("accuracy.lds needs n_subsets = 0 or >= 3 and a fraction in (0, 1)")


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
    batch_size: int = option(
        1024,
        "Bregman rows per forward/backward chunk (LM: 4, see lm_pbrf; length-sorted, so small chunks carry "
        "little padding)",
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise InfluenceError(f"accuracy pbrf.batch_size={self.batch_size!r}: use an integer >= 1")
        if self.precondition not in ("none", "ekfac"):
            raise InfluenceError(f"accuracy pbrf.precondition={self.precondition!r}: use none or ekfac")


@dataclass
class ExactOptions:
    tasks: list[str] = option(
        help="tasks with the exact GN reference (of diabetes, digits, lm)", factory=lambda: list(TASKS)
    )
    method: str = option("auto", "auto (dense up to dense_max_params tracked parameters, else cg), dense or cg")
    tol: float = option(1e-8, "verified: relative residual ‖(G+λI)x − ∇f‖/‖∇f‖ ≤ tol (CG iterates until it)")
    max_iter: int = option(4000, "CG: at most this many iterations (each a GN product over every fitting row)")
    precondition: str = option(
        "none", "ekfac: CG preconditioned by EK-FAC at the same damping (same answer; fewer or more iterations)"
    )
    dense_max_params: int = option(2000, "auto: the dense G when the tracked parameters are at most this many")
    batch_size: int = option(64, "fitting rows per Gauss–Newton product batch")

    def __post_init__(self):
        if sorted(set(self.tasks) - set(TASKS)):
            raise InfluenceError(f"accuracy.exact.tasks: unknown task(s) {sorted(set(self.tasks) - set(TASKS))}")
        if self.method not in ("auto", "dense", "cg") or self.precondition not in ("none", "ekfac"):
            raise InfluenceError(
                f"accuracy.exact: method={self.method!r} (use auto, dense or cg), "
                f"precondition={self.precondition!r} (use ekfac or none)"
            )
        if not self.tol > 0 or self.max_iter < 1 or self.batch_size < 1:
            raise InfluenceError("accuracy.exact needs tol > 0, max_iter >= 1 and batch_size >= 1")


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
    weight_decay: Any = option(
        "auto",
        "the tabular MLPs' weight decay: auto (chosen on held-out loss before any influence), a number, or `task` "
        "(each task's fixed value: the saturated variant); accuracy.tabular.<task>.weight_decay overrides",
    )
    lds: LDSOptions = option(help="the linear datamodeling score from retrained tabular models", factory=LDSOptions)
    epsilon: Any = option(
        "auto",
        "PBRF weight of z_m: auto = epsilon_copies / N (N = Bregman rows), or a number, which must stay well "
        "below 1/N; accuracy.tabular.<task>.epsilon overrides",
    )
    epsilon_copies: float = option(
        0.1, "auto ε in copies of z_m: ε = epsilon_copies / N (1/N is one added copy; spec §2)"
    )
    lissa: LissaOptions = option(
        help="LiSSA's settings on the tabular tasks",
        factory=lambda: LissaOptions(depth=1000, batch_size=32, tolerance=0.01, max_depth=32000),
    )
    pbrf: PBRFOptions = option(help="the PBRF solver", factory=PBRFOptions)
    linearity_rows: int = option(10, "scored rows re-solved at ε/2 (0: no check, and pbrf_linear is False)")
    linearity_tol: float = option(0.05, "‖s(ε) − s(ε/2)‖ / ‖s(ε/2)‖ above this: the PBRF is not in its linear regime")
    tolerance_rows: int = option(0, "scored rows re-solved at tol/10 (3x max_steps): how far the ground truth moves")
    damping_factor: float = option(
        0.1, "the main damping: λ_ℓ = factor × the mean eigenvalue of EK-FAC's G_ℓ (Figs. 6–7, the PBRF, the scorecard)"
    )
    damping_factors: list[float] = option(
        help="the sweep: every method and the exact GN at each factor (the PBRF at damping_factor only); [] for none",
        factory=lambda: [0.01, 0.1, 1.0, 10.0],
    )
    exact: ExactOptions = option(help="the exact damped Gauss–Newton reference", factory=ExactOptions)
    tabular: dict[str, dict[str, Any]] = option(
        help=f"per tabular task: any of {', '.join(TABULAR_KEYS)}",
        factory=lambda: {"digits": {"max_train_points": 100, "bregman_rows": 400}},
    )
    lm_train_sequences: int = option(20, "LM: training sequences whose influence on each query is compared")
    lm_queries: int = option(5, "LM: the world's first queries (f = log p(completion | prompt))")
    bregman_subset: int = option(32, "LM: fitting sequences for G and the Bregman term")
    lm_epsilon: Any = option(
        1e-3, "LM: the PBRF's ε, a number (1e-3: 0.03 copies over 32 sequences) or auto (epsilon_copies / bregman_subset)"
    )
    lm_lissa: LissaOptions = option(help="LM: LiSSA's settings", factory=lambda: LissaOptions(depth=100, batch_size=8))
    lm_pbrf_dtype: str = option("float64", "LM: the PBRF's dtype (float64 or float32)")
    lm_pbrf: dict[str, Any] = option(
        help="LM: overrides of `pbrf`", factory=lambda: {"tol": 1e-3, "max_steps": 3000, "batch_size": 4}
    )
    lm_exact: dict[str, Any] = option(
        help="LM: overrides of `exact` (its CG converges slowly: a budget)",
        factory=lambda: {"max_iter": 500, "precondition": "ekfac", "batch_size": 4},
    )

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
        for where, eps in [("epsilon", self.epsilon), ("lm_epsilon", self.lm_epsilon)] + [
            (f"tabular.{t}.epsilon", per["epsilon"]) for t, per in self.tabular.items() if "epsilon" in (per or {})
        ]:
            if not (str(eps) == "auto" or (isinstance(eps, (int, float)) and eps > 0)):
                raise InfluenceError(f"accuracy.{where}={eps!r}: use auto (epsilon_copies / N) or a number > 0")
        if not 0 < self.epsilon_copies <= 0.5:
            raise InfluenceError(
                f"accuracy.epsilon_copies={self.epsilon_copies!r}: use a share of one copy in (0, 0.5] "
                "(the PBRF's central difference is only linear well below one copy)"
            )
        if str(self.weight_decay) != "task":
            is_auto_weight_decay(self.weight_decay)  # a number or auto: checked now, not after the first task
        if not all(f > 0 for f in [self.damping_factor, *self.damping_factors]):
            raise InfluenceError("accuracy.damping_factor and every accuracy.damping_factors value must be > 0")
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
        PBRFOptions(**{**asdict(self.pbrf), **self.lm_pbrf})  # checked now, not after the tabular tasks
        unknown = sorted(set(self.lm_exact) - {f.name for f in fields(ExactOptions)} | ({"tasks"} & set(self.lm_exact)))
        if unknown:
            raise InfluenceError(
                f"accuracy.lm_exact has no setting(s) {unknown}: it overrides exact's "
                f"{', '.join(f.name for f in fields(ExactOptions) if f.name != 'tasks')}"
            )
        ExactOptions(**{**asdict(self.exact), **self.lm_exact})  # checked now, not after the tabular tasks
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

    @property
    def factors(self) -> list[float]:
        """The main damping factor first, then the sweep's others (each once)."""
        out = [float(self.damping_factor)]
        for f in self.damping_factors:
            if not any(math.isclose(f, g, rel_tol=1e-9) for g in out):
                out.append(float(f))
        return out


def _correlations(est: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    x, y = est.double().numpy(), truth.double().numpy()
    if np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


@dataclass
class Comparison:
    """One task: the model, the fitting rows (G, the Bregman term, every method's fit), the scored rows and the
    queries, each method's fitting options (without the damping factor) and the PBRF's options."""

    name: str
    model: Any
    task: Any
    layers: list
    fit_data: dict
    score_data: dict
    score_rows: torch.Tensor
    queries: dict
    query_names: list[str]
    method_options: dict
    pbrf: dict
    exact: ExactOptions | None  # None: no exact reference for this task
    every_row: bool = False  # also score every row of score_data at the main damping (the LDS's datamodel)


def _fit_methods(c: Comparison, methods: list[str], factor: float, every_row: bool = False) -> tuple[dict, dict]:
    """Every method fitted with damping `factor`, the damped ones then given EK-FAC's λ_ℓ (an undamped one, the dot
    product, stays undamped), and scored: ({method: (curvature, scores)}, {method: seconds, fitting included}).
    Scores are of `c.score_rows`, or with `every_row` of every row of `c.score_data` (one solve serves both)."""
    fitted, seconds = {}, {}
    for method in ["ekfac"] + [m for m in methods if m != "ekfac"]:
        t0 = time.perf_counter()
        own = dict(c.method_options.get(method, {}))
        if method in c.method_options:
            own["damping_factor"] = factor
        curv = fit_curvature(c.model, c.task, c.fit_data, method=method, layers=c.layers, **own)
        if method != "ekfac" and any(curv.damping.values()):  # a damped method: the λ_ℓ of EK-FAC and the references
            own_damping = ";".join(f"{k}={v:.6g}" for k, v in curv.damping.items())
            curv = curv.with_damping(fitted["ekfac"][0].damping)
            curv.info["own_damping"] = own_damping
        rows = None if every_row else c.score_rows
        result = compute_scores(c.model, c.task, curv, c.queries, c.score_data, indices=rows)
        seconds[method] = time.perf_counter() - t0
        fitted[method] = (curv, result.scores)
        log.info("%s %s at damping factor %g: %.2fs", c.name, method, factor, seconds[method])
    return fitted, seconds


def _rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm()) if ref.norm() > 0 else math.nan


def _pbrf_solver(c: Comparison, ekfac):
    """solve(rows, label, **changes): the PBRF of `rows` at EK-FAC's damping, `c.pbrf` changed by `changes`."""
    options = {**c.pbrf, "on_failure": "record"}
    precondition = str(options.pop("precondition", "none"))
    if precondition not in ("none", "ekfac"):
        raise InfluenceError(f"accuracy pbrf.precondition={precondition!r}: use none or ekfac")
    preconditioner = ekfac if precondition == "ekfac" else None

    def solve(rows, label: str, **changes):
        with tqdm(total=len(rows), desc=f"{c.name} PBRF{label}", unit="row", mininterval=5.0) as bar:
            return pbrf_scores(
                c.model,
                c.task,
                c.score_data,
                c.queries,
                ekfac.damping,
                PBRFArguments(**{**options, **changes}),
                bregman_data=c.fit_data,
                indices=rows,
                layers=c.layers,
                preconditioner=preconditioner,
                progress=bar.update,
            )

    return solve, options


def _pbrf_checks(c: Comparison, opts: Options, solve, truth, tol: float, max_steps: int) -> dict:
    """The linearity check (ε/2 on the first rows) and the truncation check (tol/10): their numbers."""
    rows = c.score_rows
    k = min(int(opts.linearity_rows), len(rows))
    out = {"half_diff": math.nan, "half_converged": False, "k": k, "tight_diff": math.nan, "tight_ratio": math.nan}
    if k > 0:
        t1 = time.perf_counter()
        half = solve(rows[:k], " at ε/2", epsilon=truth.epsilon / 2)
        out["half_diff"], out["half_converged"] = _rel_diff(truth.scores[:, :k], half.scores), half.converged
        log.info(
            "%s PBRF at ε/2 on %d rows: relative difference %.3g (%.1fs)",
            c.name,
            k,
            out["half_diff"],
            time.perf_counter() - t1,
        )
    kt = out["kt"] = min(int(opts.tolerance_rows), len(rows))
    if kt > 0:
        t1 = time.perf_counter()
        tight = solve(rows[:kt], " at tol/10", tol=tol / 10, max_steps=3 * max_steps)
        out["tight_diff"], out["tight_ratio"] = (
            _rel_diff(truth.scores[:, :kt], tight.scores),
            float(tight.grad_norm.max()),
        )
        log.info(
            "%s PBRF at tol/10 on %d rows: relative difference %.3g, gradient ratio max %.3g (%.1fs)",
            c.name,
            kt,
            out["tight_diff"],
            out["tight_ratio"],
            time.perf_counter() - t1,
        )
    return out


def pbrf_reference(c: Comparison, opts: Options, ekfac) -> tuple[Any, dict, dict]:
    """The PBRF at EK-FAC's damping, checked: (its result, the flags every row of the task carries, metadata)."""
    solve, options = _pbrf_solver(c, ekfac)
    t0 = time.perf_counter()
    truth = solve(c.score_rows, "")
    seconds = time.perf_counter() - t0
    tol = float(truth.metadata["tol"])
    log.info(
        "%s PBRF: %.1fs, evaluations per solve %.0f (max %d), gradient ratio max %.3g (tol %g)",
        c.name,
        seconds,
        float(truth.steps.double().mean()),
        int(truth.steps.max()),
        float(truth.grad_norm.max()),
        tol,
    )
    ch = _pbrf_checks(c, opts, solve, truth, float(options["tol"]), int(options["max_steps"]))
    converged = bool(truth.converged and (ch["half_converged"] or ch["k"] == 0))
    linear = bool(ch["k"] > 0 and ch["half_diff"] <= float(opts.linearity_tol))
    if not (converged and linear):
        log.warning(
            "%s: the PBRF ground truth is NOT verified (converged=%s, gradient ratio max %.3g vs tol %g; "
            "ε vs ε/2 relative difference %.3g vs %g): its correlations are reported but flagged",
            c.name,
            converged,
            float(truth.grad_norm.max()),
            tol,
            ch["half_diff"],
            opts.linearity_tol,
        )
    flags = {
        "pbrf_seconds": seconds,
        "pbrf_converged": converged,
        "pbrf_linear": linear,
        "pbrf_grad_ratio_max": float(truth.grad_norm.max()),
        "pbrf_eps_half_rel_diff": ch["half_diff"],
    }
    n = c.name
    info = {
        **{f"{n}/{k}": v for k, v in flags.items()},
        f"{n}/pbrf_evaluations_mean": float(truth.steps.double().mean()),
        f"{n}/pbrf_evaluations_max": int(truth.steps.max()),
        f"{n}/pbrf_evaluations_mean_plus": float(truth.steps[:, 0].double().mean()),
        f"{n}/pbrf_evaluations_mean_minus": float(truth.steps[:, 1].double().mean()),
        f"{n}/pbrf_tol": tol,
        f"{n}/pbrf_solves_unconverged": int((truth.grad_norm > tol).sum()),
        f"{n}/pbrf_eps_half_rows": ch["k"],
        f"{n}/pbrf_tol10_rel_diff": ch["tight_diff"],
        f"{n}/pbrf_tol10_grad_ratio_max": ch["tight_ratio"],
        f"{n}/pbrf_tol10_rows": ch["kt"],
        f"{n}/pbrf_epsilon": truth.epsilon,
        f"{n}/pbrf_epsilon_copies": truth.epsilon * truth.metadata["n_bregman"],
        f"{n}/pbrf_optimizer": truth.metadata["optimizer"],
        f"{n}/pbrf_preconditioner": truth.metadata["preconditioner"],
        f"{n}/pbrf_warm_start": truth.metadata["warm_start"],
        f"{n}/pbrf_max_steps": int(truth.metadata["max_steps"]),
        f"{n}/pbrf_batch_size": int(truth.metadata["batch_size"]),
        f"{n}/bregman_rows": truth.metadata["n_bregman"],
        f"{n}/damping": truth.metadata["damping"],
    }
    return truth, flags, info


def exact_reference(c: Comparison, ekfac, exact: ExactGaussNewton | None, every_row: bool = False):
    """The exact damped GN scores at EK-FAC's damping: (scores, seconds, its diagnostics, the operator to reuse).
    The first call builds the operator (a float64 copy of the model, the fitting batches): its time is counted.
    Scores of `c.score_rows`, or with `every_row` of every row of `c.score_data`."""
    t0 = time.perf_counter()
    if exact is None:
        e = c.exact
        exact = ExactGaussNewton.fit(
            c.model,
            c.task,
            c.fit_data,
            c.layers,
            damping=ekfac.damping,
            method=e.method,
            tol=e.tol,
            max_iter=e.max_iter,
            dense_max_params=e.dense_max_params,
            batch_size=e.batch_size,
        )
    curv = exact.with_damping(ekfac.damping)
    curv.preconditioner = ekfac if c.exact.precondition == "ekfac" else None
    rows = None if every_row else c.score_rows
    scores = compute_scores(c.model, c.task, curv, c.queries, c.score_data, indices=rows).scores
    seconds = time.perf_counter() - t0
    d = dict(curv.diagnostics)
    log.info(
        "%s exact GN (%s, %d parameters): relative residual %.3g after %d iterations, %.2fs",
        c.name,
        d.get("method"),
        exact.operator.dim,
        d.get("relative_residual", math.nan),
        d.get("iterations", 0),
        seconds,
    )
    return scores, seconds, d, exact


def _rows(c: Comparison, factor: float, main: bool, reference: str, truth, estimates: dict, common: dict) -> list:
    """One row per (estimate, test point): its Pearson and Spearman r with the reference's scores `truth`."""
    rows = []
    for method, (scores, seconds, extra) in estimates.items():
        for qi, qname in enumerate(c.query_names):
            p, s = _correlations(scores[qi], truth[qi])
            rows.append(
                {
                    "task": c.name,
                    "damping_factor": factor,
                    "main_damping": main,
                    "reference": reference,
                    "method": method,
                    "test_point": qname,
                    "pearson": p,
                    "spearman": s,
                    "seconds": seconds,
                    "n_train_points": len(c.score_rows),
                    **common,
                    "lissa_relative_residual": extra.get("lissa_relative_residual", math.nan),
                }
            )
    return rows


def _score_rows(c: Comparison, factor: float, named: list[tuple[str, torch.Tensor]]) -> list[dict]:
    train_rows = [int(r) for r in c.score_rows]
    return [
        {
            "task": c.name,
            "damping_factor": factor,
            "test_point": q,
            "train_row": r,
            "method": m,
            "score": float(mat[i, j]),
        }
        for m, mat in named
        for i, q in enumerate(c.query_names)
        for j, r in enumerate(train_rows)
    ]


def _method_info(c: Comparison, fitted: dict, seconds: dict) -> dict:
    """The main damping's metadata of the methods: seconds, own damping, LiSSA's step and residual."""
    info = {f"{c.name}/{m}_seconds": seconds[m] for m in fitted}
    for m, (curv, _) in fitted.items():
        if "own_damping" in curv.info:
            info[f"{c.name}/{m}_own_damping"] = curv.info["own_damping"]
    if "lissa" in fitted:
        curv = fitted["lissa"][0]
        info[f"{c.name}/lissa_scale"] = curv.info.get("scale", "")
        d = curv.diagnostics
        info[f"{c.name}/lissa_relative_residual"] = d.get("relative_residual", "")
        info[f"{c.name}/lissa_depth"] = d.get("depth", "")
        info[f"{c.name}/lissa_converged"] = d.get("converged", "")  # only with a tolerance
    return info


def compare(c: Comparison, opts: Options) -> tuple[list[dict], dict, pd.DataFrame, dict]:
    """Every estimator against the PBRF (at the main damping) and the exact GN (at every damping of the sweep), and
    the PBRF against the exact GN: the long table's rows, the metadata, every score (long), and with
    `c.every_row` each method's and the exact GN's scores of every row at the main damping ({name: (Q, N)})."""
    if "ekfac" not in opts.methods:
        raise InfluenceError("accuracy.methods must include ekfac: its per-layer damping defines the references")
    rows, scores, info, exact, residuals = [], [], {}, None, []
    with_exact = c.exact is not None
    pbrf, pbrf_flags, every = None, {}, {}
    factors = opts.factors if with_exact else opts.factors[:1]  # the sweep compares with the exact GN only
    for factor in factors:  # the main damping first: the PBRF's flags then go on every row
        main = factor == factors[0]
        all_rows = main and c.every_row
        fitted, seconds = _fit_methods(c, list(opts.methods), factor, all_rows)
        if all_rows:
            every = {m: sc for m, (_, sc) in fitted.items()}
            fitted = {m: (curv, sc[:, c.score_rows]) for m, (curv, sc) in fitted.items()}
        ekfac = fitted["ekfac"][0]
        estimates = {m: (fitted[m][1], seconds[m], {}) for m in opts.methods}
        if "lissa" in fitted:  # its own measured residual, where the implementation reports one
            lissa_residual = fitted["lissa"][0].diagnostics.get("relative_residual", math.nan)
            estimates["lissa"] = (*estimates["lissa"][:2], {"lissa_relative_residual": lissa_residual})
        named = [(m, fitted[m][1]) for m in opts.methods]
        ex_common = {}
        if with_exact:
            ex_scores, ex_seconds, diag, exact = exact_reference(c, ekfac, exact, all_rows)
            if all_rows:
                every["exact_gn"], ex_scores = ex_scores, ex_scores[:, c.score_rows]
            residual = float(diag.get("relative_residual", math.nan))
            residuals.append(residual)
            ex_common = {"exact_relative_residual": residual, "exact_iterations": int(diag.get("iterations", 0))}
            named.append(("exact_gn", ex_scores))
        if main:
            pbrf, pbrf_flags, pbrf_info = pbrf_reference(c, opts, ekfac)
            info.update(pbrf_info)
            info.update(_method_info(c, fitted, seconds))
            verified = bool(pbrf_flags["pbrf_converged"] and pbrf_flags["pbrf_linear"])
            common = {"reference_verified": verified, "reference_seconds": pbrf_flags["pbrf_seconds"]}
            rows += _rows(c, factor, main, "pbrf", pbrf.scores, estimates, {**common, **ex_common, **pbrf_flags})
            named.append(("pbrf", pbrf.scores))
        if with_exact:
            if main:
                estimates["pbrf"] = (pbrf.scores, pbrf_flags["pbrf_seconds"], {})
            common = {"reference_verified": residual <= c.exact.tol, "reference_seconds": ex_seconds}
            rows += _rows(c, factor, main, "exact_gn", ex_scores, estimates, {**common, **ex_common, **pbrf_flags})
            if main:
                info.update({f"{c.name}/exact_{k}": v for k, v in diag.items()})
                info[f"{c.name}/exact_seconds"] = ex_seconds
                info[f"{c.name}/exact_n_params"] = exact.operator.dim
        scores += _score_rows(c, factor, named)
    info[f"{c.name}/exact"] = with_exact
    if with_exact:
        info[f"{c.name}/exact_relative_residual_max"] = max(residuals)
        info[f"{c.name}/exact_verified"] = bool(max(residuals) <= c.exact.tol)
        info[f"{c.name}/exact_tol"] = c.exact.tol
        info[f"{c.name}/exact_max_iter"] = c.exact.max_iter
    info[f"{c.name}/damping_factors"] = ",".join(f"{f:g}" for f in factors)
    info[f"{c.name}/n_train_points"] = len(c.score_rows)
    info[f"{c.name}/n_test_points"] = len(c.query_names)
    return rows, info, pd.DataFrame(scores), every


def _method_options(methods: list[str], seed: int, lissa: LissaOptions) -> dict:
    opts = {m: {"seed": seed} for m in methods if m != "identity"}
    if "lissa" in opts:
        opts["lissa"].update(asdict(lissa))
    return opts


def _build_options(opts: Options, per: dict) -> dict:
    """build_tabular's options for one task: its own settings, then the study-wide weight decay ("task": the
    task's fixed default, i.e. no option)."""
    out = {k: per[k] for k in _TABULAR_BUILD_KEYS if k in per}
    if "weight_decay" not in out and str(opts.weight_decay) != "task":
        out["weight_decay"] = opts.weight_decay
    return out


def lds_reference(problem, c: Comparison, every: dict, opts: Options, cfg) -> tuple[list[dict], dict]:
    """The linear datamodeling score of every method (and the exact GN) at the main damping: models retrained from
    scratch on `lds.n_subsets` random subsets of the training rows, f measured on the task's test points, each
    method's scores of every training row summed per subset (`analysis.lds`). Rows per (method, test point)."""
    o = opts.lds
    record: dict = {}
    t0 = time.perf_counter()
    masks, outputs = retrain_on_subsets(
        problem,
        o.n_subsets,
        o.fraction,
        seed=int(cfg.seed) + 3,
        queries=c.queries,
        output_dir=cfg.paths.output_dir,
        vary_init=o.vary_init,
        record=record,
    )
    seconds = time.perf_counter() - t0
    rows, info = [], {}
    for method, scores in every.items():
        res = linear_datamodeling_score(scores, masks, outputs, seed=int(cfg.seed))
        rows += [
            {"task": c.name, "method": method, "test_point": q, "lds": float(v), "n_subsets": res.n_subsets}
            for q, v in zip(c.query_names, res.per_query)
        ]
        info[f"{c.name}/lds_{method}"] = res.mean
        info[f"{c.name}/lds_{method}_ci"] = f"[{res.ci_low:.3f}, {res.ci_high:.3f}]"
    info.update(
        {
            f"{c.name}/lds_n_subsets": o.n_subsets,
            f"{c.name}/lds_subset_rows": record["subset_size"],
            f"{c.name}/lds_retrain_seconds": seconds,
            f"{c.name}/lds_retrain_cached": record["cached"],
            f"{c.name}/lds_retrain_iterations_max": max(record["iterations"]),
            f"{c.name}/lds_retrain_grad_max": max(record["grad_max"]),
        }
    )
    log.info(
        "%s LDS over %d retrained subsets of %d rows (%.1fs): %s",
        c.name,
        o.n_subsets,
        record["subset_size"],
        seconds,
        ", ".join(f"{m} {info[f'{c.name}/lds_{m}']:.3f}" for m in every),
    )
    return rows, info


def pbrf_epsilon(epsilon, opts: Options, n_bregman: int) -> float:
    """The PBRF's ε for a task with `n_bregman` Bregman rows: `epsilon_copies` / N under auto, else the number.

    Why a share of one copy (1/N): the central difference (f(θ(+ε)) − f(θ(−ε)))/(2ε) has an O(ε²) error from
    the PBO's nonlinearity. Measured on the diabetes MLP (353 rows, auto weight decay, solves converged to 1e-6):
    a fixed ε = 1e-3 (0.35 of a copy) left one of 12 rows 146 % from the ε → 0 limit (the exact GN, Eq. 9) and
    34 % at ε/2; at 0.1/N that row is 1.3 % off (0.2 % at ε/2) and the other 11 within 0.2 %."""
    eps = float(opts.epsilon_copies) / n_bregman if str(epsilon) == "auto" else float(epsilon)
    if eps * n_bregman > 0.5:
        log.warning(
            "PBRF ε = %.3g is %.2f copies of z_m (N = %d Bregman rows): its central difference may be far from "
            "linear; the ε/2 check will say (accuracy.epsilon=auto is %.2g copies)",
            eps,
            eps * n_bregman,
            n_bregman,
            opts.epsilon_copies,
        )
    return eps


def tabular_task(name: str, opts: Options, cfg) -> tuple[list[dict], dict, pd.DataFrame, list[dict]]:
    seed = int(cfg.seed)
    per = dict(opts.tabular.get(name) or {})  # this task's settings; the study-wide ones otherwise
    problem = build_tabular(
        name,
        output_dir=cfg.paths.output_dir,
        seed=seed,
        test_fraction=opts.test_fraction,
        **_build_options(opts, per),
    )
    n_train, n_test = problem.train["x"].shape[0], problem.test["x"].shape[0]
    # the scored rows lie inside the Bregman rows: otherwise the −ε side of the PBO has nothing anchoring
    # h(x_m) but the proximity term, and is unbounded below for small damping
    fit_rows = sample_indices(n_train, per.get("bregman_rows"), seed + 1)
    rows = fit_rows[sample_indices(len(fit_rows), int(per.get("max_train_points", opts.max_train_points)), seed)]
    test_rows = sample_indices(n_test, int(per.get("n_test_points", opts.n_test_points)), seed + 2)
    c = Comparison(
        name=name,
        model=problem.model,
        task=problem.task,
        layers=problem.layers,
        fit_data={k: v[fit_rows] for k, v in problem.train.items()},
        score_data=problem.train,
        score_rows=rows,
        queries={k: v[test_rows] for k, v in problem.test.items()},
        query_names=[f"test_{int(i)}" for i in test_rows],
        method_options=_method_options(list(opts.methods), seed, opts.lissa),
        pbrf={**asdict(opts.pbrf), "epsilon": pbrf_epsilon(per.get("epsilon", opts.epsilon), opts, len(fit_rows))},
        exact=opts.exact if name in opts.exact.tasks else None,
        every_row=opts.lds.n_subsets > 0 and name in opts.lds.tasks,
    )
    out, info, scores, every = compare(c, opts)
    pi = problem.info
    info[f"{name}/model"] = (
        f"MLP {pi['hidden']} {pi['activation']}, weight decay {pi['weight_decay']}, train {pi['train_metrics']}, "
        f"test {pi['test_metrics']}"
    )
    info[f"{name}/weight_decay"] = float(pi["weight_decay"])
    info[f"{name}/weight_decay_rule"] = "auto" if "weight_decay_selection" in pi else "fixed"
    for split in ("train", "test"):
        for k, v in pi[f"{split}_metrics"].items():
            info[f"{name}/{split}_{k}"] = float(v)
    if "weight_decay_selection" in pi:
        sel = pi["weight_decay_selection"]
        info[f"{name}/weight_decay_grid"] = ",".join(f"{w:g}" for w in sel["grid"])
        info[f"{name}/weight_decay_validation_loss"] = ",".join(f"{v:.4g}" for v in sel["validation_loss"])
        info[f"{name}/weight_decay_at_grid_edge"] = bool(sel["at_grid_edge"])
    lds_rows = []
    if every:
        lds_rows, lds_info = lds_reference(problem, c, every, opts, cfg)
        info.update(lds_info)
    return out, info, scores, lds_rows


def lm_task(opts: Options, cfg, world) -> tuple[list[dict], dict, pd.DataFrame]:
    seed = int(cfg.seed)
    data = training_data(world)
    n = data["input_ids"].shape[0]
    fit_rows = sample_indices(n, opts.bregman_subset, seed)
    rows = fit_rows[sample_indices(len(fit_rows), opts.lm_train_sequences, seed + 1)]
    queries = list(world.queries)[: opts.lm_queries]
    c = Comparison(
        name="lm",
        model=world.model,
        task=LanguageModelTask(),
        layers=tracked_layers(cfg, world.model),
        fit_data={k: v[fit_rows] for k, v in data.items()},
        score_data=data,
        score_rows=rows,
        queries=encode_stage(world, queries),
        query_names=[q.name for q in queries],
        method_options=_method_options(list(opts.methods), seed, opts.lm_lissa),
        pbrf={
            **asdict(opts.pbrf),
            **opts.lm_pbrf,
            "epsilon": pbrf_epsilon(opts.lm_epsilon, opts, len(fit_rows)),
            "dtype": getattr(torch, opts.lm_pbrf_dtype),
        },
        exact=ExactOptions(**{**asdict(opts.exact), **opts.lm_exact}) if "lm" in opts.exact.tasks else None,
    )
    out, info, scores, _ = compare(c, opts)
    info["lm/model"] = world.name
    return out, info, scores, []


def _summary_row(summary: pd.DataFrame, info: dict, tasks: list[str]) -> dict:
    """The `_summary` row: the comparison with the paper, and per task the PBRF vs the exact GN and the residuals."""
    out = paper_comparison(summary)
    main = summary[summary["main_damping"].astype(bool)]
    for t in tasks:
        pe = main[(main["task"] == t) & (main["reference"] == "exact_gn") & (main["method"] == "pbrf")]
        if len(pe):
            out[f"{t}/pbrf_vs_exact_gn_pearson"] = float(pe["pearson_mean"].iloc[0])
        for key in (
            "exact_relative_residual",
            "lissa_relative_residual",
            "lissa_converged",
            "weight_decay",
            "train_loss",
            "test_loss",
            "train_accuracy",
            "test_accuracy",
        ):
            v = info.get(f"{t}/{key}")
            if isinstance(v, (int, float)):
                out[f"{t}/{key}"] = float(v)
        for k, v in info.items():
            if k.startswith(f"{t}/lds_") and isinstance(v, float) and not k.startswith(f"{t}/lds_retrain"):
                out[k] = v
    return out


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    rows, info, scores, lds = [], {}, [], []
    t0 = time.perf_counter()
    for name in opts.tasks:
        with single_thread(cfg.score.num_threads == 1):
            r, i, sc, ld = lm_task(opts, cfg, world) if name == "lm" else tabular_task(name, opts, cfg)
        rows += r
        info.update(i)
        scores.append(sc)
        lds += ld
    long = pd.DataFrame(rows)
    summary = summary_table(long)
    unverified = [t for t in opts.tasks if not (info[f"{t}/pbrf_converged"] and info[f"{t}/pbrf_linear"])]
    exact_unverified = [t for t in opts.tasks if info[f"{t}/exact"] and not info[f"{t}/exact_verified"]]
    meta = {
        "study": "accuracy",
        "pbrf_unverified_tasks": ",".join(unverified),
        "exact_tasks": ",".join(t for t in opts.tasks if info[f"{t}/exact"]),
        "exact_unverified_tasks": ",".join(exact_unverified),
        "settings": OmegaConf.to_yaml(OmegaConf.structured(opts)),
        "seconds": time.perf_counter() - t0,
        "pbrf": "central difference at ±epsilon; Bregman term over the fitting rows; EK-FAC's per-layer damping "
        "(also given to K-FAC and LiSSA); f = loss on the test point (tabular), log p(completion|prompt) (LM)",
        "exact_gn": "(G + lambda I)^-1 grad f over all tracked layers jointly, G the exact Gauss-Newton over the "
        "fitting rows (the PBRF's Hessian at theta_s), EK-FAC's per-layer damping at every damping factor; verified "
        "when its relative residual <= exact.tol",
        "lds": f"{opts.lds.n_subsets} models retrained from scratch on random {opts.lds.fraction:g} subsets of the "
        "training rows per tabular task (0: none); Spearman r over subsets of each method's summed scores (every "
        "training row, main damping) against the retrained f, mean over test points with a bootstrap interval",
        "weight_decay": str(opts.weight_decay),
        "damping_sweep": f"factors {','.join(f'{f:g}' for f in opts.factors)} (main {opts.damping_factor:g}): "
        "every method and the exact GN at each; the PBRF at the main damping only",
        **{k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()},
    }
    tables = {
        "accuracy": long,
        "accuracy_summary": summary,
        "accuracy_scores": pd.concat(scores, ignore_index=True),
        "_summary": pd.DataFrame([_summary_row(summary, info, list(opts.tasks))]),
        "_metadata": pd.DataFrame([meta]),
    }
    if lds:
        tables["accuracy_lds"] = pd.DataFrame(lds)
        tables["accuracy_lds_summary"] = lds_summary(tables["accuracy_lds"], seed=int(cfg.seed))
    return tables


STUDY = Study(
    name="accuracy",
    title="How accurate is EK-FAC? The PBRF ground truth and the exact damped Gauss–Newton",
    where="§5.1, Figs. 6–7",
    order=30,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig6_accuracy",
            correlation_bars,
            "accuracy_summary",
            caption="Correlation of each estimator's scores with the ground truths: look for EK-FAC near the exact "
            "Gauss-Newton / PBRF references and above the cheaper methods.",
        ),
        figure(
            "fig7_accuracy_vs_time",
            correlation_vs_time,
            "accuracy_summary",
            caption="Accuracy against wall-clock time (fitting included): look for the cheapest method on the "
            "accuracy frontier.",
        ),
        figure(
            "accuracy_vs_damping",
            correlation_vs_damping,
            "accuracy_summary",
            caption="Accuracy against the damping factor: look for a flat region (a robust choice) and where "
            "accuracy falls off.",
        ),
        figure(
            "accuracy_lds",
            lds_bars,
            "accuracy_lds_summary",
            caption="Linear datamodeling score per method (0: chance): look for which methods predict retraining "
            "outcomes.",
        ),
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
