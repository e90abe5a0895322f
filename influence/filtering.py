"""TF-IDF candidate filter of Grosse et al. 2023 (modified Okapi BM25, Eqs. 28-29) over token ids.

Influence scans are expensive, so the paper first keeps, per query, the top 10,000 training
sequences by token overlap and only scores those. For query Q and document D:

    score(Q, D) = sum over query tokens t (repeats counted) of IDF(t) * (k1 + 1) * e(t, D) / (k1 + e(t, D))
    IDF(t)      = log((C - n(t) + 0.5) / (n(t) + 0.5) + 1)

with C the number of documents, n(t) the number of documents containing t and k1 = 1.5. In the
default ``mode="binary"`` e(t, D) is 1 if t occurs in D else 0, so the score is the sum of IDF(t)
over the query's tokens present in D and k1 has no effect; ``mode="count"`` uses the count of t in
D for e(t, D) (saturating term frequency, no length normalisation).

    index = BM25Index.build(train["input_ids"], attention_mask=train["attention_mask"])
    top = index.top_k(query_ids, 10_000)      # top.indices, top.scores; top.no_overlap flags a miss
    tops = index.top_k_many(list_of_query_ids, 10_000)

The index is an inverted sparse matrix (vocab x documents, CSR) so a query touches only the
posting lists of its own tokens; scoring is one sparse-sparse product, with no Python loop over
documents.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .errors import InfluenceError

MODES = ("binary", "count")

# Dense/sparse score rows held at once in top_k_many: queries per chunk = max(1, _CHUNK_ENTRIES // N).
_CHUNK_ENTRIES = 1 << 24


class NoOverlapWarning(UserWarning):
    """A query shares no token with the indexed corpus, so it has no candidates."""


class TopK(NamedTuple):
    """Candidates for one query: document indices sorted by descending score (ties: lower index first).

    Only documents sharing at least one token with the query (score > 0) are candidates, so fewer
    than k can come back; none at all is flagged by ``no_overlap``.
    """

    indices: np.ndarray  # int64 (m,), m <= min(k, N)
    scores: np.ndarray  # float64 (m,)

    @property
    def no_overlap(self) -> bool:
        """True when the query shares no token with any document (empty result)."""
        return len(self.indices) == 0


def _to_numpy(x) -> np.ndarray:
    """Tensor or array-like to a numpy array without copying where possible (torch optional)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _flatten_sequences(docs, attention_mask, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Documents as (flat token ids int64, indptr) from a (N, T) array/tensor (+ mask) or a list of id lists."""
    if isinstance(docs, dict):
        if "input_ids" not in docs:
            raise InfluenceError(f"{what}: a dict must hold 'input_ids' (and optionally 'attention_mask')")
        if attention_mask is None:
            attention_mask = docs.get("attention_mask")
        docs = docs["input_ids"]
    if hasattr(docs, "ndim") and not isinstance(docs, (list, tuple)):
        arr = _to_numpy(docs)
        if arr.ndim != 2:
            raise InfluenceError(
                f"{what}: give a 2-D (N, T) array of token ids or a list of token-id lists, got shape {arr.shape}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InfluenceError(f"{what}: token ids must be integers, got dtype {arr.dtype}")
        if attention_mask is None:
            lengths = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
            flat = arr.reshape(-1)
        else:
            mask = _to_numpy(attention_mask)
            if mask.shape != arr.shape:
                raise InfluenceError(
                    f"{what}: attention_mask has shape {mask.shape}, token ids {arr.shape}: pass the matching mask"
                )
            mask = mask.astype(bool, copy=False)
            lengths = mask.sum(axis=1, dtype=np.int64)
            flat = arr[mask]  # row-major, so each document's tokens stay contiguous
    else:
        if attention_mask is not None:
            raise InfluenceError(
                f"{what}: attention_mask only goes with a 2-D (N, T) array; drop it for lists of token ids"
            )
        docs = list(docs)
        if docs and all(isinstance(s, numbers.Integral) for s in docs):
            raise InfluenceError(
                f"{what}: got a flat list of ints; wrap it as a list of token-id lists ([ids]), "
                "or use top_k/scores for a single query"
            )
        seqs = [_to_numpy(s).reshape(-1) for s in docs]
        for s in seqs:
            if s.size and not np.issubdtype(s.dtype, np.integer):
                raise InfluenceError(f"{what}: token ids must be integers, got dtype {s.dtype}")
        lengths = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    if not np.issubdtype(flat.dtype, np.integer):  # only empty float lists get here
        flat = flat.astype(np.int64)
    return flat, indptr  # ids keep their integer dtype: no int64 copy of a large corpus


def _resolve_k(k, n: int) -> int:
    """k as a count (int >= 1) or a fraction of the corpus (float in (0, 1], at least 1 document); capped at N."""
    if isinstance(k, (bool, np.bool_)):
        raise InfluenceError(f"k={k!r}: give a positive int count or a fraction in (0, 1]")
    if isinstance(k, numbers.Integral):
        if k < 1:
            raise InfluenceError(f"k={k}: give a positive number of candidates (or a fraction in (0, 1])")
        return min(int(k), n)
    if isinstance(k, numbers.Real):
        if not (0.0 < k <= 1.0) or math.isnan(k):
            raise InfluenceError(
                f"k={k}: a float k is a fraction of the corpus and must lie in (0, 1]; give an int for a count"
            )
        return min(n, max(1, int(math.floor(k * n + 1e-9))))
    raise InfluenceError(f"k={k!r}: give a positive int count or a fraction in (0, 1]")


def _top_of(idx: np.ndarray, vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (idx, vals) pairs, descending value, ties by ascending index, exactly (also at the cut)."""
    if len(vals) > k:
        kth = np.partition(vals, len(vals) - k)[len(vals) - k]  # the k-th largest value
        above = np.flatnonzero(vals > kth)
        tied = np.flatnonzero(vals == kth)
        need = k - len(above)
        if need < len(tied):  # the cut falls inside a tie: keep the lowest document indices
            tied = tied[np.argpartition(idx[tied], need - 1)[:need]] if need > 0 else tied[:0]
        keep = np.concatenate([above, tied])
        idx, vals = idx[keep], vals[keep]
    order = np.lexsort((idx, -vals))
    return idx[order].astype(np.int64, copy=False), vals[order]


def _row_block(m: sp.csr_array, start: int, stop: int) -> sp.csr_array:
    """Rows [start, stop) of a CSR, keeping each row's stored entry order (the summation order)."""
    stop = min(stop, m.shape[0])
    a, b = m.indptr[start], m.indptr[stop]
    return sp.csr_array((m.data[a:b], m.indices[a:b], m.indptr[start : stop + 1] - a), shape=(stop - start, m.shape[1]))


class BM25Index:
    """Inverted index (vocab x documents sparse CSR) with per-token IDF, for the paper's TF-IDF filter.

    Build with :meth:`build`; do not call the constructor directly.
    """

    def __init__(self, postings: sp.csr_array, idf: np.ndarray, mode: str, k1: float):
        self._postings = postings  # (V, N): row t lists the documents containing t; data = e-term
        self.idf = idf  # (V,) float64
        self.doc_freq = np.diff(postings.indptr).astype(np.int64)  # n(t), documents containing t
        self.mode = mode
        self.k1 = k1

    @classmethod
    def build(
        cls, docs, vocab_size: int | None = None, mode: str = "binary", k1: float = 1.5, attention_mask=None
    ) -> "BM25Index":
        """Index documents given as a (N, T) LongTensor/array (with optional attention_mask: padding is
        skipped), a dict with 'input_ids'/'attention_mask', or a list of token-id lists.

        vocab_size defaults to max token id + 1; pass the tokenizer's size so queries may use any id.
        """
        if mode not in MODES:
            raise InfluenceError(f"mode={mode!r}: use one of {MODES}")
        if not (isinstance(k1, numbers.Real) and k1 > 0 and math.isfinite(k1)):
            raise InfluenceError(f"k1={k1!r}: give a positive finite number (the paper uses 1.5)")
        flat, indptr = _flatten_sequences(docs, attention_mask, "documents")
        n = len(indptr) - 1
        if n == 0:
            raise InfluenceError("empty corpus: give at least one document to index")
        if flat.size == 0:
            raise InfluenceError("every document is empty (all tokens masked out): check the attention_mask")
        lo, hi = int(flat.min()), int(flat.max())
        if vocab_size is None:
            vocab_size = hi + 1
        elif not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
            raise InfluenceError(f"vocab_size={vocab_size!r}: give a positive int (the tokenizer's vocabulary size)")
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise InfluenceError(
                f"document token id {bad} is outside the vocabulary [0, {vocab_size}): fix the ids or pass a larger vocab_size"
            )
        idx_dtype = np.int32 if max(vocab_size, n, flat.size) < 2**31 else np.int64
        # Documents x vocab with duplicates, then summed: data = term count per (document, token).
        docs_x = sp.csr_array(
            (np.ones(flat.size, dtype=np.float64), flat.astype(idx_dtype, copy=False), indptr.astype(idx_dtype)),
            shape=(n, vocab_size),
        )
        del flat
        docs_x.sum_duplicates()
        if mode == "binary":
            docs_x.data[:] = 1.0
        else:
            c = docs_x.data
            docs_x.data = (k1 + 1.0) * c / (k1 + c)
        postings = sp.csr_array(docs_x.T)  # CSC view transposed -> (V, N) CSR, document ids sorted per token
        del docs_x
        df = np.diff(postings.indptr).astype(np.float64)
        idf = np.log((n - df + 0.5) / (df + 0.5) + 1.0)
        return cls(postings, idf, mode, float(k1))

    # ----------------------------------------------------------------- properties
    @property
    def num_docs(self) -> int:
        return self._postings.shape[1]

    @property
    def vocab_size(self) -> int:
        return self._postings.shape[0]

    @property
    def nnz(self) -> int:
        """Stored (token, document) pairs: distinct tokens summed over documents."""
        return int(self._postings.nnz)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the sparse inverted matrix (data + indices + indptr); the IDF vector is extra."""
        p = self._postings
        return int(p.data.nbytes + p.indices.nbytes + p.indptr.nbytes)

    def __repr__(self) -> str:
        return (
            f"BM25Index(docs={self.num_docs}, vocab={self.vocab_size}, nnz={self.nnz}, mode={self.mode!r}, "
            f"k1={self.k1}, {self.memory_bytes / 2**20:.1f} MiB)"
        )

    # ------------------------------------------------------------------- queries
    def _query_rows(self, queries, attention_mask=None) -> sp.csr_array:
        """Queries as a (B, V) CSR of weights multiplicity(t) * IDF(t), entries in ascending-weight order.

        Ascending order on purpose: SciPy's sparse product sums each row's entries in stored order, so
        documents matching the same multiset of weights get bit-identical scores and tie exactly.
        Tokens no document contains are dropped (they add nothing).
        """
        flat, indptr = _flatten_sequences(queries, attention_mask, "queries")
        if len(indptr) == 1:
            raise InfluenceError("no queries given: pass at least one list of token ids")
        lengths = np.diff(indptr)
        if (lengths == 0).any():
            raise InfluenceError(
                f"query {int(np.flatnonzero(lengths == 0)[0])} has no tokens: give prompt+completion token ids"
            )
        if flat.min() < 0 or flat.max() >= self.vocab_size:
            bad = int(flat.min()) if flat.min() < 0 else int(flat.max())
            raise InfluenceError(
                f"query token id {bad} is outside the index vocabulary [0, {self.vocab_size}): "
                "use the same tokenizer, or build with vocab_size=len(tokenizer)"
            )
        b = len(lengths)
        rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
        counted = sp.coo_array((np.ones(flat.size), (rows, flat)), shape=(b, self.vocab_size)).tocsr()
        counted.sum_duplicates()  # data = multiplicity of each distinct token in its query
        q_rows = np.repeat(np.arange(b), np.diff(counted.indptr))
        tok = counted.indices
        w = counted.data * self.idf[tok]
        keep = self.doc_freq[tok] > 0
        q_rows, tok, w = q_rows[keep], tok[keep], w[keep]
        order = np.lexsort((tok, w, q_rows))  # per query, ascending weight (ties by token id)
        q_rows, tok, w = q_rows[order], tok[order], w[order]
        ptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(np.bincount(q_rows, minlength=b), out=ptr[1:])
        idx_dtype = self._postings.indices.dtype
        return sp.csr_array((w, tok.astype(idx_dtype), ptr.astype(idx_dtype)), shape=(b, self.vocab_size))

    def _score_rows(self, weights: sp.csr_array) -> sp.csr_array:
        """(B, N) sparse scores: one sparse-sparse product touching only the queries' posting lists."""
        out = weights @ self._postings
        return sp.csr_array(out)

    def scores(self, query_ids) -> np.ndarray:
        """Scores of one query (token ids, repeats counted) against every document: float64 (N,)."""
        rows = self._score_rows(self._query_rows([query_ids]))
        return rows.toarray()[0]

    def scores_many(self, queries, attention_mask=None) -> np.ndarray:
        """Dense (B, N) scores for several queries (B * N floats: use top_k_many for large corpora)."""
        return self._score_rows(self._query_rows(queries, attention_mask)).toarray()

    def top_k(self, query_ids, k) -> TopK:
        """The k highest-scoring documents for one query; see :meth:`top_k_many`."""
        return self.top_k_many([query_ids], k, _stacklevel=3)[0]

    def top_k_many(self, queries, k, attention_mask=None, *, _stacklevel: int = 2) -> list[TopK]:
        """Top-k candidates per query, sorted by descending score, ties broken by lower document index.

        queries: list of token-id lists, a (B, T) array/tensor with attention_mask, or the dict from
        ``encode_queries``. k: an int count or a float fraction of the corpus in (0, 1] (at least one
        document); k > N returns all N. Only documents sharing a token with the query (score > 0) are
        returned, so a result can be shorter than k; a query sharing no token with the corpus gives an
        empty TopK (``no_overlap``) and a :class:`NoOverlapWarning`.
        """
        kk = _resolve_k(k, self.num_docs)
        weights = self._query_rows(queries, attention_mask)
        chunk = max(1, _CHUNK_ENTRIES // self.num_docs)
        results: list[TopK] = []
        for start in range(0, weights.shape[0], chunk):
            block = self._score_rows(_row_block(weights, start, start + chunk))
            for r in range(block.shape[0]):
                s, e = block.indptr[r], block.indptr[r + 1]
                idx, vals = block.indices[s:e], block.data[s:e]
                pos = vals > 0  # a product entry can only be positive, but keep the contract explicit
                idx, vals = _top_of(idx[pos], vals[pos], kk)
                if len(idx) == 0:
                    warnings.warn(
                        f"query {start + r} shares no token with the {self.num_docs} indexed documents: "
                        "no candidates (check the tokenizer matches the corpus)",
                        NoOverlapWarning,
                        stacklevel=_stacklevel,
                    )
                results.append(TopK(idx, vals))
        return results


def bm25_top_k(
    docs, queries, k, vocab_size: int | None = None, mode: str = "binary", k1: float = 1.5, attention_mask=None
) -> list[TopK]:
    """One-shot convenience: build a :class:`BM25Index` over docs and return ``top_k_many(queries, k)``."""
    return BM25Index.build(docs, vocab_size=vocab_size, mode=mode, k1=k1, attention_mask=attention_mask).top_k_many(
        queries, k
    )


__all__ = ["BM25Index", "MODES", "NoOverlapWarning", "TopK", "bm25_top_k"]
