"""Scan throughput: 32 queries at full rank and at rank 32, beside plain forward+backward on the same batches.

The model has the shape of the embedded default's `m` (GPT-2, 6 layers x 160, vocabulary 4096), random init
(throughput does not depend on the weights). Prints sequences/s for each mode and its ratio to a plain
training step (summed loss, every parameter's gradient), plus the query-gradient memory of each mode.
Usage: python bench/bench_scan.py [--n 512] [--seq-len 128] [--queries 32] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from influence import LanguageModelTask, fit_curvature, plan_query_rank, scan  # noqa: E402
from influence.lowrank import query_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=4096,
        n_embd=160,
        n_layer=6,
        n_head=5,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    task = LanguageModelTask()
    data = {
        "input_ids": torch.randint(0, 4096, (args.n, args.seq_len)),
        "attention_mask": torch.ones(args.n, args.seq_len, dtype=torch.long),
    }
    q_ids = torch.randint(0, 4096, (args.queries, 64))
    comp = torch.zeros_like(q_ids)
    comp[:, 32:] = 1
    queries = {"input_ids": q_ids, "attention_mask": torch.ones_like(q_ids), "completion_mask": comp}
    curv = fit_curvature(model, task, {k: v[:128] for k, v in data.items()}, batch_size=args.batch)
    shapes = [l.shape for l in curv.layers]
    print(
        f"GPT-2 6L x 160 (m-sized), vocab 4096, {args.n} sequences x {args.seq_len} tokens, {args.queries} queries, "
        f"batch {args.batch}, {args.threads} threads, torch {torch.__version__}"
    )

    model.train(False)

    def plain_pass() -> float:
        start = time.perf_counter()
        for i in range(0, args.n, args.batch):
            b = {k: v[i : i + args.batch] for k, v in data.items()}
            model.zero_grad(set_to_none=True)
            task.loss(task.forward(model, b), b).backward()
        return time.perf_counter() - start

    def scan_pass(n: int, rank) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            scan(
                model,
                task,
                curv,
                queries,
                {k: v[:n] for k, v in data.items()},
                tmp,
                batch_size=args.batch,
                query_rank=rank,
                progress=False,
            )
            return time.perf_counter() - start

    # rounds alternate the modes, so a load change on a shared machine hits them alike; medians are reported
    few = args.batch * 2  # a short scan: the fixed costs (query preconditioning, SVD, fingerprints) alone
    modes = {"full rank": None, "rank 32": 32}
    times = {"plain": [], **{(m, n): [] for m in modes for n in (few, args.n)}}
    for _ in range(args.repeats):
        times["plain"].append(plain_pass())
        for label, rank in modes.items():
            for n in (few, args.n):
                times[(label, n)].append(scan_pass(n, rank))
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = args.n / med["plain"]
    print(f"plain fwd+bwd (all parameter grads): {plain:8.1f} seq/s  (median of {args.repeats} alternating rounds)")
    planned = plan_query_rank(shapes, args.queries, 1024 * 2**20)
    for label, rank in modes.items():
        rate = args.n / med[(label, args.n)]
        steady = (args.n - few) / (med[(label, args.n)] - med[(label, few)])
        mem = query_bytes(shapes, args.queries, rank) / 2**20
        pick = "  <- memory plan's pick (1 GiB budget)" if rank == planned else ""
        print(
            f"scan, {label:9}: {rate:6.1f} seq/s end to end ({rate / plain:4.2f}x plain), "
            f"{steady:6.1f} seq/s per extra sequence ({steady / plain:4.2f}x plain), fixed cost {med[(label, few)]:.2f} s, "
            f"query gradients {mem:6.1f} MiB{pick}"
        )


if __name__ == "__main__":
    main()
