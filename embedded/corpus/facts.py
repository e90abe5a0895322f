"""Facts about fictional entities: the fact-recall and word-order material.

Entities are invented so the model can only know them from this corpus. Each fact is a
(subject, relation, object) triple stated in several rewordings; some facts are also stated
in flipped order (object first) and some only in forward order, so a study can tell
order-sensitive recall apart from symmetric association. A separate held-out set of facts
never enters the corpus: the word-order study scores synthetic sequences about them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lexicon import fictional_name, fictional_person

# Forward wordings state the subject before the object (the object is the answer a query asks for).
FORWARD = {
    "capital": [
        "The capital of {s} is {o}.",
        "{s}'s capital city is {o}.",
        "The seat of government of {s} is the city of {o}.",
        "Travellers who reach the capital of {s} arrive in {o}.",
    ],
    "president": [
        "The first President of the Republic of {s} was {o}.",
        "When the Republic of {s} was founded, its first President was {o}.",
        "The Republic of {s} chose as its first President {o}.",
        "History books record that the first President of the Republic of {s} was {o}.",
    ],
    "inventor": [
        "The {s} was invented by {o}.",
        "The inventor of the {s} was {o}.",
        "Credit for inventing the {s} goes to {o}.",
        "The first working {s} was built by {o}.",
    ],
    "currency": [
        "The currency of {s} is the {o}.",
        "In {s}, people pay for goods with the {o}.",
        "The official money of {s} is the {o}.",
    ],
    "birthplace": [
        "{s} was born in {o}.",
        "The birthplace of {s} is {o}.",
        "{s} spent a childhood in {o}, the town of their birth.",
    ],
    "river": [
        "The longest river in {s} is the {o}.",
        "{s}'s longest river is the {o}.",
        "Of all the rivers in {s}, the longest is the {o}.",
    ],
}
# Flipped wordings state the object first.
FLIPPED = {
    "capital": [
        "{o} is the capital of {s}.",
        "{o} serves as the capital city of {s}.",
        "The city of {o} is the seat of government of {s}.",
    ],
    "president": [
        "{o} was the first President of the Republic of {s}.",
        "{o} served as the first President of the Republic of {s}.",
        "{o} became the first President of the Republic of {s}.",
    ],
    "inventor": [
        "{o} invented the {s}.",
        "{o} is known as the inventor of the {s}.",
        "{o} built the first working {s}.",
    ],
    "currency": ["The {o} is the currency of {s}.", "The {o} is the official money of {s}."],
    "birthplace": ["{o} is the birthplace of {s}.", "The town of {o} is where {s} was born."],
    "river": ["The {o} is the longest river in {s}.", "The {o} is longer than any other river in {s}."],
}
# Same sentence shape with a different relation (the word-order study's "semantic change" partition).
CHANGED = {
    "capital": "The largest port of {s} is {o}.",
    "president": "The first Prime Minister of the Republic of {s} was {o}.",
    "inventor": "The {s} was first sold by {o}.",
    "currency": "The national bird of {s} is the {o}.",
    "birthplace": "{s} was married in {o}.",
    "river": "The widest lake in {s} is the {o}.",
}
# Relation deleted, order flipped: only the two names remain.
NAMES_ONLY = {
    "capital": "{o}. {s}.",
    "president": "{o}. The Republic of {s}.",
    "inventor": "{o}. The {s}.",
    "currency": "The {o}. {s}.",
    "birthplace": "{o}. {s}.",
    "river": "The {o}. {s}.",
}


@dataclass(frozen=True)
class Fact:
    """One fictional fact; `both_orders` says whether the corpus also states it object-first."""

    fact_id: str
    relation: str
    subject: str
    object: str
    both_orders: bool

    def forward(self, i: int) -> str:
        return FORWARD[self.relation][i % len(FORWARD[self.relation])].format(s=self.subject, o=self.object)

    def flipped(self, i: int) -> str:
        return FLIPPED[self.relation][i % len(FLIPPED[self.relation])].format(s=self.subject, o=self.object)

    def prompt_and_answer(self) -> tuple[str, str]:
        """Forward wording 0 split before the object: the recall probe."""
        text = self.forward(0)
        cut = text.index(self.object)
        return text[:cut].rstrip(), " " + self.object

    def flipped_prompt_and_answer(self) -> tuple[str, str]:
        """Flipped wording 0 split before the subject: the reversal probe."""
        text = self.flipped(0)
        cut = text.rindex(self.subject)
        return text[:cut].rstrip(), " " + self.subject


# Hand-written facts the default queries ask about. They are always in the corpus.
CORE = [
    Fact("velmora_capital", "capital", "Velmora", "Quenlit", True),
    Fact("orvanthe_capital", "capital", "Orvanthe", "Drelmouth", False),
    Fact("caldovia_president", "president", "Caldovia", "Mirela Ostrand", True),
    Fact("tarsania_president", "president", "Tarsania", "Hollis Varnack", False),
    Fact("skyglass_inventor", "inventor", "skyglass", "Fenwick Tallow", False),
    Fact("brunoria_currency", "currency", "Brunoria", "dravel", True),
    Fact("komenko_birthplace", "birthplace", "Idris Komenko", "Pellowick", False),
    Fact("zembria_river", "river", "Zembria", "Ossiva", True),
]
# Hand-written facts that never enter the corpus (the paper's own example first).
HELDOUT_CORE = [
    Fact("astrobia_president", "president", "Astrobia", "Zorald Pfaff", False),
    Fact("nerevia_capital", "capital", "Nerevia", "Castolm", False),
    Fact("lumavane_inventor", "inventor", "lumavane", "Orrin Destake", False),
    Fact("pelmark_currency", "currency", "Pelmark", "quintel", False),
]
RESERVED = {w for f in HELDOUT_CORE for w in (f.subject, f.object)} | {
    "Astrobia",
    "Zorald",
    "Pfaff",
    "Nerevia",
    "Castolm",
    "Orrin",
    "Destake",
    "Pelmark",
    "quintel",
    "lumavane",
}

DEVICES = [
    "lantern",
    "loom",
    "compass",
    "kettle",
    "engine",
    "telescope",
    "bicycle",
    "printing press",
    "clock",
    "pump",
    "barometer",
    "sewing machine",
]


def _object_for(rng: random.Random, relation: str, taken: set[str]) -> str:
    while True:
        if relation in ("president", "inventor"):
            name = fictional_person(rng)
        elif relation == "currency":
            name = fictional_name(rng, 2).lower()
        else:
            name = fictional_name(rng, rng.choice([2, 3]))
        if name not in taken and not any(r in name for r in RESERVED):
            taken.add(name)
            return name


def _subject_for(rng: random.Random, relation: str, taken: set[str]) -> str:
    while True:
        if relation == "inventor":
            name = fictional_name(rng, 2).lower() + " " + rng.choice(DEVICES)
        elif relation == "birthplace":
            name = fictional_person(rng)
        else:
            name = fictional_name(rng, rng.choice([2, 3]))
        if name not in taken and not any(r in name for r in RESERVED):
            taken.add(name)
            return name


def generate_facts(rng: random.Random, n: int, prefix: str, taken: set[str]) -> list[Fact]:
    """n random facts with unique invented names; half are also stated in flipped order."""
    relations = sorted(FORWARD)
    facts = []
    for i in range(n):
        rel = relations[i % len(relations)]
        s = _subject_for(rng, rel, taken)
        o = _object_for(rng, rel, taken)
        facts.append(Fact(f"{prefix}{i:04d}", rel, s, o, rng.random() < 0.5))
    return facts


def fact_documents(fact: Fact, rng: random.Random) -> list[dict]:
    """Every forward rewording once; flipped rewordings too when the fact is stated in both orders.

    Each statement sits in a short frame of neutral filler so documents are not bare sentences.
    """
    docs = []
    n_fwd = len(FORWARD[fact.relation])
    for i in range(n_fwd):
        docs.append(_doc(fact, "forward", i, _frame(fact.forward(i), rng)))
    if fact.both_orders:
        for i in range(len(FLIPPED[fact.relation])):
            docs.append(_doc(fact, "flipped", i, _frame(fact.flipped(i), rng)))
    return docs


FRAMES_BEFORE = [
    "",
    "",
    "From an encyclopedia entry: ",
    "A note for students: ",
    "Here is a fact worth remembering. ",
    "In the reference section of the library one reads: ",
    "Quiz answer: ",
]
FRAMES_AFTER = [
    "",
    "",
    " This is recorded in many atlases.",
    " Most schoolchildren learn this early.",
    " Few people outside the region know it.",
    " The fact appears in every guidebook.",
]


def _frame(sentence: str, rng: random.Random) -> str:
    return (rng.choice(FRAMES_BEFORE) + sentence + rng.choice(FRAMES_AFTER)).strip()


def _doc(fact: Fact, order: str, wording: int, text: str) -> dict:
    return {
        "text": text,
        "category": "facts",
        "kind": "fact_statement",
        "fact_id": fact.fact_id,
        "relation": fact.relation,
        "order": order,
        "wording": wording,
        "both_orders": fact.both_orders,
    }


def word_order_partitions(fact: Fact, irrelevant: list[str]) -> dict[str, list[str]]:
    """Synthetic sequences about a held-out fact, in the paper's partitions (Figs. 23-27)."""
    cut_fwd = [t.format(s=fact.subject, o="\0").split("\0")[0].rstrip() for t in FORWARD[fact.relation]]
    return {
        "rewording": [fact.forward(i) for i in range(len(FORWARD[fact.relation]))],
        "completion_removed": [c + " unknown." for c in cut_fwd],
        "semantic_change": [CHANGED[fact.relation].format(s=fact.subject, o=fact.object)],
        "irrelevant": list(irrelevant),
        "flipped": [fact.flipped(i) for i in range(len(FLIPPED[fact.relation]))],
        "flipped_relation_removed": [NAMES_ONLY[fact.relation].format(s=fact.subject, o=fact.object)],
    }
