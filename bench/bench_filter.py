"""TF-IDF (BM25) candidate filter at scale: index build seconds, index memory, milliseconds per query.

Synthetic corpus, not real text: N sequences of T token ids drawn i.i.d. from a Zipf-Mandelbrot
distribution p(rank) ~ 1 / (rank + 2.7)^s over a V-token vocabulary (id = rank), and queries of
~20 ids from the same distribution. Frequent ids occur in most sequences, so query posting lists
are long (a pessimistic case for per-query cost).
Usage: python bench/bench_filter.py [--n 1000000] [--seq-len 128] [--vocab 32768] [--queries 32] [--query-len 20] [--k 10000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from influence.filtering import BM25Index, NoOverlapWarning


def zipf_ids(rng: np.random.Generator, shape: tuple[int, ...], vocab: int, s: float) -> np.ndarray:
    """i.i.d. token ids with p(id) ~ 1/(id + 2.7)^s, as int32, drawn in row chunks to bound memory."""
    p = 1.0 / (np.arange(vocab) + 2.7) ** s
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    out = np.empty(shape, dtype=np.int32)
    flat = out.reshape(shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    for a in range(0, shape[0], step):
        u = rng.random((min(step, shape[0] - a), flat.shape[1]))
        flat[a : a + step] = np.searchsorted(cdf, u, side="right")
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32_768)
    ap.add_argument("--zipf-s", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--query-len", type=int, default=20)
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--mode", default="binary", choices=["binary", "count"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    print(
        f"corpus: SYNTHETIC, {args.n:,} sequences x {args.seq_len} tokens, i.i.d. Zipf-Mandelbrot ids "
        f"p(r) ~ 1/(r+2.7)^{args.zipf_s} over a {args.vocab:,}-token vocabulary (not real text)"
    )
    t = time.perf_counter()
    docs = zipf_ids(rng, (args.n, args.seq_len), args.vocab, args.zipf_s)
    queries = [q.tolist() for q in zipf_ids(rng, (args.queries, args.query_len), args.vocab, args.zipf_s)]
    print(f"generated in {time.perf_counter() - t:.1f} s; corpus array {docs.nbytes / 2**20:.0f} MiB")

    t = time.perf_counter()
    index = BM25Index.build(docs, vocab_size=args.vocab, mode=args.mode)
    build_s = time.perf_counter() - t
    del docs
    print(f"index build:      {build_s:8.2f} s   ({index!r})")
    print(
        f"index memory:     {index.memory_bytes / 1e6:8.1f} MB   (sparse matrix: {index.nnz:,} (token, sequence) pairs, "
        f"{index.nnz / args.n:.1f} distinct tokens per sequence; float64 data + int32 indices)"
    )

    qtok = [sum(int(index.doc_freq[t]) for t in set(q)) for q in queries]
    print(
        f"queries:          {args.queries} x {args.query_len} tokens, mean {np.mean(qtok) / 1e6:.2f} M postings touched per query"
    )

    index.top_k(queries[0], args.k)  # warm-up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoOverlapWarning)
        t = time.perf_counter()
        singles = [index.top_k(q, args.k) for q in queries]
        single_ms = (time.perf_counter() - t) / len(queries) * 1e3
        t = time.perf_counter()
        batched = index.top_k_many(queries, args.k)
        batch_ms = (time.perf_counter() - t) / len(queries) * 1e3
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(singles, batched))
    got = np.mean([len(r.indices) for r in singles])
    print(
        f"query, top {args.k:,}: {single_ms:8.1f} ms/query one at a time (top_k), "
        f"{batch_ms:.1f} ms/query batched (top_k_many); mean {got:,.0f} candidates returned"
    )
    print(f"peak RSS:         {peak_rss_mb():8.0f} MB (whole process, incl. the generated corpus)")


if __name__ == "__main__":
    main()
