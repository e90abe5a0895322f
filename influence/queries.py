"""A query is a prompt and the completion whose log-probability we attribute (f = log p(completion | prompt))."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InfluenceError


@dataclass(frozen=True)
class Query:
    """One influence query. `tags` carry study selectors (study, language, type, translation_of, flipped_of)."""

    name: str
    prompt: str
    completion: str
    tags: dict = field(default_factory=dict, hash=False, compare=False)


def encode_queries(tokenizer, queries: list[Query], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenize prompt+completion pairs, right-padded, with a mask of the completion tokens.

    Prompt and completion are tokenized separately and concatenated, so the completion
    boundary is exact whatever the tokenizer does at the seam.
    """
    if not queries:
        raise InfluenceError("no queries given: pass at least one Query(name, prompt, completion)")
    rows, comp = [], []
    for q in queries:
        p_ids = tokenizer(q.prompt, add_special_tokens=False)["input_ids"] if q.prompt else []
        c_ids = tokenizer(q.completion, add_special_tokens=False)["input_ids"] if q.completion else []
        if not c_ids:
            raise InfluenceError(
                f"query {q.name!r} has an empty completion: give it the text whose probability to explain"
            )
        if not p_ids:
            raise InfluenceError(
                f"query {q.name!r} has an empty prompt: the first completion token needs a prompt token before it"
            )
        ids = list(p_ids) + list(c_ids)
        if max_length is not None and len(ids) > max_length:
            raise InfluenceError(
                f"query {q.name!r} is {len(ids)} tokens, longer than the model's context of {max_length}: shorten its prompt"
            )
        rows.append(ids)
        comp.append([0] * len(p_ids) + [1] * len(c_ids))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, c) in enumerate(zip(rows, comp)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
        completion_mask[i, : len(c)] = torch.tensor(c)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def context_length(model) -> int | None:
    """The model's maximum sequence length, from its Hugging Face config (None if it declares none)."""
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None
