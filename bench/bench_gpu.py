"""Device throughput and memory per precision: EK-FAC fit and scan beside a plain forward+backward.

For each precision (float32, bf16, fp16: `curvature.precision` / `score.precision`), prints tokens/s of a
plain training step (summed loss, every parameter's gradient, under the same autocast), of the EK-FAC fit
and of a full-rank (or `--rank r`) scan, the peak device memory of each (torch.cuda.max_memory_allocated;
"n/a" on CPU) and the scan / plain time ratio. On CUDA the model defaults to GPT-2 small's shape
(12 layers x 768, vocabulary 50304); on CPU to the embedded `s` size, so the script also runs without a GPU.
Random init and random tokens: throughput does not depend on the weights.
Usage: python bench/bench_gpu.py [--device cuda] [--precisions float32,bf16,fp16] [--n 1024] [--seq-len 512]
       [--layers 12 --hidden 768 --heads 12 --vocab 50304] [--queries 32] [--rank 32] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from influence import LanguageModelTask, fit_curvature, scan  # noqa: E402
from influence.precision import PRECISIONS, with_precision  # noqa: E402

CUDA_DEFAULTS = dict(layers=12, hidden=768, heads=12, vocab=50304, n=1024, seq_len=512, batch=16, queries=32)
CPU_DEFAULTS = dict(layers=4, hidden=96, heads=4, vocab=4096, n=64, seq_len=128, batch=16, queries=8)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextlib.contextmanager
def measured(dev: torch.device, out: dict):
    """Wall seconds and peak device memory (MiB, CUDA only) of the block, into `out`."""
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    yield
    sync(dev)
    out["s"] = time.perf_counter() - start
    out["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--precisions", default=None, help="comma-separated; default float32,bf16,fp16 on CUDA, float32,bf16 on CPU"
    )
    for k in CUDA_DEFAULTS:
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None)
    ap.add_argument("--rank", type=int, default=None, help="query rank of the scan (default: full rank)")
    ap.add_argument("--fit-sequences", type=int, default=None, help="sequences the EK-FAC fit uses (default: all --n)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = ap.parse_args()
    dev = torch.device(args.device)
    d = CUDA_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    a = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in d.items()}
    precisions = (args.precisions or ("float32,bf16,fp16" if dev.type == "cuda" else "float32,bf16")).split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        sys.exit(f"error: unknown precision(s) {unknown}: use {sorted(PRECISIONS)}")
    torch.set_num_threads(args.threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: no silent TF32 matmuls

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=a["vocab"],
        n_embd=a["hidden"],
        n_layer=a["layers"],
        n_head=a["heads"],
        bos_token_id=0,
        eos_token_id=0,
        n_positions=max(1024, a["seq_len"]),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).to(dev).eval()
    data = {
        "input_ids": torch.randint(0, a["vocab"], (a["n"], a["seq_len"])),
        "attention_mask": torch.ones(a["n"], a["seq_len"], dtype=torch.long),
    }
    fit_data = {k: v[: args.fit_sequences or a["n"]] for k, v in data.items()}
    q_len = min(64, a["seq_len"])
    q_ids = torch.randint(0, a["vocab"], (a["queries"], q_len))
    comp = torch.zeros_like(q_ids)
    comp[:, q_len // 2 :] = 1
    queries = {"input_ids": q_ids, "attention_mask": torch.ones_like(q_ids), "completion_mask": comp}
    tokens, fit_tokens = a["n"] * a["seq_len"], fit_data["input_ids"].numel()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {args.threads} threads"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"GPT-2 {a['layers']}L x {a['hidden']} ({params:.0f}M parameters), vocab {a['vocab']}, {a['n']} sequences x "
        f"{a['seq_len']} tokens, batch {a['batch']}, {a['queries']} queries at rank {args.rank or 'full'}; "
        f"{name}, torch {torch.__version__}"
    )

    def plain(task) -> None:
        for i in range(0, a["n"], a["batch"]):
            b = {k: v[i : i + a["batch"]].to(dev) for k, v in data.items()}
            model.zero_grad(set_to_none=True)
            task.loss(task.forward(model, b), b).backward()

    base = LanguageModelTask()
    rows = []
    for p in precisions:
        task = with_precision(base, p)
        plain(task)  # warm-up: kernels, allocator, autocast caches
        runs = {"plain": [], "fit": [], "scan": []}
        for _ in range(args.repeats):  # rounds alternate the modes, so a load change hits them alike
            m = {}
            with measured(dev, m):
                plain(task)
            runs["plain"].append(dict(m))
            with measured(dev, m):
                curv = fit_curvature(model, base, fit_data, batch_size=a["batch"], device=dev, precision=p)
            runs["fit"].append(dict(m))
            with tempfile.TemporaryDirectory() as tmp, measured(dev, m):
                scan(
                    model,
                    task,
                    curv,
                    queries,
                    data,
                    tmp,
                    batch_size=a["batch"],
                    query_rank=args.rank,
                    device=dev,
                    progress=False,
                )
            runs["scan"].append(dict(m))
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("s", "peak_mib")} for k, v in runs.items()}
        rows.append((p, med))
        model.zero_grad(set_to_none=True)

    print(f"\n{'precision':<9} {'mode':<6} {'tokens/s':>12} {'peak MiB':>10} {'x plain time':>13}")
    for p, med in rows:
        for mode, n_tok in (("plain", tokens), ("fit", fit_tokens), ("scan", tokens)):
            ratio = "" if mode == "plain" else f"{med[mode]['s'] / med['plain']['s'] * tokens / n_tok:13.2f}"
            peak = "n/a" if med[mode]["peak_mib"] != med[mode]["peak_mib"] else f"{med[mode]['peak_mib']:.0f}"
            print(f"{p:<9} {mode:<6} {n_tok / med[mode]['s']:12.0f} {peak:>10} {ratio}")
    print(
        f"(medians of {args.repeats} rounds; 'x plain time' is seconds per token relative to the plain fwd+bwd "
        f"under the same precision; the fit makes one capture pass plus the eigendecompositions)"
    )


if __name__ == "__main__":
    main()
