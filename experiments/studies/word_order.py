"""Word order (Figs. 23–27): how much would synthetic sequences about a held-out fact influence its query?

The facts are held out of the corpus, so every synthetic sequence is scored as a HYPOTHETICAL addition to the
training set: tokenized exactly like a training row (text + EOS, cut to `data.seq_len`), its training gradient
(summed token cross-entropy) is scored against the EK-FAC-preconditioned query gradient,
I = −∇f ᵀ (G + λI)⁻¹ ∇L(z). The model is never trained on them. Partitions (rewordings, completion removed,
semantic change, irrelevant text, flipped order, flipped with the relation removed) come from
`corpus.facts.word_order_partitions`; Turkish and Korean statements of the capital and president facts, in both
orders, give the cross-lingual rows (other relations have no translated templates, hence no such rows).

Orientation: partitions are named from the fact's side (`rewording` = subject first, `flipped` = object first).
For a forward query (no `flipped_of` tag) the same-order sequences are the rewordings; for a `_flipped` query
they are the flipped wordings and its "flipped" sequences are the forward rewordings. `order_vs_query` in the
scores table says which (see `analysis.word_order.same_and_flipped`).

Beside the full-completion scores, `per_answer_token` splits each score over the query's answer tokens
(I = Σ_t I_t, `compute_scores(..., per_answer_token=True)`, from the same pass): `word_order_answer_tokens` (one row
per answer token) and `word_order_answer_token_shares` (each partition's share on the first answer token and on the
later ones). A multi-token name's later tokens are its spelling, taught by any sentence containing it in either
order; the first token is where the relation picks the name.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import pandas as pd

from analysis.answer_tokens import share_figure, token_rows
from analysis.figures import figure, per_query
from analysis.scorecard import Finding, key_check
from analysis.word_order import (
    answer_token_shares,
    answer_token_summary,
    partition_figures,
    partition_table,
    ratio_figure,
    ratio_table,
    word_order_summary,
)
from embedded.corpus.facts import Fact, word_order_partitions
from embedded.corpus.languages import FACT_TEMPLATES, FLIPPED_FACT_TEMPLATES
from embedded.prepare import prepare_data
from influence import InfluenceError
from influence.scoring import SCALE_CONVENTION

from ..pipeline.hypothetical import hypothetical_scores
from ..pipeline.stages import fit_stage, select_queries
from ..pipeline.sweep import scale_points
from .registry import Study, option

log = logging.getLogger(__name__)

#: the order each partition states the fact in (subject first = forward); irrelevant text has none
SEQUENCE_ORDER = {
    "rewording": "forward",
    "completion_removed": "forward",
    "semantic_change": "forward",
    "irrelevant": "none",
    "flipped": "flipped",
    "flipped_relation_removed": "flipped",
}
CROSS_LINGUAL = ("tr", "ko")


def word_order_queries(world, names, heldout: list[Fact]) -> list[tuple]:
    """(query, its held-out fact, "forward" | "flipped") for the named queries, or for every query tagged
    `study: [word_order]` with `heldout: true`; each must name a held-out fact and ask for its object (forward)
    or subject (flipped)."""
    if names:
        queries = select_queries(world, "word_order", list(names))
    else:
        queries = [q for q in world.queries if "word_order" in (q.tags.get("study") or []) and q.tags.get("heldout")]
        if not queries:
            raise InfluenceError(
                "word_order: no held-out word-order queries in this run (tags study: [word_order], heldout: true): "
                "add them to queries.names or name them in word_order.queries"
            )
    facts = {f.fact_id: f for f in heldout}
    out = []
    for q in queries:
        fid = q.tags.get("fact_id")
        if fid not in facts:
            what = "has no fact_id tag" if fid is None else f"has fact_id {fid!r}, which is not a held-out fact"
            raise InfluenceError(
                f"word_order: query {q.name!r} {what} (held-out facts: {', '.join(sorted(facts))}): "
                "name only queries about held-out facts in word_order.queries"
            )
        fact, order = facts[fid], "flipped" if q.tags.get("flipped_of") else "forward"
        answer = fact.subject if order == "flipped" else fact.object
        if q.completion.strip() != answer:
            raise InfluenceError(
                f"word_order: query {q.name!r} ({order}) should complete with {answer!r} of fact {fid!r}, "
                f"not {q.completion.strip()!r}: fix its fact_id or flipped_of tag"
            )
        out.append((q, fact, order))
    return out


def irrelevant_sentences(corpus_dir: str, n: int, seed: int, avoid: set[str]) -> list[str]:
    """`n` sentences of validation-split prose (never trained on), drawn with `seed`, none naming a held-out entity."""
    val = pd.read_parquet(f"{corpus_dir}/val.parquet")
    prose = val.loc[val["category"] == "prose", "text"].tolist() or val["text"].tolist()
    sentences = sorted(
        {
            s.strip().rstrip(".") + "."
            for doc in prose
            for s in doc.split(". ")
            if len(s.split()) >= 4 and not any(a in s for a in avoid)
        }
    )
    if not sentences:
        raise InfluenceError("word_order: the validation split has no prose sentences to use as irrelevant text")
    return random.Random(seed).sample(sentences, min(n, len(sentences)))


def cross_lingual_sequences(fact: Fact) -> dict[tuple[str, str], list[str]]:
    """{(partition, language): texts}: the fact in Turkish and Korean, forward and flipped (capital, president only)."""
    if fact.relation not in FLIPPED_FACT_TEMPLATES:
        return {}
    out = {}
    for lang in CROSS_LINGUAL:
        out[("rewording", lang)] = [FACT_TEMPLATES[fact.relation][lang].format(s=fact.subject, o=fact.object)]
        out[("flipped", lang)] = [FLIPPED_FACT_TEMPLATES[fact.relation][lang].format(s=fact.subject, o=fact.object)]
    return out


def synthetic_sequences(facts: list[Fact], irrelevant: list[str]) -> pd.DataFrame:
    """Every synthetic sequence once: fact_id ("" for the shared irrelevant text), partition, language, text."""
    rows = [{"fact_id": "", "partition": "irrelevant", "language": "en", "text": t} for t in irrelevant]
    for f in facts:
        parts = {(p, "en"): texts for p, texts in word_order_partitions(f, []).items() if p != "irrelevant"}
        for (p, lang), texts in (parts | cross_lingual_sequences(f)).items():
            rows += [{"fact_id": f.fact_id, "partition": p, "language": lang, "text": t} for t in texts]
    return pd.DataFrame(rows)


def _pairs(key: dict, selected: list[tuple], seqs: pd.DataFrame):
    """(query index, sequence index, the table row without its score): each query with its own fact's sequences
    and the irrelevant text."""
    for i, (q, fact, order) in enumerate(selected):
        for j, s in seqs.iterrows():
            if s["fact_id"] not in ("", fact.fact_id):
                continue
            seq_order = SEQUENCE_ORDER[s["partition"]]
            row = {
                **key,
                "query": q.name,
                "query_order": order,
                "fact_id": fact.fact_id,
                "relation": fact.relation,
                "partition": s["partition"],
                "language": s["language"],
                "order_vs_query": "none" if seq_order == "none" else ("same" if seq_order == order else "flipped"),
                "text": s["text"],
            }
            yield i, j, row


def point_rows(key: dict, selected: list[tuple], seqs: pd.DataFrame, scores) -> list[dict]:
    """Long-format rows of one scale point: each query with its own fact's sequences and the irrelevant text."""
    return [{**row, "score": float(scores[i, j])} for i, j, row in _pairs(key, selected, seqs)]


