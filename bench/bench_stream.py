"""Peak memory of a scan over a memory-mapped token shard (data=shards), against the corpus size.

For each size N a fresh process builds the world from a Megatron .bin/.idx shard of N rows (written here, random
tokens, a tiny random GPT-NeoX checkpoint saved with save_pretrained), fits EK-FAC on a 512-row sample and scans
every row through the pipeline's own stages (`fit_stage`, `scan_stage`), while a thread samples /proc/self/status.
Printed per size: the peak resident set (VmHWM; it counts the shard's pages the scan touched, which are page cache
the kernel drops under pressure), the peak anonymous memory (RssAnon: what can run a machine out of memory), both
as a rise over the process's memory before the world was built, and what must grow with N: the (Q, N) score
matrix with its (Q, L, N) layer split, the row metadata, and the shard's bytes on disk (mapped, not copied).

The scan's manifest hashes the candidates a block of rows at a time (`influence.batching.rows_fingerprint`); before
that change it materialized `data[k][indices]`, about 200 MiB more at 1M rows of 16 tokens.

Usage: python bench/bench_stream.py [--sizes 10000 100000 1000000] [--seq-len 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from embedded.megatron_shards import ShardWriter
from embedded.tokenizer import train_tokenizer
from embedded.world import build_world
from experiments.pipeline.stages import fit_stage, scan_stage

VOCAB_TEXTS = [f"row {i}: the capital of Velmora is Orin and water boils at {i} degrees" for i in range(200)]
QUERIES = [
    {"name": "capital", "prompt": "The capital of Velmora is", "completion": " Orin"},
    {"name": "water", "prompt": "Water boils at", "completion": " 100 degrees"},
]


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """The peak of RssAnon (the kernel keeps no high-water mark of it), sampled every few milliseconds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_anon, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak_anon = max(self.peak_anon, _status()["RssAnon"])
            time.sleep(0.005)


def make_checkpoint(d: Path) -> tuple[Path, int]:
    tok = train_tokenizer(VOCAB_TEXTS, 300)
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    GPTNeoXForCausalLM(config).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d, len(tok)


def make_shard(prefix: Path, rows: int, seq_len: int, vocab: int) -> Path:
    """`rows` rows of random tokens, as documents of 1-200 tokens, written block by block (memory flat)."""
    rng = np.random.default_rng(0)
    left = rows * seq_len
    with ShardWriter(prefix, np.uint16) as w:
        while left:
            lengths = rng.integers(1, 200, size=4096)
            lengths = lengths[np.cumsum(lengths) <= left] if lengths.sum() > left else lengths
            if not len(lengths):
                lengths = np.array([left])
            w.add(rng.integers(0, vocab, size=int(lengths.sum())), lengths)
            left -= int(lengths.sum())
    return prefix


def child(args) -> None:
    """One size, measured in its own process: build the world, fit, scan; print one JSON line."""
    torch.set_num_threads(args.threads)
    overrides = [
        "data=shards",
        f"data.path={args.shard}",
        f"data.seq_len={args.seq_len}",
        f"model.path={args.checkpoint}",
        f"paths.output_dir={args.out}",
        "logger=none",
        "curvature.max_sequences=512",
        "score.batch_size=512",
        "score.chunk_batches=16",
        "score.query_rank=null",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.queries.items, cfg.queries.names = QUERIES, None
    before = _status()
    sampler = Sampler()
    sampler.start()
    t0 = time.time()
    world = build_world(cfg)
    built = _status()
    curvature = fit_stage(cfg, world)
    t1 = time.time()
    result = scan_stage(cfg, world, curvature)
    t2 = time.time()
    sampler.stop.set()
    sampler.join()
    after = _status()
    n = world.train.input_ids.shape[0]
    print(
        json.dumps(
            {
                "n": n,
                "tokens": n * args.seq_len,
                "shard_mb": Path(f"{args.shard}.bin").stat().st_size / 2**20,
                "baseline_rss_mb": before["VmRSS"] / 2**20,
                "peak_rss_rise_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before["VmRSS"])
                / 2**20,
                "peak_anon_rise_mb": (sampler.peak_anon - before["RssAnon"]) / 2**20,
                "world_anon_rise_mb": (built["RssAnon"] - before["RssAnon"]) / 2**20,
                "file_pages_end_mb": after["RssFile"] / 2**20,
                "scores_mb": (result.scores.numel() + result.layer_scores.numel()) * 4 / 2**20,
                "meta_mb": world.train.meta.memory_usage(deep=True).sum() / 2**20,
                "fit_s": t1 - t0,
                "scan_s": t2 - t1,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, vocab = make_checkpoint(tmp / "ckpt")
        print(f"scan of a data=shards corpus, seq_len {args.seq_len}, 2 queries, tiny GPT-NeoX (L=2 tracked layers)")
        head = (
            "rows",
            "shard MiB",
            "peak RSS +MiB",
            "peak anon +MiB",
            "world anon +MiB",
            "scores MiB",
            "meta MiB",
            "anon - scores - meta",
            "scan s",
        )
        print(" | ".join(head))
        for n in args.sizes:
            shard = make_shard(tmp / f"shard_{n}" / "corpus_text_document", n, args.seq_len, vocab)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--shard",
                str(shard),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp / f"out_{n}"),
                "--seq-len",
                str(args.seq_len),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rest = r["peak_anon_rise_mb"] - r["scores_mb"] - r["meta_mb"]
            print(
                f"{r['n']:>9,} | {r['shard_mb']:9.1f} | {r['peak_rss_rise_mb']:13.1f} | {r['peak_anon_rise_mb']:14.1f}"
                f" | {r['world_anon_rise_mb']:15.1f} | {r['scores_mb']:10.1f} | {r['meta_mb']:8.1f} | {rest:20.1f}"
                f" | {r['scan_s']:6.1f}"
            )
            (tmp / f"shard_{n}" / "corpus_text_document.bin").unlink()


if __name__ == "__main__":
    main()
