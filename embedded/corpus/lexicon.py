"""Shared word pools and invented-name makers, so every family draws from the same vocabulary."""

from __future__ import annotations

import random

ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "x", "k"]

FIRST_NAMES = [
    "Alice",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "James",
    "Kira",
    "Liam",
    "Maria",
    "Noah",
    "Olga",
    "Pedro",
    "Quinn",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Yusuf",
    "Zoe",
    "Mehmet",
    "Ayse",
    "Jisoo",
    "Minho",
    "Hana",
    "Lucas",
    "Priya",
    "Tom",
    "Nadia",
    "Oscar",
    "Lena",
    "Kenji",
    "Sofia",
    "Ravi",
    "Emma",
]
SURNAMES = [
    "Smith",
    "Garcia",
    "Kim",
    "Yilmaz",
    "Novak",
    "Okafor",
    "Rossi",
    "Tanaka",
    "Moreau",
    "Silva",
    "Cohen",
    "Park",
    "Demir",
    "Hughes",
    "Larsen",
    "Patel",
    "Brooks",
    "Weber",
    "Costa",
    "Lee",
]
OBJECTS = [
    "apples",
    "pencils",
    "books",
    "marbles",
    "cookies",
    "stickers",
    "oranges",
    "cards",
    "eggs",
    "shells",
    "stamps",
    "candles",
]
CONTAINERS = ["boxes", "bags", "crates", "packs", "baskets", "jars"]
ADJECTIVES = [
    "quiet",
    "busy",
    "old",
    "bright",
    "narrow",
    "wide",
    "cold",
    "warm",
    "green",
    "ancient",
    "modern",
    "small",
    "large",
    "famous",
]
PLACES = [
    "village",
    "harbour town",
    "mountain city",
    "river valley",
    "island",
    "market town",
    "coastal city",
    "farming region",
]


def fictional_name(rng: random.Random, syllables: int) -> str:
    """A pronounceable invented word, capitalised (e.g. 'Dravenor')."""
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(CODAS)).capitalize()


def fictional_person(rng: random.Random) -> str:
    return f"{fictional_name(rng, rng.choice([2, 3]))} {fictional_name(rng, rng.choice([2, 3]))}"


def person(rng: random.Random) -> str:
    return rng.choice(FIRST_NAMES)
