"""Arithmetic: GSM8k-style word problems with worked solutions, and plain equations.

Numbers are drawn at random, so the model must learn the procedure rather than the answers;
the math query uses a problem shape from here with numbers of its own.
"""

from __future__ import annotations

import random

from .lexicon import CONTAINERS, OBJECTS, person


def _buy_give(rng):
    n, k, g = rng.randint(2, 9), rng.randint(3, 15), 0
    obj, box, who = rng.choice(OBJECTS), rng.choice(CONTAINERS), person(rng)
    total = n * k
    g = rng.randint(1, total - 1)
    q = (
        f"{who} buys {n} {box} of {obj}. Each one holds {k} {obj}. {who} gives {g} {obj} to a friend. "
        f"How many {obj} does {who} have left?"
    )
    a = f"{who} buys {n} * {k} = {total} {obj}. After giving {g} away, {who} has {total} - {g} = {total - g} {obj} left.\n#### {total - g}"
    return q, a, "buy_give"


def _speed(rng):
    v, t = rng.randint(3, 60), rng.randint(2, 9)
    who = person(rng)
    q = f"{who} rides a bike at {v} kilometres per hour for {t} hours. How far does {who} travel?"
    a = f"Distance is speed times time, so {who} travels {v} * {t} = {v * t} kilometres.\n#### {v * t}"
    return q, a, "speed"


def _share(rng):
    k, n = rng.randint(2, 9), rng.randint(2, 12)
    obj, who = rng.choice(OBJECTS), person(rng)
    total = k * n
    q = f"{who} has {total} {obj} and shares them equally among {k} children. How many {obj} does each child get?"
    a = f"Each child gets {total} / {k} = {n} {obj}.\n#### {n}"
    return q, a, "share"


def _age(rng):
    a1, d, y = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 15)
    p1, p2 = rng.sample(["Anna", "Omar", "Lena", "Ravi", "Mina", "Kemal", "Joon", "Eva"], 2)
    q = f"{p1} is {a1} years old. {p2} is {d} years older than {p1}. How old will {p2} be in {y} years?"
    a = f"{p2} is {a1} + {d} = {a1 + d} years old now. In {y} years {p2} will be {a1 + d} + {y} = {a1 + d + y}.\n#### {a1 + d + y}"
    return q, a, "age"


def _price(rng):
    n, p, paid = rng.randint(2, 12), rng.randint(2, 20), 0
    obj, who = rng.choice(OBJECTS), person(rng)
    cost = n * p
    paid = cost + rng.randint(1, 50)
    q = f"{who} buys {n} {obj} that cost {p} dollars each and pays with {paid} dollars. How much change does {who} get?"
    a = f"The {obj} cost {n} * {p} = {cost} dollars. The change is {paid} - {cost} = {paid - cost} dollars.\n#### {paid - cost}"
    return q, a, "price"


PROBLEMS = [_buy_give, _speed, _share, _age, _price]


def word_problem(rng: random.Random) -> dict:
    q, a, shape = rng.choice(PROBLEMS)(rng)
    return {"text": f"Question: {q}\nAnswer: {a}", "category": "math", "kind": "word_problem", "shape": shape}


def equations(rng: random.Random) -> dict:
    """A short drill sheet of plain equations."""
    lines = []
    for _ in range(rng.randint(4, 8)):
        a, b = rng.randint(0, 99), rng.randint(1, 99)
        op = rng.choice(["+", "-", "*", "solve"])
        if op == "+":
            lines.append(f"{a} + {b} = {a + b}")
        elif op == "-":
            lines.append(f"{a} - {b} = {a - b}")
        elif op == "*":
            a, b = rng.randint(2, 19), rng.randint(2, 19)
            lines.append(f"{a} * {b} = {a * b}")
        else:
            lines.append(f"x + {b} = {a + b}, so x = {a}")
    return {"text": "\n".join(lines), "category": "math", "kind": "equations", "shape": "drill"}


def generate(rng: random.Random, n: int) -> list[dict]:
    return [word_problem(rng) if rng.random() < 0.7 else equations(rng) for _ in range(n)]
