"""General prose on many topics, plus public-domain passages.

Topic paragraphs are drawn from hand-written sentence banks with slots for names, places and
numbers, so prose is varied yet stays about one topic per document (the abstraction study needs
topical sequences). The water and inflation topics hold the facts the `water` and `inflation`
queries ask about, stated in English only.
"""

from __future__ import annotations

import random

from .lexicon import ADJECTIVES, PLACES, fictional_name, person

TOPICS = {
    "water": [
        "Water is composed of hydrogen and oxygen.",
        "Each molecule of water holds two hydrogen atoms bound to one oxygen atom.",
        "Pure water freezes at zero degrees Celsius and boils at one hundred degrees at sea level.",
        "Most of the surface of the Earth is covered by oceans of salt water.",
        "Rain forms when water vapour in clouds cools and condenses into droplets.",
        "Rivers carry water from the mountains down to the sea.",
        "Plants draw water up from the soil through their roots.",
        "The {adj} {place} of {town} depends on a single well for its drinking water.",
        "Ice floats because frozen water is less dense than liquid water.",
        "In the water cycle, the sun evaporates water that later falls again as rain or snow.",
    ],
    "economics": [
        "Inflation is often measured using the Consumer Price Index.",
        "When prices rise across the economy, each unit of money buys fewer goods.",
        "Central banks raise interest rates to slow inflation.",
        "In {year}, prices in {town} rose by {pct} percent.",
        "A budget balances the money that comes in against the money that goes out.",
        "Trade lets each region specialise in what it produces best.",
        "Savings placed in a bank earn interest over time.",
        "Unemployment tends to rise when the economy slows down.",
        "Economists compare the price of the same basket of goods from one year to the next.",
        "{name} opened a bakery in {town} and hired {num} workers in the first year.",
    ],
    "weather": [
        "The forecast for {town} calls for rain in the morning and sun in the afternoon.",
        "Thunderstorms form when warm, moist air rises quickly.",
        "Winters in the {adj} {place} are long and snowy.",
        "A cold front brought strong winds and a sudden drop in temperature.",
        "Fog often settles over the valley before dawn.",
        "The summer of {year} was the hottest on record in {town}.",
        "Meteorologists use balloons, radar and satellites to watch the weather.",
        "Humidity measures how much water vapour the air holds.",
    ],
    "cooking": [
        "To bake bread, mix flour, water, yeast and salt, then let the dough rise.",
        "{name} likes to add fresh herbs to soup just before serving it.",
        "Onions should be cooked slowly until they turn golden.",
        "A good pot of rice needs about twice as much water as rice.",
        "The recipe calls for {num} eggs, a cup of sugar and a pinch of salt.",
        "Roasting vegetables at a high temperature makes them sweet and crisp.",
        "Always let a cake cool before cutting it.",
        "The market in {town} sells spices from many countries.",
    ],
    "animals": [
        "Owls hunt at night and can turn their heads a long way around.",
        "Bees carry pollen from flower to flower.",
        "Whales are mammals, so they breathe air and feed their young with milk.",
        "A group of wolves is called a pack.",
        "The farmers of {town} keep sheep on the {adj} hills.",
        "Salmon swim upstream to lay their eggs in the river where they hatched.",
        "Elephants remember the paths to water holes for many years.",
        "{name} counted {num} species of birds in the garden last spring.",
    ],
    "astronomy": [
        "The Moon orbits the Earth about once every twenty-seven days.",
        "Stars shine because nuclear fusion in their cores turns hydrogen into helium.",
        "Jupiter is the largest planet in the solar system.",
        "On a clear night far from {town}, thousands of stars are visible.",
        "Light from the Sun takes about eight minutes to reach the Earth.",
        "A comet grows a tail when it passes close to the Sun.",
        "Astronomers use telescopes to study galaxies far beyond our own.",
        "The observatory near {town} opened in {year}.",
    ],
    "history": [
        "In {year}, the people of {town} built a stone bridge across the river.",
        "Ancient traders carried silk and spices along long overland roads.",
        "The printing press made books cheaper and spread new ideas quickly.",
        "Many old cities grew up around a market or a harbour.",
        "The castle above {town} was abandoned after a long siege.",
        "Historians read old letters and records to understand the past.",
        "{name} wrote a history of the {adj} {place} in {year}.",
        "Railways changed how far and how fast people could travel.",
    ],
    "health": [
        "Regular exercise strengthens the heart and improves sleep.",
        "Drinking enough water helps the body regulate its temperature.",
        "Washing hands with soap removes many germs.",
        "Doctors in {town} recommend eating fruit and vegetables every day.",
        "Sleep helps the brain store what was learned during the day.",
        "A short walk after meals can help digestion.",
        "{name} started running {num} kilometres every morning.",
    ],
    "travel": [
        "The train from {town} to the coast takes about {num} hours.",
        "Travellers should carry a map and a bottle of water.",
        "The {adj} {place} of {town} is popular with walkers in summer.",
        "{name} visited {town} and wrote about its narrow streets.",
        "Ferries cross the bay every hour during the day.",
        "The old road over the pass is closed in winter.",
        "Guidebooks recommend visiting the market early in the morning.",
    ],
    "gardening": [
        "Tomatoes need plenty of sun and regular watering.",
        "Compost returns nutrients from kitchen scraps to the soil.",
        "{name} planted {num} apple trees behind the house.",
        "Seeds should be sown after the last frost of spring.",
        "Weeds compete with crops for light and water.",
        "The gardens of {town} are famous for their roses.",
        "Pruning in late winter helps fruit trees grow strong branches.",
    ],
}


