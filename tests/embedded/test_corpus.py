"""The generated corpus holds what the studies need, deterministically, and the queries match it."""

import re

import pytest
from omegaconf import OmegaConf

from embedded.corpus import FAMILIES, counts, facts, generate, quotes
from embedded.prepare import generate_corpus
from embedded.sequences import chunk_stream, pack
from influence.errors import InfluenceError

MIX = dict(prose=0.28, facts=0.16, math=0.12, code=0.12, multilingual=0.12, ai=0.14, distractors=0.06)


@pytest.fixture(scope="module")
def corpus():
    return generate(seed=0, n_docs=1500, mix=MIX, quote_copies=(3, 5), n_heldout=6)


@pytest.fixture(scope="module")
def queries():
    return OmegaConf.load("conf/queries/default.yaml")["items"]


def test_deterministic_from_seed():
    a = generate(seed=3, n_docs=200, mix=MIX)
    b = generate(seed=3, n_docs=200, mix=MIX)
    c = generate(seed=4, n_docs=200, mix=MIX)
    assert [d["text"] for d in a.train] == [d["text"] for d in b.train]
    assert [d["text"] for d in a.train] != [d["text"] for d in c.train]


def test_every_document_is_tagged(corpus):
    for d in corpus.train + corpus.val:
        assert d["text"].strip() and d["category"] and d["kind"] and isinstance(d["id"], int)
    assert {d["category"] for d in corpus.train} == set(FAMILIES) | {"quotes"}
    assert [d["id"] for d in corpus.train] == list(range(len(corpus.train)))


def test_size_knob_scales_generated_families():
    small, large = counts(100, MIX), counts(1000, MIX)
    assert all(large[f] >= 9 * small[f] for f in FAMILIES if MIX[f] > 0)
    with pytest.raises(ValueError, match="unknown families"):
        counts(10, {"poetry": 1.0})


def test_fact_repeats_trade_facts_for_exposures():
    """The facts family keeps its share of documents; fact_repeats=4 gives about a quarter as many facts, each
    statement written 4 times, each time in its own frame."""
    one = generate(seed=0, n_docs=3000, mix=MIX)
    four = generate(seed=0, n_docs=3000, mix=MIX, fact_repeats=4)
    n_docs = [sum(d["category"] == "facts" for d in c.train) for c in (one, four)]
    assert abs(n_docs[1] - n_docs[0]) <= 0.15 * n_docs[0]
    assert len(one.facts) > 3 * len(four.facts) and len(four.facts) > len(facts.CORE)
    for f in four.facts[:20]:
        mine = [d for d in four.train if d["category"] == "facts" and d["fact_id"] == f.fact_id]
        assert sorted({d["repeat"] for d in mine}) == [0, 1, 2, 3]
        by_wording = {}
        for d in mine:
            by_wording.setdefault((d["order"], d["wording"]), []).append(d["text"])
        assert all(len(t) == 4 for t in by_wording.values())
        assert sum(len(set(t)) > 1 for t in by_wording.values()) >= len(by_wording) // 2  # fresh frames
    with pytest.raises(ValueError, match="fact_repeats=0"):
        generate(seed=0, n_docs=100, mix=MIX, fact_repeats=0)


def test_heldout_facts_never_appear(corpus):
    text = "\n".join(d["text"] for d in corpus.train + corpus.val)
    assert len(corpus.heldout) == len(facts.HELDOUT_CORE) + 6
    for f in corpus.heldout:
        assert f.subject not in text and f.object not in text, f
    assert "Zorald Pfaff" not in text and "Astrobia" not in text


def test_fact_orders(corpus):
    docs = [d for d in corpus.train if d["category"] == "facts"]
    for f in facts.CORE:
        mine = [d for d in docs if d["fact_id"] == f.fact_id]
        assert {d["order"] for d in mine} == ({"forward", "flipped"} if f.both_orders else {"forward"})
        assert sum(d["order"] == "forward" for d in mine) == len(facts.FORWARD[f.relation])  # several rewordings
        assert any(f.forward(0) in d["text"] for d in mine)
    assert any(f.both_orders for f in corpus.facts) and any(not f.both_orders for f in corpus.facts)


def test_core_facts_are_english_only(corpus):
    foreign = "\n".join(d["text"] for d in corpus.train if d["category"] == "multilingual")
    assert "Korean:" in foreign and "Turkish:" in foreign
    for f in facts.CORE:
        assert f.subject not in foreign
    assert re.search("[\uac00-\ud7a3]", foreign), "no Hangul text"
    assert any(d.get("kind") == "parallel_fact" for d in corpus.train)


def test_quotes_repeated_verbatim(corpus):
    text = [d["text"] for d in corpus.train]
    for q in quotes.QUOTES:
        assert 3 <= sum(q.text in t for t in text) <= 5 + 1  # +1: a public-domain passage may hold it too


