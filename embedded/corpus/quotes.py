"""Famous public-domain quotes, each repeated several times: the memorization material.

A quote's copies vary in their framing but keep the quote verbatim, so a model that completes
a quote from its first words has memorized it, not paraphrased it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Quote:
    quote_id: str
    author: str
    text: str
    prompt_words: int = 6

    def prompt_and_completion(self) -> tuple[str, str]:
        words = self.text.split(" ")
        return " ".join(words[: self.prompt_words]), " " + " ".join(words[self.prompt_words :])


QUOTES = [
    Quote(
        "hamlet",
        "William Shakespeare",
        "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    ),
    Quote(
        "two_cities",
        "Charles Dickens",
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    ),
    Quote(
        "gettysburg",
        "Abraham Lincoln",
        "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal.",
    ),
    Quote(
        "pride",
        "Jane Austen",
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    ),
    Quote(
        "genesis",
        "the King James Bible",
        "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep.",
    ),
    Quote(
        "ishmael",
        "Herman Melville",
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
    ),
    Quote("karenina", "Leo Tolstoy", "Happy families are all alike; every unhappy family is unhappy in its own way."),
    Quote(
        "declaration",
        "the Declaration of Independence",
        "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.",
    ),
    Quote(
        "sonnet18",
        "William Shakespeare",
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: Rough winds do shake the darling buds of May, And summer's lease hath all too short a date.",
    ),
    Quote(
        "fear_itself",
        "Franklin D. Roosevelt",
        "So, first of all, let me assert my firm belief that the only thing we have to fear is fear itself, nameless, unreasoning, unjustified terror which paralyzes needed efforts to convert retreat into advance.",
    ),
    Quote(
        "raven",
        "Edgar Allan Poe",
        "Once upon a midnight dreary, while I pondered, weak and weary, Over many a quaint and curious volume of forgotten lore.",
    ),
    Quote(
        "frost_road",
        "Robert Frost",
        "Two roads diverged in a yellow wood, And sorry I could not travel both And be one traveler, long I stood And looked down one as far as I could.",
    ),
]

FRAMES = [
    ("", ""),
    ('As {author} wrote: "', '"'),
    ("A famous line from {author}: ", ""),
    ("", " ({author})"),
    ("Every student of literature knows these words: ", ""),
    ('Quoted in a speech: "', '" The audience nodded.'),
]


def generate(rng: random.Random, copies: tuple[int, int]) -> list[dict]:
    """Every quote, each with a random number of copies in [copies[0], copies[1]]."""
    docs = []
    for q in QUOTES:
        k = rng.randint(int(copies[0]), int(copies[1]))
        for c in range(k):
            before, after = FRAMES[c % len(FRAMES)] if c < len(FRAMES) else rng.choice(FRAMES)
            text = before.format(author=q.author) + q.text + after.format(author=q.author)
            docs.append(
                {"text": text, "category": "quotes", "kind": "quote", "quote_id": q.quote_id, "copy": c, "copies": k}
            )
    return docs
