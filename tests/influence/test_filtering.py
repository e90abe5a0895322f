"""TF-IDF (modified BM25, Eqs. 28-29) filter: brute-force agreement, hand-computed scores, edge cases, bad input."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from influence import filtering
from influence.errors import InfluenceError
from influence.filtering import BM25Index, NoOverlapWarning, bm25_top_k

K1 = 1.5


# --------------------------------------------------------------------------- reference
def reference_scores(docs: list[list[int]], query: list[int], mode: str, k1: float = K1) -> list[float]:
    """Eqs. 28-29 literally, in pure Python: loop over documents, then over query tokens (repeats counted)."""
    c = len(docs)
    sets = [set(d) for d in docs]
    counts = [Counter(d) for d in docs]

    def idf(t):
        n = sum(1 for s in sets if t in s)
        return math.log((c - n + 0.5) / (n + 0.5) + 1)

    out = []
    for d in range(c):
        terms = []
        for t in query:
            e = (1 if t in sets[d] else 0) if mode == "binary" else counts[d][t]
            terms.append(idf(t) * (k1 + 1) * e / (k1 + e))
        out.append(math.fsum(terms))  # exactly rounded: equal term multisets give equal scores
    return out


def reference_top(scores: list[float], k: int) -> list[int]:
    """Documents with a positive score, by descending score then ascending index, first k."""
    ranked = sorted((d for d, s in enumerate(scores) if s > 0), key=lambda d: (-scores[d], d))
    return ranked[:k]


@pytest.fixture(scope="module")
def corpus():
    """300 documents of 3..40 tokens over a 120-token vocabulary, Zipf-like so df values repeat (many ties)."""
    rng = random.Random(0)
    vocab = 120
    weights = [1.0 / (r + 1) for r in range(vocab - 10)]  # ids 110..119 never occur in the corpus
    docs = [rng.choices(range(vocab - 10), weights=weights, k=rng.randint(3, 40)) for _ in range(300)]
    queries = [
        [5, 17, 17, 60, 3],  # repeated token
        [0, 0, 0, 1],  # common tokens, repeated
        [80, 95, 101, 101, 109],  # rare tokens
        [2, 115, 44],  # 115: in vocab, absent from corpus
        rng.choices(range(vocab - 10), k=20),  # a prompt+completion-sized query
        [7],
    ]
    return docs, vocab, queries


# --------------------------------------------------------------------------- brute force agreement
@pytest.mark.parametrize("mode", ["binary", "count"])
def test_matches_bruteforce_reference(corpus, mode):
    docs, vocab, queries = corpus
    index = BM25Index.build(docs, vocab_size=vocab, mode=mode)
    for q in queries:
        ref = reference_scores(docs, q, mode)
        got = index.scores(q)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        for k in (len(docs), 10, 1):
            top = index.top_k(q, k)
            assert top.indices.tolist() == reference_top(ref, k), (q, k)
            np.testing.assert_allclose(top.scores, [ref[d] for d in top.indices], rtol=0, atol=1e-12)
    many = index.top_k_many(queries, 25)
    for q, top in zip(queries, many):
        assert top.indices.tolist() == reference_top(reference_scores(docs, q, mode), 25)


def test_count_mode_uses_k1(corpus):
    docs, vocab, queries = corpus
    for k1 in (0.5, 3.0):
        index = BM25Index.build(docs, vocab_size=vocab, mode="count", k1=k1)
        np.testing.assert_allclose(
            index.scores(queries[0]), reference_scores(docs, queries[0], "count", k1), rtol=0, atol=1e-12
        )
    # binary mode: (k1+1)e/(k1+e) = e for e in {0, 1}, so k1 changes nothing
    a = BM25Index.build(docs, vocab_size=vocab, k1=0.3).scores(queries[4])
    b = BM25Index.build(docs, vocab_size=vocab, k1=9.0).scores(queries[4])
    np.testing.assert_array_equal(a, b)


def test_batched_chunks_match_single(corpus, monkeypatch):
    docs, vocab, queries = corpus
    index = BM25Index.build(docs, vocab_size=vocab)
    monkeypatch.setattr(filtering, "_CHUNK_ENTRIES", 2 * len(docs))  # 2 queries per chunk: exercises chunk edges
    with pytest.warns(NoOverlapWarning):
        many = index.top_k_many(queries + [[112]], 40)
    for q, top in zip(queries, many):
        single = index.top_k(q, 40)
        np.testing.assert_array_equal(top.indices, single.indices)
        np.testing.assert_array_equal(top.scores, single.scores)
    assert many[-1].no_overlap and not many[0].no_overlap


# --------------------------------------------------------------------------- hand-computed example
def test_three_document_example_by_hand():
    # D0 = [1, 2, 3], D1 = [2, 3, 3, 4], D2 = [5]; C = 3.
    # n(1) = 1, n(2) = 2, n(3) = 2, n(4) = 1, n(5) = 1.
    # IDF(n=1) = log((3 - 1 + 0.5) / (1 + 0.5) + 1) = log(2.5/1.5 + 1) = log(8/3)  ~ 0.9808
    # IDF(n=2) = log((3 - 2 + 0.5) / (2 + 0.5) + 1) = log(1.5/2.5 + 1) = log(1.6)  ~ 0.4700
    idf1 = math.log(8 / 3)
    idf2 = math.log(1.6)
    # Query Q = [2, 3, 3, 4]: token 3 twice, so it contributes twice.
    # binary: D0 has 2, 3 (not 4):      IDF(2) + 2*IDF(3)          = 3*log(1.6)
    #         D1 has 2, 3, 4:           3*log(1.6) + log(8/3)
    #         D2 has none:              0
    b0, b1 = 3 * idf2, 3 * idf2 + idf1
    # count, k1 = 1.5: f(c) = 2.5*c / (1.5 + c); f(1) = 1, f(2) = 5/3.5 = 10/7.
    #         D0: counts 2->1, 3->1:    IDF(2)*1 + 2*IDF(3)*1      = 3*log(1.6)
    #         D1: counts 2->1, 3->2, 4->1: log(1.6)*1 + 2*log(1.6)*10/7 + log(8/3)*1 = log(1.6)*27/7 + log(8/3)
    c0, c1 = 3 * idf2, idf2 * 27 / 7 + idf1
    docs = [[1, 2, 3], [2, 3, 3, 4], [5]]
    q = [2, 3, 3, 4]
    binary = BM25Index.build(docs, vocab_size=6)
    np.testing.assert_allclose(binary.idf[1:6], [idf1, idf2, idf2, idf1, idf1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(binary.scores(q), [b0, b1, 0.0], rtol=0, atol=1e-12)
    top = binary.top_k(q, 3)
    assert top.indices.tolist() == [1, 0]  # D2 shares no token: not a candidate
    np.testing.assert_allclose(top.scores, [b1, b0], rtol=0, atol=1e-12)
    count = BM25Index.build(docs, vocab_size=6, mode="count")
    np.testing.assert_allclose(count.scores(q), [c0, c1, 0.0], rtol=0, atol=1e-12)
    # k1 = 0.5 in count mode: f(2) = 1.5*2/2.5 = 1.2, so D1 = log(1.6)*(1 + 2*1.2) + log(8/3)
    np.testing.assert_allclose(
        BM25Index.build(docs, vocab_size=6, mode="count", k1=0.5).scores(q),
        [3 * idf2, idf2 * 3.4 + idf1, 0.0],
        rtol=0,
        atol=1e-12,
    )


def test_padded_tensor_with_mask_equals_lists():
    docs = [[1, 2, 3], [2, 3, 3, 4], [5]]
    ids = torch.tensor([[1, 2, 3, 0], [2, 3, 3, 4], [5, 0, 0, 0]])  # 0 = padding, masked out
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    a = BM25Index.build(docs, vocab_size=6, mode="count")
    b = BM25Index.build(ids, attention_mask=mask, vocab_size=6, mode="count")
    c = BM25Index.build({"input_ids": ids, "attention_mask": mask}, vocab_size=6, mode="count")
    assert b.doc_freq[0] == 0  # padding was not indexed
    for q in ([2, 3, 3, 4], [0, 5], [1]):
        np.testing.assert_array_equal(a.scores(q), b.scores(q))
        np.testing.assert_array_equal(a.scores(q), c.scores(q))
    # queries as a padded batch with a mask (e.g. encode_queries output)
    qs = b.top_k_many(
        {
            "input_ids": torch.tensor([[2, 3, 3, 4], [1, 9, 9, 9]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]),
        },
        3,
    )
    assert [t.indices.tolist() for t in qs] == [[1, 0], [0]]
    # without the mask the padding id 0 would be a token of D0 and D2
    assert BM25Index.build(ids, vocab_size=6).doc_freq[0] == 2


def test_memory_bytes_is_the_sparse_matrix():
    docs = [[1, 2, 3], [2, 3, 3, 4], [5]]
    index = BM25Index.build(docs, vocab_size=6)
    assert index.nnz == 7  # distinct (document, token) pairs: 3 + 3 + 1
    # float64 data + int32 indices per pair, int32 indptr of V + 1 entries
    assert index.memory_bytes == 7 * 8 + 7 * 4 + (6 + 1) * 4


# --------------------------------------------------------------------------- k handling
def test_ties_broken_by_lower_index_also_at_the_cut():
    docs = [[1], [1, 3], [1], [2, 1], [1]]
    index = BM25Index.build(docs, vocab_size=4)
    assert index.top_k([1], 2).indices.tolist() == [0, 1]  # all five tie
    assert index.top_k([1], 4).indices.tolist() == [0, 1, 2, 3]
    assert index.top_k([1, 2], 3).indices.tolist() == [3, 0, 1]


@pytest.mark.parametrize("p,q,r", [(1, 2, 6), (1, 3, 6)])
def test_equal_scores_from_different_tokens_tie_exactly(p, q, r):
    # X = [1, 2, 3] and Y = [4, 5, 6] with df(1) = df(5) = p, df(2) = df(6) = q, df(3) = df(4) = r, so
    # IDF values A, B, C are shared and both score A + B + C for the query [1..6]. Summed in token-id
    # order they would be (A + B) + C vs (C + A) + B, which differ by one ulp for these dfs (either sign):
    # the filter must still see an exact tie and rank the lower index first.
    fill = [[1]] * (p - 1) + [[5]] * (p - 1) + [[2]] * (q - 1) + [[6]] * (q - 1) + [[3]] * (r - 1) + [[4]] * (r - 1)
    query = [1, 2, 3, 4, 5, 6]
    for docs in ([[1, 2, 3], [4, 5, 6]] + fill, [[4, 5, 6], [1, 2, 3]] + fill):
        index = BM25Index.build(docs, vocab_size=7)
        s = index.scores(query)
        assert s[0] == s[1]
        assert index.top_k(query, 2).indices.tolist() == [0, 1]


def test_k_larger_than_corpus_returns_all():
    docs = [[0, i % 7 + 1] for i in range(50)]  # token 0 in every document
    index = BM25Index.build(docs, vocab_size=8)
    top = index.top_k([0, 3], 10_000)
    assert len(top.indices) == 50 and sorted(top.indices.tolist()) == list(range(50))
    assert np.all(np.diff(top.scores) <= 0)
    # only overlapping documents come back: token 3 alone is in 7 of them
    assert len(index.top_k([3], 10_000).indices) == 7


def test_fractional_k():
    docs = [[0, i % 7 + 1] for i in range(50)]
    index = BM25Index.build(docs, vocab_size=8)
    assert len(index.top_k([0], 0.1).indices) == 5  # 10% of 50
    assert len(index.top_k([0], 0.001).indices) == 1  # at least one
    assert len(index.top_k([0], 1.0).indices) == 50
    assert len(index.top_k([0], 0.5).indices) == 25


def test_no_overlap_query_warns_and_returns_empty():
    index = BM25Index.build([[1, 2], [2, 3]], vocab_size=10)
    with pytest.warns(NoOverlapWarning, match="shares no token"):
        top = index.top_k([7, 8, 8], 5)
    assert top.no_overlap and len(top.indices) == 0 and len(top.scores) == 0
    np.testing.assert_array_equal(index.scores([7, 8]), np.zeros(2))
    with pytest.warns(NoOverlapWarning):
        res = bm25_top_k([[1, 2], [2, 3]], [[3], [9]], 1, vocab_size=10)
    assert [r.indices.tolist() for r in res] == [[1], []]


# --------------------------------------------------------------------------- bad input
def _raises(fn, match):
    with pytest.raises(InfluenceError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_input_is_one_line_influence_error():
    index = BM25Index.build([[1, 2], [2, 3]], vocab_size=10)
    _raises(lambda: BM25Index.build([]), "empty corpus")
    _raises(lambda: BM25Index.build(torch.zeros((0, 8), dtype=torch.long)), "empty corpus")
    _raises(lambda: BM25Index.build([[1, 2], [3, 12]], vocab_size=10), "outside the vocabulary")
    _raises(lambda: BM25Index.build([[1, -1]]), "outside the vocabulary")
    _raises(lambda: BM25Index.build(torch.ones(2, 3), vocab_size=10), "integers")
    _raises(
        lambda: BM25Index.build(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)), "attention_mask"
    )
    _raises(lambda: BM25Index.build([[1]], mode="tfidf"), "mode")
    _raises(lambda: BM25Index.build([[1]], k1=-1.0), "k1")
    _raises(lambda: index.top_k([1], -3), "positive")
    _raises(lambda: index.top_k([1], 0), "positive")
    _raises(lambda: index.top_k([1], 1.5), "fraction")
    _raises(lambda: index.top_k([1], True), "positive int")
    _raises(lambda: index.top_k([1, 10], 2), "outside the index vocabulary")
    _raises(lambda: index.scores([-1]), "outside the index vocabulary")
    _raises(lambda: index.top_k([], 2), "no tokens")
    _raises(lambda: index.top_k_many([], 2), "no queries")
    _raises(lambda: index.top_k_many([1, 2], 2), "flat list")