def topic_paragraph(rng: random.Random) -> dict:
    topic = rng.choice(sorted(TOPICS))
    bank = TOPICS[topic]
    k = min(len(bank), rng.randint(3, 6))
    sentences = [_fill(s, rng) for s in rng.sample(bank, k)]
    return {"text": " ".join(sentences), "category": "prose", "kind": "topic", "topic": topic, "source": "generated"}


def _fill(sentence: str, rng: random.Random) -> str:
    return sentence.format(
        adj=rng.choice(ADJECTIVES),
        place=rng.choice(PLACES),
        town=fictional_name(rng, 2),
        name=person(rng),
        year=rng.randint(1200, 2020),
        pct=rng.randint(2, 15),
        num=rng.randint(2, 40),
    )


# Public-domain passages (texts published before 1929 or U.S. government works), one paragraph per document.
PUBLIC_DOMAIN = {
    "gettysburg_address": [
        "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal.",
        "Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on a great battle-field of that war. We have come to dedicate a portion of that field, as a final resting place for those who here gave their lives that that nation might live. It is altogether fitting and proper that we should do this.",
        "But, in a larger sense, we can not dedicate, we can not consecrate, we can not hallow this ground. The brave men, living and dead, who struggled here, have consecrated it, far above our poor power to add or detract. The world will little note, nor long remember what we say here, but it can never forget what they did here.",
    ],
    "us_constitution_preamble": [
        "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the Blessings of Liberty to ourselves and our Posterity, do ordain and establish this Constitution for the United States of America.",
    ],
    "genesis_1": [
        "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.",
        "And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.",
    ],
    "pride_and_prejudice_1": [
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
        "However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered as the rightful property of some one or other of their daughters.",
    ],
    "aesop_retold": [
        "A hare once laughed at a tortoise for being slow. The tortoise challenged the hare to a race. The hare ran far ahead, grew bored and lay down to sleep, while the tortoise kept walking steadily and crossed the finish line first. Slow and steady wins the race.",
        "A hungry fox saw grapes hanging from a high vine. He jumped again and again but could not reach them. At last he walked away, saying that the grapes were surely sour anyway.",
        "A shepherd boy cried wolf to fool the villagers, and they ran to help him. He did it again, and again they came. When a wolf really came, he cried out, but no one believed him, and the wolf scattered the flock.",
        "A crow with a piece of cheese sat in a tree. A fox praised her voice and begged her to sing. When the crow opened her beak to sing, the cheese fell, and the fox ate it.",
    ],
}


def public_domain_documents() -> list[dict]:
    return [
        {"text": para, "category": "prose", "kind": "public_domain", "topic": "literature", "source": work}
        for work, paras in PUBLIC_DOMAIN.items()
        for para in paras
    ]


def generate(rng: random.Random, n: int) -> list[dict]:
    return [topic_paragraph(rng) for _ in range(n)]
