"""Our EK-FAC fit + pairwise scores beside kronfluence 1.0.1's on the same work, in alternating rounds.

Same GPT-NeoX (random init, float32, sdpa attention), same training sequences and queries, batch 16,
sampled labels, damping 0.1·mean(Λ) per layer (kronfluence: damping_factor=None), same token positions
(kronfluence is handed the loss mask: tests/influence/test_kronfluence_crosscheck.py checks the two agree
to 1e-14 with equal labels).

Fair by construction: every round runs every side (plain training pass, one capture pass, our one-pass
and two-pass fits, kronfluence as users run it and with our sampler) in an order rotated round by round,
so a load change hits both sides alike; each figure is the median over rounds with its min–max, ratios are
taken within a round (side by side) before the median, and the 1-minute load average is printed beside
each. Before measuring, the bench waits (up to --max-wait s) for the load average to fall below --quiet.

Sides:
- plain: summed-CE forward + backward into every parameter (the cost of a training step over the data);
- capture: one capture pass of ours (forward + activation-only backward, sampled labels): the floor;
- ours: fit (captures kept for the eigenvalue correction: one pass) + scores;
- ours_2pass: the same with `gradient_cache_mb=0`, the path a corpus whose captures exceed the cache takes;
- ours_bf16: ours with `product_precision="bf16"` (opt-in: the factor products in bf16, summed in float64);
- kron: kronfluence as users run it (its task samples labels with `torch.multinomial`);
- kron_same: kronfluence whose task samples with our inverse-CDF sampler, isolating the influence code.

Usage: python bench/bench_core.py [--large] [--rounds 3] [--threads 2] [--sides ours,kron] [--profile ours.prof]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from influence import LanguageModelTask, compute_scores, find_tracked_layers, fit_curvature, precondition_queries
from influence.curvature.factors import correction_macs, gram_macs
from influence.labels import sample_categorical
from influence.passes import capture_batches

SMALL = dict(layers=2, hidden=128, heads=4, inter=512, vocab=4096)
LARGE = dict(layers=4, hidden=256, heads=4, inter=1024, vocab=8192)


def build(size, seq_len, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["inter"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        max_position_embeddings=seq_len,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attn_implementation="sdpa",
    )
    return GPTNeoXForCausalLM(cfg).float().eval()


def make_data(n, seq_len, vocab, n_queries, prompt_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones(n, seq_len, dtype=torch.long)}
    qids = torch.randint(0, vocab, (n_queries, seq_len), generator=g)
    comp = torch.zeros(n_queries, seq_len, dtype=torch.long)
    comp[:, prompt_len:] = 1
    queries = {
        "input_ids": qids,
        "attention_mask": torch.ones(n_queries, seq_len, dtype=torch.long),
        "completion_mask": comp,
    }
    return data, queries


def loss_mask(batch):
    m = batch["attention_mask"].bool()
    out = torch.zeros_like(m)
    out[:, :-1] = m[:, :-1] & m[:, 1:]
    return out


def plain_fwd_bwd(model, data, batch_size):
    """One pass over the data: summed token CE, backward into every parameter (the cost of plain training)."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    t = time.perf_counter()
    for s in range(0, data["input_ids"].shape[0], batch_size):
        b = {k: v[s : s + batch_size] for k, v in data.items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["input_ids"][:, 1:].reshape(-1), reduction="none")
        (ce * loss_mask(b)[:, :-1].reshape(-1)).sum().backward()
    sec = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return sec


def capture_pass(model, data, batch_size):
    """One capture pass over the data (forward + activation-only backward, sampled labels): the fit's floor."""
    task, layers = LanguageModelTask(), find_tracked_layers(model)
    t = time.perf_counter()
    for _ in capture_batches(model, task, layers, data, batch_size, labels="sampled", seed=0):
        pass
    return time.perf_counter() - t


def run_ours(model, data, queries, batch_size, profile=None, gradient_cache_mb=4096.0, product_precision="float32"):
    task = LanguageModelTask()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    curv = fit_curvature(
        model,
        task,
        data,
        method="ekfac",
        batch_size=batch_size,
        labels="sampled",
        seed=0,
        damping_factor=0.1,
        gradient_cache_mb=gradient_cache_mb,
        product_precision=product_precision,
    )
    t1 = time.perf_counter()
    res = compute_scores(model, task, curv, queries, data, batch_size=batch_size)
    t2 = time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    t3 = time.perf_counter()
    precondition_queries(model, task, curv, queries)  # timed alone: its share of compute_scores
    t4 = time.perf_counter()
    return res.scores, {
        "fit": t1 - t0,
        "scores": t2 - t1,
        "query preconditioning": t4 - t3,
        "passes": curv.info.get("correction_passes"),
    }