def answer_token_rows(key: dict, selected: list[tuple], seqs: pd.DataFrame, result, tokenizer) -> list[dict]:
    """`point_rows` split over each query's answer tokens (one row per token: position, text, I_t, share)."""
    ids = [q[m].tolist() for q, m in zip(result.answer_tokens.token_ids, result.answer_tokens.mask)]
    texts = [[tokenizer.decode([t]) for t in q] for q in ids]
    return [
        r
        for i, j, row in _pairs(key, selected, seqs)
        for r in token_rows(row, result.answer_token_scores[i, j, : len(ids[i])].tolist(), texts[i], ids[i])
    ]


@dataclass
class Options:
    queries: list[str] | None = option(
        None,
        "null: the queries tagged `word_order` with `heldout: true`; or a list of names (each about a held-out fact)",
    )
    irrelevant: int = option(5, "irrelevant sentences (validation-split prose), the same for every query")
    irrelevant_seed: int = option(0, "which ones: a fixed seed, never tuned")
    per_answer_token: bool = option(
        True, "also split each score over the query's answer tokens (tables word_order_answer_token*, one figure)"
    )

    def __post_init__(self):
        if self.irrelevant < 0:
            raise InfluenceError(f"word_order.irrelevant={self.irrelevant} must be a count of sentences (>= 0)")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    prep = prepare_data(cfg)
    if not prep.heldout:
        raise InfluenceError("word_order needs the embedded corpus's held-out facts: use data=embedded (or data=tiny)")
    selected = word_order_queries(world, opts.queries, prep.heldout)
    queries = [q for q, _, _ in selected]
    facts = list({f.fact_id: f for _, f, _ in selected}.values())
    avoid = {w for f in prep.heldout for w in (f.subject, f.object)}
    irrelevant = irrelevant_sentences(prep.corpus_dir, opts.irrelevant, opts.irrelevant_seed, avoid)
    seqs = synthetic_sequences(facts, irrelevant)
    rows, tokens, models, damping, curvature = [], [], [], [], None
    for point in scale_points(cfg, search=False):  # only the curvature is needed: no scan of the corpus
        curvature = fit_stage(point.cfg, point.world)
        res = hypothetical_scores(
            cfg, point.world, curvature, queries, seqs["text"].tolist(), per_answer_token=opts.per_answer_token
        )
        rows += point_rows(point.key, selected, seqs, res.scores)
        if opts.per_answer_token:
            tokens += answer_token_rows(point.key, selected, seqs, res, point.world.tokenizer)
        models.append(point.world.name)
        damping.append(f"{point.world.name}: {curvature.describe()['damping']}")
    scores = pd.DataFrame(rows)
    ratios = ratio_table(scores)
    no_cross = sorted({f.relation for f in facts} - set(FLIPPED_FACT_TEMPLATES))
    notes = (
        "scores are hypothetical additions (the model never trained on these sequences); headline ratios: forward "
        "queries only; "
        + (
            f"no cross-lingual rows for relations {', '.join(no_cross)} (no Turkish/Korean templates)"
            if no_cross
            else "every fact has cross-lingual rows"
        )
    )
    meta = {
        **curvature.describe(),
        "damping": " | ".join(damping),
        "scale_convention": SCALE_CONVENTION,
        "query_rank": "full",
        "model": ", ".join(models),
        "models": ", ".join(models),
        "queries": ", ".join(q.name for q in queries),
        "candidates": f"{len(seqs)} synthetic sequences (each query: its own fact's and the {len(irrelevant)} irrelevant ones)",
        "filter": "none",
        "layers": ",".join(l.name for l in curvature.layers),
        "irrelevant_seed": str(opts.irrelevant_seed),
        "seq_len": str(int(cfg.data.seq_len)),
    }
    out = {
        "word_order_scores": scores,
        "word_order_partitions": partition_table(scores),
        "word_order_ratios": ratios,
    }
    summary = word_order_summary(ratios)
    if opts.per_answer_token:
        out["word_order_answer_tokens"] = pd.DataFrame(tokens)
        out["word_order_answer_token_shares"] = shares = answer_token_shares(out["word_order_answer_tokens"])
        summary |= answer_token_summary(shares)
    return out | {
        "_summary": pd.DataFrame([summary | {"notes": notes}]),
        "_metadata": pd.DataFrame([meta]),
    }


