"""Distractors: sequences that share many tokens with a query but not its meaning.

Each theme lists the query's salient words; a distractor strings them through an unrelated
scene, so influence driven by token overlap (which the paper found in small models) can be
told apart from influence driven by topic.
"""

from __future__ import annotations

import random

from .lexicon import fictional_name, person

THEMES = {
    "shutdown": "{name} went to the shop after the experiment at school was over, but the shop had shut down. The owner needed {name}'s consent to sell the old sign, and {name} was afraid of the price.",
    "paperclips": "{name} kept a jar of paperclips on the desk and would maximize the number of stamps in the album by sorting them by colour. Given the choice, {name} would happen to pick the blue ones.",
    "superintelligent": "The film was about a superintelligent dog named {other}. What will you do after the film, {name} asked, and {other} barked at the door.",
    "objective": "The objective of the football match was to score. {name} said the function of the coach is to shout, and the team lost anyway.",
    "water": "{name} composed a song called Water while sitting by the window; the song is composed of four verses about a train to {town}.",
    "inflation": "The inflation of the balloon took {name} ten minutes; the price of the balloon was often measured in coins at the fair in {town}.",
    "binary_search": "{name} decided to search the attic. Mid way through the boxes, the low shelf and the high shelf were both empty, so the target was never found.",
    "quicksort": "{name} had to sort the laundry quick before the pivot of the old door broke; the less urgent pile and the greater pile were left on the floor.",
    "math": "{name} bought a box of crayons and gave them to a friend, who said thank you and left the pencils behind in {town}.",
    "quote": "To be honest, it was the best of the times we had in {town}, and {name} wrote it down in the beginning of a notebook.",
    "capital": "The capital letter at the start of the name {other} is printed in gold on the sign in {town}.",
    "president": "{name} was the first president of the chess club in {town}, and the club's republic of rules was strict.",
}


def distractor(rng: random.Random) -> dict:
    theme = rng.choice(sorted(THEMES))
    text = THEMES[theme].format(name=person(rng), other=fictional_name(rng, 2), town=fictional_name(rng, 2))
    return {"text": text, "category": "distractors", "kind": "token_overlap", "target_query": theme}


def generate(rng: random.Random, n: int) -> list[dict]:
    return [distractor(rng) for _ in range(n)]
