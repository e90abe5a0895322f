"""Training tokens/s by thread count on an idle and on a busy machine: the measurement behind the default
`model.train.threads`.

Each cell is a fresh subprocess that trains `--steps` steps of one size on the embedded corpus (after 3 untimed
steps) with `torch.set_num_threads(t)`, while `busy` other processes each run a single-threaded matmul loop (as
another job on the machine would). All cells run in one invocation, side by side, in alternating order.
Usage: python bench/bench_threads.py [--size m] [--steps 20] [--threads 1 2] [--busy 0 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELL = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from hydra import compose, initialize_config_dir
from embedded.models import build_model
from embedded.prepare import prepare_data
from embedded.train import batches, lm_loss
torch.set_num_threads({threads})
with initialize_config_dir(config_dir={conf!r}, version_base=None):
    cfg = compose(config_name="config", overrides=["model={size}", "paths.output_dir={out}"])
prep = prepare_data(cfg)
model = build_model(cfg.model, len(prep.tokenizer), prep.tokenizer.eos_token_id, 0)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
stream = batches(prep, int(cfg.data.seq_len), int(cfg.model.train.batch_size), prep.tokenizer.pad_token_id, 0)
seen = 0
for step in range({steps} + 3):
    if step == 3:
        t0, seen = time.perf_counter(), 0
    _, ids, mask = next(stream)
    loss = lm_loss(model, ids, mask)
    opt.zero_grad(); loss.backward(); opt.step()
    seen += int(mask.sum())
print(json.dumps({{"tokens_per_second": seen / (time.perf_counter() - t0)}}))
"""

HOG = "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a = (a @ a).tanh()"


def cell(size: str, threads: int, busy: int, steps: int, out: str) -> float:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)
        code = CELL.format(root=str(ROOT), conf=str(ROOT / "conf"), threads=threads, size=size, out=out, steps=steps)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])["tokens_per_second"]
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output-dir", default=str(ROOT / "outputs"))
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}, size {args.size}")
    results: dict = {}
    for r in range(args.rounds):
        order = [(t, b) for b in args.busy for t in args.threads]
        for t, b in order if r % 2 == 0 else order[::-1]:
            results.setdefault((t, b), []).append(cell(args.size, t, b, args.steps, args.output_dir))
    print(f"{'threads':>7} {'busy procs':>10} {'tokens/s (median)':>18} {'min-max':>15} {'vs idle 2 threads':>18}")
    ref = statistics.median(results.get((max(args.threads), 0), [float("nan")]))
    for (t, b), v in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = statistics.median(v)
        print(f"{t:>7} {b:>10} {med:>18.0f} {min(v):>7.0f}-{max(v):<7.0f} {med / ref:>17.2f}x")


if __name__ == "__main__":
    main()