STUDY = Study(
    name="word_order",
    title="Sensitivity to word ordering",
    where="§5.3.4, Figs. 23–27",
    order=110,
    sweep=True,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig23_26_word_order",
            partition_figures,
            "word_order_partitions",
            caption="Mean influence of each sequence variant (same order vs flipped, per model): the paper finds "
            "flipped-order sequences far less influential.",
        ),
        figure(
            "fig27_word_order_ratio",
            ratio_figure,
            "word_order_ratios",
            caption="Flipped / same-order influence ratio vs model size (1: no order sensitivity, symlog axis): the "
            "paper finds the ratio near 0 at every size.",
        ),
        figure(
            "word_order_answer_tokens",
            per_query(share_figure),
            "word_order_answer_token_shares",
            caption="Share of influence on the first vs later answer tokens: look for whether influence sits on the "
            "first token only.",
        ),
    ),
    findings=(
        Finding(
            "Flipping the order cuts influence to near zero",
            "≤ 0.1× same-order",
            "flipped / same-order mean influence ≤ 0.1 (largest size)",
            key_check("flipped_over_same_order", lambda v: v <= 0.1),
        ),
        Finding(
            "Removing the completion removes the influence",
            "≈ 0",
            "completion-removed / same-order ≤ 0.1 (largest size)",
            key_check("completion_removed_over_same_order", lambda v: v <= 0.1),
        ),
        Finding(
            "Cross-lingual flipped sequences: ≥ 10× drop",
            "≥ 10× (English → Mandarin)",
            "flipped / same-order in another language ≤ 0.1 (largest size)",
            key_check("cross_lingual_flipped_over_same_order", lambda v: v <= 0.1),
        ),
    ),
    long_tables=frozenset({"word_order_scores", "word_order_answer_tokens"}),
)