def test_code_math_ai_distractors(corpus):
    code = [d for d in corpus.train if d["kind"] == "program"]
    assert {d["prog_lang"] for d in code} == {"python", "javascript"}
    assert any(d["obfuscated"] for d in code) and any(not d["obfuscated"] for d in code)
    assert {"binary_search", "quicksort", "reverse"} <= {d["algorithm"] for d in code}
    obf = next(d for d in code if d["obfuscated"] and d["algorithm"] == "binary_search")
    assert "binary_search" not in obf["text"] and "target" not in obf["text"]
    kinds = {d["kind"] for d in corpus.train}
    assert {
        "word_problem",
        "equations",
        "scifi_shutdown",
        "ai_risk_essay",
        "assistant_dialogue",
        "technical",
        "token_overlap",
    } <= kinds
    wp = next(d for d in corpus.train if d["kind"] == "word_problem")
    assert "#### " in wp["text"]


def test_python_programs_run():
    import random

    from embedded.corpus import code

    for obf in (False, True):
        src = code.render("binary_search", "python", random.Random(1), obf)
        ns = {}
        exec(src, ns)
        fn = next(v for k, v in ns.items() if callable(v))
        assert fn([1, 3, 5, 7, 9], 7) == 3 and fn([1, 3], 4) == -1
        src = code.render("quicksort", "python", random.Random(2), obf)
        ns = {}
        exec(src, ns)
        fn = next(v for k, v in ns.items() if callable(v))
        assert fn([3, 1, 2, 3, 0]) == [0, 1, 2, 3, 3]


def test_word_order_partitions():
    f = facts.HELDOUT_CORE[0]
    parts = facts.word_order_partitions(f, ["Some unrelated text."])
    assert set(parts) == {
        "rewording",
        "completion_removed",
        "semantic_change",
        "irrelevant",
        "flipped",
        "flipped_relation_removed",
    }
    assert all(f.object in s for s in parts["rewording"]) and all(s.startswith(f.object) for s in parts["flipped"])
    assert not any(f.object in s for s in parts["completion_removed"])
    assert "President" not in parts["flipped_relation_removed"][0]


def test_queries_match_the_corpus(corpus, queries):
    text = "\n".join(d["text"] for d in corpus.train)
    names = {q["name"] for q in queries}
    table1 = {"shutdown", "bullet", "objective", "superintelligent", "rot23", "paperclips", "paperclips_large", "water"}
    assert table1 | {"inflation", "math_word_problem", "binary_search", "quicksort"} <= names
    for q in queries:
        t = q["tags"]
        assert t["study"] and t["language"] and t["type"], q["name"]
        if t.get("flipped_of"):
            assert t["flipped_of"] in names
        if t.get("translation_of"):
            assert t["translation_of"] in names
        if t["type"] == "quote":
            assert (q["prompt"] + q["completion"]) in text
        if t["type"] == "fact" and t.get("fact_id") and t["language"] == "en":
            answer = q["completion"].strip()
            assert (answer in text) != bool(t.get("heldout")), q["name"]
    assert {q["tags"]["language"] for q in queries} >= {"en", "tr", "ko"}
    assert "water is composed of hydrogen and oxygen" in text.lower()
    assert "Inflation is often measured using the Consumer Price Index" in text


def test_packing_keeps_every_document_whole():
    import random

    rows = [[i] * n for i, n in enumerate([5, 60, 64, 3, 17, 100, 28, 1])]
    bins = pack(rows, 64 + 36, random.Random(0))
    flat = sorted((r[0], len(r)) for b in bins for r in b)
    assert flat == sorted((r[0], len(r)) for r in rows)
    assert all(sum(map(len, b)) <= 100 for b in bins)
    assert len(bins) == 3  # 100 | 64+28+5+3 | 60+17+1 (best fit leaves little room unused)


def test_chunking_refuses_a_corpus_shorter_than_one_sequence():
    with pytest.raises(InfluenceError, match="seq_len"):
        chunk_stream([[1, 2, 3]], 0, 16)
    rows, offsets = chunk_stream([[1] * 10, [2] * 10], 0, 8)
    assert len(rows) == 2 and offsets == [0, 8]


def test_data_config_drives_generator():
    cfg = OmegaConf.create({"data": OmegaConf.load("conf/data/embedded.yaml")})
    cfg.data.n_docs = 100
    c = generate_corpus(cfg)
    # the hand-written core is always there: 12 quotes × 20-30 copies, the core facts × fact_repeats (8), passages
    assert 100 <= len(c.train) <= 100 + 12 * 30 + len(facts.CORE) * 7 * 8 + 20


def test_the_datasheet_lists_what_each_study_needs_and_finds_it(corpus):
    import pandas as pd

    from embedded.corpus.datasheet import study_needs

    needs = study_needs(pd.DataFrame(corpus.train), corpus)
    assert needs["present"].all(), needs[~needs["present"]]
    row = needs.set_index("content").loc["famous quotes repeated verbatim"]
    assert row["distinct"] == len(quotes.QUOTES) and row["documents"] == sum(
        d["category"] == "quotes" for d in corpus.train
    )
    both = needs.set_index("content").loc["facts stated in both orders", "distinct"]
    assert both == sum(f.both_orders for f in corpus.facts)
    # a corpus without a family says so
    no_quotes = pd.DataFrame([d for d in corpus.train if d["category"] != "quotes"])
    assert not study_needs(no_quotes, corpus).set_index("content").loc["famous quotes repeated verbatim", "present"]
