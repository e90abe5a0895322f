"""Training throughput per model size on the embedded corpus: seconds, tokens seen and tokens/s.

Runs a short timed training burst per size (same loop as embedded.train), then, if the full
models were trained, prints their reports (held-out loss, recall checks) beside it.
Usage: python bench/bench_train.py [--sizes xs s m l] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from embedded.models import build_model, non_embedding_params
from embedded.prepare import prepare_data
from embedded.train import model_dir_for, train

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["xs", "s", "m", "l"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="embedded")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{'size':>5} {'non-emb params':>14} {'seconds':>8} {'tokens':>9} {'tokens/s':>9} | full run: "
        f"{'seconds':>8} {'tokens/s':>8} {'held-out':>8} quotes facts"
    )
    for size in args.sizes:
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose("config", overrides=[f"model={size}", f"data={args.data}"])
        prep = prepare_data(cfg)
        seq_len, bs = int(cfg.data.seq_len), int(cfg.model.train.batch_size)
        with open_dict(cfg):
            cfg.model.train.tokens = args.steps * bs * seq_len
            cfg.model.train.n_evals = 1
            cfg.model.train.eval_docs = 16
        model = build_model(cfg.model, len(prep.tokenizer), prep.tokenizer.eos_token_id, 0)
        rep, _ = train(model, prep, cfg.model.train, seq_len, 0, desc=f"bench {size}")
        full = ""
        with initialize_config_dir(config_dir=CONF, version_base=None):
            full_cfg = compose("config", overrides=[f"model={size}", f"data={args.data}"])
        report = model_dir_for(full_cfg, prep) / "training.json"
        if report.exists():
            r = json.loads(report.read_text())
            full = (
                f"{r['train_seconds']:>8.0f} {r['tokens_per_second']:>8.0f} {r['heldout_loss']:>8.3f} "
                f"{r['quotes']['memorized']}/{r['quotes']['total']} {r['facts']['forward_accuracy']:.2f}"
            )
        print(
            f"{size:>5} {non_embedding_params(model):>14,} {rep['train_seconds']:>8.1f} {rep['tokens_seen']:>9} "
            f"{rep['tokens_per_second']:>9.0f} | full run: {full or 'not trained'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
