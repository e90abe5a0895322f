"""What one PBRF solve costs on the accuracy study's language model, and why it takes so many evaluations.

    python bench/bench_pbrf.py                                    # xs model, the preset's Bregman subset
    python bench/bench_pbrf.py --solve 600 accuracy.bregman_subset=16 model=s

1. Times the Bregman term (value and gradient over the subset, the bulk of every PBO evaluation) two ways:
   the plain path (autograd through the cancellation-free KL on the padded batches, what `pbrf_scores` did
   before) and the library's path (length-sorted batches trimmed of padding, fused KL with p_s cached),
   in float64 and float32, and checks that the two agree.
2. With `--solve N`, runs the +ε solve of the study's first scored sequence for up to N evaluations (L-BFGS,
   the preset's settings; `--precondition` to precondition by EK-FAC) and prints the gradient ratio every
   50 evaluations with the elapsed time: the evaluations a given tolerance needs on this model.

Trailing arguments are Hydra overrides of `experiment=accuracy` (model, seed, accuracy.*). Uses the trained
model and corpus under paths.output_dir (trains them first if missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from hydra import compose, initialize_config_dir

from embedded.world import build_world
from experiments.pipeline.stages import tracked_layers, training_data
from experiments.studies import get_study
from influence import LanguageModelTask, fit_curvature
from influence.batching import iter_batches, sample_indices
from influence.pbrf import PBRFArguments, working_copy
from influence.pbrf.objective import Problem, bregman_chunks, chunk_divergence
from influence.pbrf.preconditioner import eigenbasis_preconditioner
from influence.pbrf.solvers import minimize


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def copy_in(model, layers, dtype):
    """A copy in `dtype` (as pbrf_scores makes it) whose tracked layers alone take gradients."""
    work, tracked = working_copy(model, layers, dtype, always=True)
    work.eval()
    for p in work.parameters():
        p.requires_grad_(False)
    params = [p for l in tracked for p in l.parameters()]
    for p in params:
        p.requires_grad_(True)
    return work, tracked, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--solve", type=int, default=0, help="evaluations of one +eps solve to run (0: none)")
    ap.add_argument("--precondition", action="store_true", help="precondition the solve by EK-FAC")
    args, overrides = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["experiment=accuracy", f"paths.output_dir={ROOT / 'outputs'}", *overrides])
    opts = get_study("accuracy").read_options(cfg)
    world = build_world(cfg)
    task, data = LanguageModelTask(), training_data(world)
    seed = int(cfg.seed)
    fit_rows = sample_indices(data["input_ids"].shape[0], opts.bregman_subset, seed)
    row = int(fit_rows[sample_indices(len(fit_rows), opts.lm_train_sequences, seed + 1)][0])
    fit = {k: v[fit_rows] for k, v in data.items()}
    layers = tracked_layers(cfg, world.model)
    ek = fit_curvature(world.model, task, fit, method="ekfac", layers=layers, seed=seed)
    tokens = int(task.loss_mask(fit).sum())
    print(
        f"{world.name}: {len(fit_rows)} Bregman sequences, {tokens} loss tokens in {fit['input_ids'].numel()} "
        f"padded positions, vocabulary {world.model.config.vocab_size}, {args.threads} threads"
    )

    print("\n== Bregman term, value + gradient over the subset (median seconds)")
    for dtype in (torch.float64, torch.float32):
        work, tracked, params = copy_in(world.model, layers, dtype)

        def cast(b):
            return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.items()}

        with torch.no_grad():
            plain_chunks = [(cast(b), task.forward(work, cast(b))) for _, b in iter_batches(fit, 16)]
        fast_chunks = bregman_chunks(task, work, fit, 16, cast)
        with torch.no_grad():
            for p in params:
                p.add_(1e-3 * torch.randn_like(p))

        def plain():
            value = sum(task.bregman(task.forward(work, b), ref, b) for b, ref in plain_chunks)
            return value, torch.autograd.grad(value, params)

        def fast():
            value = sum(chunk_divergence(task, work, c) for c in fast_chunks)
            return value, torch.autograd.grad(value, params)

        with torch.enable_grad():
            (v0, g0), (v1, g1) = plain(), fast()
            err = max(float((a - b).norm() / b.norm()) for a, b in zip(g1, g0))
            t_plain, t_fast = median_seconds(plain, args.repeats), median_seconds(fast, args.repeats)
        print(
            f"{str(dtype):14s} plain {t_plain:.3f}  fast {t_fast:.3f}  ({t_plain / t_fast:.1f}x)  "
            f"value rel. diff {abs(float((v1 - v0).detach())) / abs(float(v0.detach())):.1e}, gradient {err:.1e}"
        )

    if args.solve:
        options = {**dataclasses.asdict(opts.pbrf), **opts.lm_pbrf}
        dtype = getattr(torch, opts.lm_pbrf_dtype)
        work, tracked, params = copy_in(world.model, layers, dtype)

        def cast(b):
            return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.items()}

        chunks = bregman_chunks(task, work, fit, 16, cast)
        lam = [float(ek.damping[l.name]) for l in tracked for _ in l.parameters()]
        problem = Problem(
            work,
            task,
            params,
            [p.detach().clone() for p in params],
            lam,
            chunks,
            len(fit_rows),
            task.trim(cast({k: v[row : row + 1] for k, v in data.items()})),
            float(opts.lm_epsilon),
        )
        if args.precondition:
            problem.precondition = eigenbasis_preconditioner(ek, tracked, ek.damping)
        evaluate, t0 = problem.evaluate, time.perf_counter()

        def logged(w, sign):
            out = evaluate(w, sign)
            if problem.evaluations % 50 == 0 and problem.scale != 1.0:
                print(
                    f"  {problem.evaluations:5d} evaluations  gradient ratio {problem.true_norm:.3g}  "
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
            return out

        problem.evaluate = logged
        print(
            f"\n== +eps solve of training sequence {row} (eps {opts.lm_epsilon}, {dtype}, L-BFGS history "
            f"{options['history']}, {'EK-FAC preconditioned' if args.precondition else 'unpreconditioned'})"
        )
        solver = PBRFArguments(
            optimizer="lbfgs",
            lr=0.01,
            max_steps=args.solve,
            tol=float(options["tol"]),
            patience=20,
            min_lr_ratio=1e-4,
            history=int(options["history"]),
        )
        _, steps, ratio = minimize(problem, 1.0, solver)
        seconds = time.perf_counter() - t0
        print(
            f"gradient ratio {ratio:.3g} after {steps} evaluations, {seconds:.0f}s ({seconds / steps:.3f}s each; "
            f"tol {options['tol']})"
        )


if __name__ == "__main__":
    main()