def run_kronfluence(model, data, queries, batch_size, out_dir, sampler="multinomial"):
    """kronfluence's four stages; `sampler`: "multinomial" (as its users write the task) or "inverse_cdf" (ours)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    names = [l.name for l in find_tracked_layers(model)]

    class NeoXTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            flat = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    if sampler == "multinomial":
                        labels = torch.multinomial(torch.softmax(flat.detach(), -1), 1).squeeze(-1)
                    else:
                        labels = sample_categorical(flat.detach(), torch.rand(flat.shape[0], dtype=torch.float64))
            else:
                labels = batch["input_ids"][:, 1:].reshape(-1)
            ce = F.cross_entropy(flat, labels, reduction="none")
            return (ce * loss_mask(batch)[:, :-1].reshape(-1)).sum()

        def compute_measurement(self, batch, model):  # summed completion CE: kronfluence's score is then +ours
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1), reduction="none"
            )
            return (ce * (batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]).reshape(-1)).sum()

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):  # only loss-bearing positions enter A (as ours)
            return loss_mask(batch).long()

    class DS(torch.utils.data.Dataset):
        def __init__(self, t):
            self.t = t

        def __len__(self):
            return next(iter(self.t.values())).shape[0]

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.t.items()}

    task = NeoXTask()
    kmodel = prepare_model(copy.deepcopy(model), task)
    an = Analyzer("bench", kmodel, task, cpu=True, log_level=logging.WARNING, disable_tqdm=True, output_dir=out_dir)
    fargs = FactorArguments(strategy="ekfac")
    sargs = ScoreArguments(damping_factor=None)
    train, qs = DS(data), DS(queries)
    torch.manual_seed(0)
    times = {}
    t = time.perf_counter()
    an.fit_covariance_matrices("f", train, per_device_batch_size=batch_size, factor_args=fargs)
    times["covariance"] = time.perf_counter() - t
    t = time.perf_counter()
    an.perform_eigendecomposition("f", factor_args=fargs)
    times["eigendecomposition"] = time.perf_counter() - t
    t = time.perf_counter()
    an.fit_lambda_matrices("f", train, per_device_batch_size=batch_size, factor_args=fargs)
    times["eigenvalue correction"] = time.perf_counter() - t
    t = time.perf_counter()
    an.compute_pairwise_scores(
        "s",
        "f",
        qs,
        train,
        per_device_query_batch_size=len(qs),
        per_device_train_batch_size=batch_size,
        score_args=sargs,
    )
    times["scores"] = time.perf_counter() - t
    times["fit"] = times["covariance"] + times["eigendecomposition"] + times["eigenvalue correction"]
    return an.load_pairwise_scores("s")["all_modules"], times


def fit_product_macs(model, n_sequences: int, batch_size: int, seq_len: int) -> dict[str, int]:
    """Multiply-adds of the fit's Kronecker products over the data, as the library counts them: A and S over the
    loss-bearing tokens (all but each sequence's last), the eigenvalue correction over every position."""
    shapes = [l.shape for l in find_tracked_layers(model)]
    full, rest = divmod(n_sequences, batch_size)
    batches = [batch_size] * full + ([rest] if rest else [])
    tokens = [b * (seq_len - 1) for b in batches]
    return {
        "A and S": sum(gram_macs(n, m) + gram_macs(n, p) for n in tokens for p, m in shapes),
        "eigenvalue correction": sum(b * correction_macs(seq_len, p, m) for b in batches for p, m in shapes),
    }


def matmul_rate(rows: int, width: int = 1024, repeats: int = 10) -> float:
    """Multiply-adds per second of a float32 (rows, width) @ (width, width) product, best of `repeats`: the
    speed the fit's largest products could run at on this machine."""
    x, q = torch.randn(rows, width), torch.randn(width, width)
    x @ q
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x @ q
        best = min(best, time.perf_counter() - t)
    return rows * width * width / best


SIDES = ("plain", "capture", "ours", "ours_2pass", "ours_bf16", "kron", "kron_same")
OURS = ("ours", "ours_2pass", "ours_bf16")


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    """Wait until the 1-minute load average is below `threshold` (at most `max_wait` s), as the anchor's runner does."""
    t0 = time.time()
    while os.getloadavg()[0] >= threshold and time.time() - t0 < max_wait:
        time.sleep(5)
    load = os.getloadavg()[0]
    waited = time.time() - t0
    quiet = "quiet" if load < threshold else f"NOT quiet after {max_wait:.0f} s: figures are under load"
    print(f"load average {load:.2f} after waiting {waited:.0f} s ({quiet}; threshold {threshold})")


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def run_side(side, model, data, queries, batch, out_dir):
    """(seconds per stage, scores or None) of one side on the whole work."""
    if side == "plain":
        return {"total": plain_fwd_bwd(model, data, batch)}, None
    if side == "capture":
        return {"total": capture_pass(model, data, batch)}, None
    if side in OURS:
        scores, t = run_ours(
            model,
            data,
            queries,
            batch,
            gradient_cache_mb=0.0 if side == "ours_2pass" else 4096.0,
            product_precision="bf16" if side == "ours_bf16" else "float32",
        )
        return {**t, "total": t["fit"] + t["scores"]}, scores
    sampler = "multinomial" if side == "kron" else "inverse_cdf"
    with tempfile.TemporaryDirectory(dir=out_dir) as fresh:  # kronfluence reuses factors saved under one name
        scores, t = run_kronfluence(model, data, queries, batch, fresh, sampler=sampler)
    return {**t, "total": t["fit"] + t["scores"]}, scores


def fmt(values: list[float], unit: str = "s", digits: int = 2) -> str:
    return f"{statistics.median(values):8.{digits}f} {unit} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="4 layers, hidden 256, intermediate 1024, vocab 8192")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=512, help="training sequences")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every side, the order rotated")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {','.join(SIDES)}")
    ap.add_argument("--quiet", type=float, default=0.5, help="wait for a 1-minute load average below this")
    ap.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for a quiet machine")
    ap.add_argument("--profile", help="write a cProfile of one extra run of our fit + scores to this file")
    args = ap.parse_args()
    sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or args.rounds < 1:
        ap.error(f"--sides: unknown {unknown}, choose from {SIDES}" if unknown else "--rounds must be at least 1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    size = LARGE if args.large else SMALL
    model = build(size, args.seq_len)
    data, queries = make_data(args.n, args.seq_len, size["vocab"], args.queries, prompt_len=args.seq_len // 2)
    print(
        f"GPT-NeoX {size}, seq_len {args.seq_len}, {args.n} training sequences, {args.queries} queries, "
        f"batch {args.batch}, float32, {args.threads} threads, torch {torch.__version__}, {args.rounds} rounds"
    )
    plain_fwd_bwd(model, {k: v[: args.batch] for k, v in data.items()}, args.batch)  # warm-up
    wait_for_quiet(args.quiet, args.max_wait)
    times: dict[str, list[dict]] = {s: [] for s in sides}
    loads: dict[str, list[float]] = {s: [] for s in sides}
    scores: dict[str, list[torch.Tensor]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]
            for side in order:
                loads[side].append(os.getloadavg()[0])
                t, sc = run_side(side, model, data, queries, args.batch, d)
                times[side].append(t)
                if sc is not None:
                    scores[side].append(sc)
            print(f"round {r + 1}: " + ", ".join(f"{s} {times[s][-1]['total']:.1f} s" for s in order))
    if args.profile:
        run_ours(model, data, queries, args.batch, args.profile)

    print("\nmedian [min–max] over rounds; load = median 1-minute load average when the side started")
    for side in sides:
        stages = [k for k, v in times[side][0].items() if isinstance(v, float)]
        passes = times[side][0].get("passes")
        extra = f"  (eigenvalue-correction passes: {passes})" if passes else ""
        print(f"{side}{extra}   load {statistics.median(loads[side]):.2f}")
        for k in stages:
            print(f"  {k:<26} {fmt([t[k] for t in times[side]])}")

    def ratios(num: str, den: str, key: str = "total", scale: float = 1.0) -> list[float]:
        return [a[key] / (scale * b[key]) for a, b in zip(times[num], times[den])]

    print("\nratios within a round (median [min–max]):")
    for ours in OURS:
        for kron in ("kron", "kron_same"):
            if ours in times and kron in times:
                for key in ("fit", "scores", "total"):
                    print(f"  {kron}/{ours} {key:<7} {fmt(ratios(kron, ours, key), 'x')}")
                p = [pearson(a, b) for a, b in zip(scores[ours], scores[kron])]
                print(f"  Pearson({ours}, {kron}) {fmt(p, '', 5)}  (goal >= 0.99; each side samples its own labels)")
    if "capture" in times:
        for ours in OURS:
            if ours in times:
                fit = [a["fit"] / (2 * b["total"]) for a, b in zip(times[ours], times["capture"])]
                print(f"  {ours} fit / (2 x capture pass) {fmt(fit, 'x')}  (goal <= 1.2 on the two-pass path)")
    if "capture" in times:
        macs = fit_product_macs(model, args.n, args.batch, args.seq_len)
        rate = matmul_rate(args.batch * args.seq_len)
        product_s = sum(macs.values()) / rate
        floor = [(2 * c["total"] + product_s) / (2 * c["total"]) for c in times["capture"]]
        parts = ", ".join(f"{k} {v / 1e9:.0f} G" for k, v in macs.items())
        print(
            f"  fit floor: (2 x capture pass + products at {rate / 1e9:.0f} G multiply-adds/s) / (2 x capture pass)"
            f" {fmt(floor, 'x')}  (products {parts}: {product_s:.1f} s)"
        )
    if "plain" in times and "capture" in times:
        print(f"  capture pass / plain step {fmt(ratios('capture', 'plain'), 'x')}")
    if "ours" in times and "ours_bf16" in times:
        p = [pearson(a, b) for a, b in zip(scores["ours"], scores["ours_bf16"])]
        print(f"  Pearson(ours, ours_bf16) {fmt(p, '', 5)}  (bf16 products against float32, the same labels)")
    print("goals: kron/ours total >= 3 on both sizes and both kron variants")


if __name__ == "__main__":
    main()
