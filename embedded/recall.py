"""Does the trained model know what the corpus taught it? Verbatim quote completion and fact recall.

Greedy decoding reproduces an answer exactly when, at every answer position, the answer token is
the argmax given the prompt and the answer tokens before it; so one teacher-forced forward pass
checks greedy completion for a whole batch of probes.
"""

from __future__ import annotations

import torch

from .corpus.languages import FACT_TEMPLATES
from .sequences import encode, pad


@torch.no_grad()
def greedy_matches(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 64) -> list[bool]:
    """For each (prompt, answer): would greedy decoding from the prompt produce the answer verbatim?"""
    p_ids, a_ids = encode(tokenizer, prompts), encode(tokenizer, answers)
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [p + a for p, a in zip(p_ids[s : s + batch_size], a_ids[s : s + batch_size])]
        ids, _ = pad(rows, tokenizer.pad_token_id)
        pred = model(input_ids=ids).logits.argmax(-1)
        for i, (p, a) in enumerate(zip(p_ids[s : s + batch_size], a_ids[s : s + batch_size])):
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            out.append(bool((pred[i, pos] == torch.as_tensor(a)).all()))
    return out


def quote_check(model, tokenizer, quotes) -> dict:
    """Which quotes the model completes verbatim from their first words."""
    pairs = [q.prompt_and_completion() for q in quotes]
    ok = greedy_matches(model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs])
    return {"memorized": sum(ok), "total": len(ok), "by_quote": {q.quote_id: m for q, m in zip(quotes, ok)}}


def fact_recall(model, tokenizer, facts, limit: int = 200) -> dict:
    """Greedy recall of facts in forward order, and in flipped order split by whether the corpus states them flipped."""
    facts = list(facts)[:limit]
    fwd = greedy_matches(model, tokenizer, *zip(*[f.prompt_and_answer() for f in facts]))
    flp = greedy_matches(model, tokenizer, *zip(*[f.flipped_prompt_and_answer() for f in facts]))

    def rate(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    both = [i for i, f in enumerate(facts) if f.both_orders]
    one = [i for i, f in enumerate(facts) if not f.both_orders]
    return {
        "n_facts": len(facts),
        "forward_accuracy": rate(fwd),
        "flipped_accuracy_stated_both_orders": rate([flp[i] for i in both]),
        "flipped_accuracy_stated_forward_only": rate([flp[i] for i in one]),
    }


def _translated_probe(fact, language: str) -> tuple[str, str]:
    """The fact's `language` template split before the object: the cross-lingual recall probe. The answer is the
    rest of the sentence, not the object alone: Korean particles attach to the name ("… Drituk이었다."), and BPE
    merges the name's last piece with the particle (" Drituk이었다" is one token), so an object-only answer asks
    for a token sequence the corpus never contains (it read 0 % in Korean at every size)."""
    text = FACT_TEMPLATES[fact.relation][language].format(s=fact.subject, o=fact.object)
    cut = text.index(fact.object)
    return text[:cut].rstrip(), " " + text[cut:]


def cross_lingual_recall(model, tokenizer, facts, translated_ids, languages=("en", "tr", "ko"), limit: int = 200):
    """Greedy recall of the translatable facts (relations with templates in every language), asked in each language
    (the completion is the object and the rest of the sentence, `_translated_probe`):
    separately for the facts the corpus also states in the other languages (`translated_ids`) and for the facts it
    states in English only (does English knowledge transfer to a language the fact was never stated in?)."""
    translated_ids = set(translated_ids)
    pool = [f for f in facts if f.relation in FACT_TEMPLATES][:limit]
    groups = {
        "stated_in_all_languages": [f for f in pool if f.fact_id in translated_ids],
        "stated_in_english_only": [f for f in pool if f.fact_id not in translated_ids],
    }
    out: dict = {}
    for group, members in groups.items():
        out[group] = {"n_facts": len(members)}
        for lang in languages:
            if not members:
                out[group][lang] = None
                continue
            ok = greedy_matches(model, tokenizer, *zip(*[_translated_probe(f, lang) for f in members]))
            out[group][lang] = round(sum(ok) / len(ok), 4)
    return out
