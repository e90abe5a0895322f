"""The embedded corpus: a seeded mixture of content families, each document tagged with its
category and generator metadata, plus a held-out validation split and held-out fictional facts.

Sizes scale with `n_docs`; the hand-written core (quotes, the facts the queries ask about,
public-domain passages) is always present, so the tiny test world holds the same structures
as the default one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import ai, arithmetic, code, distractors, facts, languages, prose, quotes

GENERATOR_VERSION = 1
FAMILIES = ("prose", "facts", "math", "code", "multilingual", "ai", "distractors")
# Mean documents per generated fact (forward wordings, plus flipped ones for half of them).
_DOCS_PER_FACT = 5.0


@dataclass
class Corpus:
    train: list[dict]
    val: list[dict]
    facts: list[facts.Fact]  # every fact stated in the training documents
    heldout: list[facts.Fact]  # facts that never appear in any document


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(":".join([str(seed), *parts]))


def _family_docs(family: str, rng: random.Random, n: int, translatable: list[facts.Fact]) -> list[dict]:
    if family == "prose":
        return prose.generate(rng, n)
    if family == "math":
        return arithmetic.generate(rng, n)
    if family == "code":
        return code.generate(rng, n)
    if family == "multilingual":
        return languages.generate(rng, n, translatable)
    if family == "ai":
        return ai.generate(rng, n)
    if family == "distractors":
        docs = distractors.generate(rng, n)
        for d in docs:  # an unrelated sentence of context keeps repeated themes from being identical
            d["text"] = d["text"] + " " + prose.topic_paragraph(rng)["text"].split(". ")[0].rstrip(".") + "."
        return docs
    raise ValueError(f"unknown corpus family {family!r}: choose from {', '.join(FAMILIES)}")


def counts(n_docs: int, mix: dict) -> dict[str, int]:
    """Documents per family from the mixture weights (normalised)."""
    unknown = set(mix) - set(FAMILIES)
    if unknown:
        raise ValueError(f"data.mix has unknown families {sorted(unknown)}: use {', '.join(FAMILIES)}")
    total = sum(float(w) for w in mix.values())
    return {f: int(round(n_docs * float(mix.get(f, 0.0)) / total)) for f in FAMILIES}


def generate(
    seed: int,
    n_docs: int,
    mix: dict,
    quote_copies=(6, 12),
    val_fraction: float = 0.02,
    n_heldout: int = 24,
    translated_fraction: float = 0.3,
    fact_repeats: int = 1,
) -> Corpus:
    """Build the whole corpus deterministically from `seed`.

    The facts family keeps its `mix` share of documents; `fact_repeats` trades the number of facts for exposures:
    each fact's statements (every rewording, flipped ones too when it is stated both ways) are written
    `fact_repeats` times, each time in fresh frames, so there are about 1/fact_repeats as many facts."""
    if int(fact_repeats) < 1:
        raise ValueError(f"data.fact_repeats={fact_repeats}: give an integer >= 1")
    per_family = counts(n_docs, mix)
    taken: set[str] = {w for f in facts.CORE + facts.HELDOUT_CORE for w in (f.subject, f.object)}
    heldout = facts.HELDOUT_CORE + facts.generate_facts(_rng(seed, "heldout"), n_heldout, "heldout_", taken)
    n_facts = max(0, int(per_family["facts"] / (_DOCS_PER_FACT * int(fact_repeats))) - len(facts.CORE))
    generated = facts.generate_facts(_rng(seed, "facts"), n_facts, "fact_", taken)
    all_facts = facts.CORE + generated
    # Only generated capital/president facts get translations; the core facts stay English-only.
    tr_rng = _rng(seed, "translatable")
    translatable = [
        f for f in generated if f.relation in languages.FACT_TEMPLATES and tr_rng.random() < translated_fraction
    ]

    rng = _rng(seed, "facts", "docs")
    train = [
        d | {"repeat": r} for f in all_facts for r in range(int(fact_repeats)) for d in facts.fact_documents(f, rng)
    ]
    train += quotes.generate(_rng(seed, "quotes"), tuple(quote_copies))
    train += prose.public_domain_documents()
    for fam in FAMILIES:
        if fam != "facts":
            train += _family_docs(fam, _rng(seed, fam), per_family[fam], translatable)
    _rng(seed, "order").shuffle(train)

    # Validation: fresh draws from the generative families (facts and quotes are memorisation, not held out).
    n_val = int(round(val_fraction * n_docs))
    val_mix = {f: w for f, w in mix.items() if f != "facts"}
    val = []
    for fam, k in counts(n_val, val_mix).items():
        val += _family_docs(fam, _rng(seed, fam, "val"), k, translatable) if k else []
    _rng(seed, "val-order").shuffle(val)
    for i, d in enumerate(train):
        d["id"] = i
    for i, d in enumerate(val):
        d["id"] = i
    return Corpus(train=train, val=val, facts=all_facts, heldout=heldout)
