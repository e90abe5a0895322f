"""Our EK-FAC fit + pairwise scores beside kronfluence 1.0.1's on the same work, with a plain fwd+bwd reference.

Same GPT-NeoX (random init, float32, sdpa attention), same training sequences and queries, batch 16,
sampled labels on both sides (each draws its own), damping 0.1·mean(Λ) per layer (kronfluence:
damping_factor=None), same token positions (kronfluence is handed the loss mask: see
tests/influence/test_kronfluence_crosscheck.py, which checks the two agree to 1e-14 with equal labels).
Prints each stage's seconds, the ratio, the Pearson correlation of the two score matrices, and our fit
time over two plain forward+backward passes (summed loss, gradients of every parameter).

Usage: python bench/bench_core.py [--large] [--threads 2] [--profile ours.prof]
"""

from __future__ import annotations

import argparse
import copy
import logging
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


def run_ours(model, data, queries, batch_size, profile=None):
    task = LanguageModelTask()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    curv = fit_curvature(
        model, task, data, method="ekfac", batch_size=batch_size, labels="sampled", seed=0, damping_factor=0.1
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
        "fit (A,S pass + eigh + Λ)": t1 - t0,
        "scores (precondition + scan)": t2 - t1,
        "  of which query preconditioning": t4 - t3,
    }


def run_kronfluence(model, data, queries, batch_size, out_dir):
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
                    labels = torch.multinomial(torch.softmax(flat.detach(), -1), 1).squeeze(-1)
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
    return an.load_pairwise_scores("s")["all_modules"], times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="4 layers, hidden 256, intermediate 1024, vocab 8192")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=512, help="training sequences")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--skip-kronfluence", action="store_true")
    ap.add_argument("--profile", help="write a cProfile of our fit + scores to this file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    size = LARGE if args.large else SMALL
    model = build(size, args.seq_len)
    data, queries = make_data(args.n, args.seq_len, size["vocab"], args.queries, prompt_len=args.seq_len // 2)
    print(
        f"GPT-NeoX {size}, seq_len {args.seq_len}, {args.n} training sequences, {args.queries} queries, "
        f"batch {args.batch}, float32, {args.threads} threads, torch {torch.__version__}"
    )

    plain_fwd_bwd(model, {k: v[: args.batch] for k, v in data.items()}, args.batch)  # warm-up
    ref = plain_fwd_bwd(model, data, args.batch)
    print(f"plain fwd+bwd over {args.n} sequences: {ref:.2f} s")

    mine, t_ours = run_ours(model, data, queries, args.batch, args.profile)
    total_ours = t_ours["fit (A,S pass + eigh + Λ)"] + t_ours["scores (precondition + scan)"]
    print("\nours:")
    for k, v in t_ours.items():
        print(f"  {k:<34} {v:7.2f} s")
    print(f"  {'total':<34} {total_ours:7.2f} s")
    fit = t_ours["fit (A,S pass + eigh + Λ)"]
    print(f"  fit / (2 x plain fwd+bwd) = {fit / (2 * ref):.2f}   (goal <= 1.3)")
    if args.skip_kronfluence:
        return
    with tempfile.TemporaryDirectory() as d:
        theirs, t_k = run_kronfluence(model, data, queries, args.batch, d)
    total_k = sum(t_k.values())
    print("\nkronfluence 1.0.1:")
    for k, v in t_k.items():
        print(f"  {k:<34} {v:7.2f} s")
    print(f"  {'total':<34} {total_k:7.2f} s")
    fit_k = t_k["covariance"] + t_k["eigendecomposition"] + t_k["eigenvalue correction"]
    r = float(torch.corrcoef(torch.stack([mine.flatten().double(), theirs.flatten().double()]))[0, 1])
    print(f"\nfit:    ours {fit:.2f} s  kronfluence {fit_k:.2f} s  speed-up {fit_k / fit:.2f}x")
    print(
        f"scores: ours {t_ours['scores (precondition + scan)']:.2f} s  kronfluence {t_k['scores']:.2f} s  "
        f"speed-up {t_k['scores'] / t_ours['scores (precondition + scan)']:.2f}x"
    )
    print(
        f"total:  ours {total_ours:.2f} s  kronfluence {total_k:.2f} s  speed-up {total_k / total_ours:.2f}x  (goal >= 2)"
    )
    print(f"Pearson(ours, kronfluence) = {r:.4f}  (goal >= 0.99; each side samples its own labels)")


if __name__ == "__main__":
    main()
