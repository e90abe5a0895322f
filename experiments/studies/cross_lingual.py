"""Cross-lingual influence vs scale (Figs. 15–16): do the English sequences that most influence an English
query also influence its translations (Turkish, Korean), and more so in larger models?

Per sweep point and English query: its top-k sequences among the English training sequences (by the scan),
then the scan's scores of those same sequences for each translated query. The headline is scale-free: the
translated influence summed over the sequences, divided by the English influence summed over them. Its trend
over size takes, per sweep point, the MEDIAN of those ratios over queries and languages: a query whose English
top-k sum is near zero gives ratios of ±1000s (measured on the embedded default) that a mean would follow.

Beside it, `per_answer_token` splits the influence of those same top sequences over the answer tokens of the
English query and of each translation (I = Σ_t I_t, full-rank re-scores of just those rows,
`compute_scores(..., per_answer_token=True)`): `cross_lingual_answer_tokens` (one row per answer token) and
`cross_lingual_answer_token_shares` (per query and language, the share on the first answer token and on the later
ones). A name is spelled alike in every language, so cross-lingual influence that sits on a name's later tokens
needs no translation at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from analysis.answer_tokens import first_token_shares, median_share, share_figure, token_rows
from analysis.figures import figure, per_query
from analysis.scale import cross_lingual_heatmap, cross_lingual_trend
from analysis.scorecard import Finding, size_trend
from analysis.trends import trend
from influence import InfluenceError, compute_scores

from ..pipeline.options import score_options
from ..pipeline.stages import encode_stage, score_task, training_data
from ..pipeline.sweep import scale_points
from ._sweep import point_metadata, scale_queries, sweep_metadata, text
from .registry import Study, option


@dataclass
class Options:
    top_k: int = option(10, "English top sequences per English query and model (the paper: 10)")
    queries: list[str] | None = option(
        None, "null: English queries tagged `cross_lingual` that have translations in the run; or a list of names"
    )
    per_answer_token: bool = option(
        True, "also split the top sequences' influence over each query's answer tokens (cross_lingual_answer_token*)"
    )

    def __post_init__(self):
        if self.top_k < 1:
            raise InfluenceError(f"cross_lingual.top_k={self.top_k} must be at least 1")


def english_rows(meta: pd.DataFrame) -> np.ndarray:
    """Training rows in English only: the embedded corpus tags only multilingual documents with a language,
    so a missing language is English; mixed documents (`en+tr`) hold translations and are left out."""
    lang = meta["language"] if "language" in meta else pd.Series([None] * len(meta))
    return (lang.isna() | lang.astype(str).eq("en")).to_numpy()


def translations_of(world) -> dict[str, list]:
    out: dict[str, list] = {}
    for q in world.queries:
        if q.tags.get("translation_of"):
            out.setdefault(str(q.tags["translation_of"]), []).append(q)
    return out


def english_queries(world, names=None) -> list:
    """The English queries of the study that have a translation among the run's queries."""
    queries, trans = scale_queries(world, "cross_lingual", names), translations_of(world)
    if names:
        lonely = [q.name for q in queries if q.name not in trans]
        if lonely:
            raise InfluenceError(
                f"cross_lingual: queries {lonely} have no translation in this run (a query with "
                f"translation_of: <name>): add their translations to queries.names or drop them"
            )
        return queries
    kept = [q for q in queries if not q.tags.get("translation_of") and q.name in trans]
    if not kept:
        raise InfluenceError(
            f"cross_lingual: none of the tagged queries {[q.name for q in queries]} has a translation in this run "
            "(a query with translation_of: <name>): add translations to queries.names"
        )
    return kept


def top_english(scores: torch.Tensor, candidates: torch.Tensor, english: np.ndarray, k: int) -> np.ndarray:
    """Positions (in the scan's candidates) of the k highest-scoring English candidates for one query."""
    s = scores.numpy()
    ok = np.flatnonzero(english[candidates.numpy()] & np.isfinite(s))
    return ok[np.argsort(-s[ok], kind="stable")[:k]]


def point_rows(point, queries, trans, k: int):
    """One sweep point: per-sequence rows, per-(query, language) ratio rows, and each translation's scores
    on every candidate (for the heatmap across sizes)."""
    res, train = point.search.result, point.world.train
    pos = {n: i for i, n in enumerate(res.query_names)}
    english = english_rows(train.meta)
    cand = res.indices.numpy()
    seqs, ratios, scores = [], [], {}
    for q in queries:
        s_en = res.scores[pos[q.name]]
        top = top_english(s_en, res.indices, english, k)
        en = s_en.numpy()[top]
        for t in trans[q.name]:
            lang = str(t.tags.get("language", t.name))
            s_t = res.scores[pos[t.name]].numpy()
            tr = s_t[top]
            scores[(q.name, lang)] = (cand, s_t, top, float(en.sum()))
            ratios.append(
                {
                    **point.key,
                    "query": q.name,
                    "language": lang,
                    "translated_query": t.name,
                    "top_k": len(top),
                    "english_sum": float(en.sum()),
                    "translated_sum": float(tr.sum()),
                    "ratio": float(tr.sum() / en.sum()) if en.sum() != 0 else float("nan"),
                }
            )
            for rank, (j, e, v) in enumerate(zip(top, en, tr), start=1):
                row = int(cand[j])
                m = train.meta.iloc[row]
                seqs.append(
                    {
                        **point.key,
                        "query": q.name,
                        "language": lang,
                        "translated_query": t.name,
                        "rank": rank,
                        "row": row,
                        "sequence_id": int(m.get("id", row)),
                        "category": text(m.get("category")),
                        "kind": text(m.get("kind")),
                        "english_score": float(e),
                        "translated_score": float(v),
                        "ratio": float(v / e) if e != 0 else float("nan"),
                        "text": train.texts[row],
                    }
                )
    return seqs, ratios, scores


def heatmap_table(keys: list[dict], scores: list[dict]) -> pd.DataFrame:
    """Fig. 15: per seed, query and language, the union over sizes of each size's English top sequences, and at
    every size each one's translated influence divided by that size's summed English top influence."""
    rows = []
    by_seed: dict = {}
    for key, sc in zip(keys, scores):
        by_seed.setdefault(key["seed"], []).append((key, sc))
    for seed, pts in by_seed.items():
        for q, lang in pts[0][1]:
            tops = [
                (key, int(sc[(q, lang)][0][j]), rank)
                for key, sc in pts
                for rank, j in enumerate(sc[(q, lang)][2], start=1)
            ]
            for key, sc in pts:
                cand, s_t, _, en_sum = sc[(q, lang)]
                at = {int(r): i for i, r in enumerate(cand)}
                for top_key, row, rank in tops:
                    v = s_t[at[row]] / en_sum if row in at and en_sum != 0 else float("nan")
                    rows.append(
                        {
                            **key,
                            "query": q,
                            "language": lang,
                            "top_at": top_key["size"],
                            "top_at_order": top_key["size_order"],
                            "rank": rank,
                            "row": row,
                            "value": float(v),
                        }
                    )
    return pd.DataFrame(rows)


def answer_token_rows(cfg, point, queries, trans, k: int) -> list[dict]:
    """Each English query's top-k English sequences (as `point_rows` chooses them) re-scored at full rank for the
    query and its translations, split over each one's answer tokens: one row per (sequence, scored query, token).
    One English query at a time, so only its own and its translations' answer-token gradients are held."""
    res, world = point.search.result, point.world
    pos, english = {n: i for i, n in enumerate(res.query_names)}, english_rows(world.train.meta)
    rows = []
    for q in queries:
        top = res.indices[top_english(res.scores[pos[q.name]], res.indices, english, k)]
        scored = [q, *trans[q.name]]
        out = token_scores(cfg, world, point.search.curvature, scored, top)
        col = {int(r): j for j, r in enumerate(out.indices)}
        ids = [t[m].tolist() for t, m in zip(out.answer_tokens.token_ids, out.answer_tokens.mask)]
        for rank, row in enumerate(top.tolist(), start=1):
            for i, x in enumerate(scored):
                base = {
                    **point.key,
                    "query": q.name,
                    "query_language": "en" if i == 0 else str(x.tags.get("language", x.name)),
                    "scored_query": x.name,
                    "rank": rank,
                    "row": row,
                    "sequence_id": int(world.train.meta.iloc[row].get("id", row)),
                }
                scores = out.answer_token_scores[i, col[row], : len(ids[i])].tolist()
                rows += token_rows(base, scores, [world.tokenizer.decode([t]) for t in ids[i]], ids[i])
    return rows


def token_scores(cfg, world, curvature, queries, rows: torch.Tensor):
    """`compute_scores` of `queries` on the training `rows`, at full rank, with their answer-token split; the
    scan's task, batch size, device and normalization."""
    opts = score_options(cfg)
    return compute_scores(
        world.model,
        score_task(cfg),
        curvature,
        encode_stage(world, queries),
        training_data(world),
        batch_size=opts.batch_size,
        indices=rows,
        device=opts.device,
        normalize=opts.normalize,
        per_answer_token=True,
    )


def answer_token_shares(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point, English query and scored query (itself or a translation): the share of the top sequences'
    summed influence on the first answer token and on the later ones; English first in the figure."""
    shares = first_token_shares(
        tokens, ["size", "size_order", "seed", "params", "query", "query_language", "scored_query"]
    )
    shares["category"] = [f"{lang}: {name}" for lang, name in zip(shares["query_language"], shares["scored_query"])]
    shares["category_order"] = (shares["query_language"] != "en").astype(int)
    return shares


def answer_token_summary(shares: pd.DataFrame) -> dict:
    """The later answer tokens' share of the top sequences' influence, for the English queries and for their
    translations: medians over queries (and languages) with multi-token answers, and seeds, at the largest size."""
    en = shares["query_language"] == "en"
    return {
        "answer_later_tokens_share_english": median_share(shares[en]),
        "answer_later_tokens_share_translated": median_share(shares[~en]),
    }


def summary(ratio: pd.DataFrame) -> dict:
    """The trend of the per-point median ratio (over queries and languages): see the module docstring."""
    medians = ratio.groupby(["size", "size_order", "seed"], as_index=False)["ratio"].median()
    return trend(medians, "ratio", "cross_lingual")


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    k = opts.top_k
    queries = english_queries(world, opts.queries)
    trans = translations_of(world)
    seqs, ratios, keys, scores, metas, tokens = [], [], [], [], [], []
    for point in scale_points(cfg):
        s, r, sc = point_rows(point, queries, trans, k)
        if opts.per_answer_token:
            tokens += answer_token_rows(cfg, point, queries, trans, k)
        seqs += s
        ratios += r
        keys.append(point.key)
        scores.append(sc)
        metas.append(point_metadata(point))
    ratio = pd.DataFrame(ratios)
    out = {
        "cross_lingual_sequences": pd.DataFrame(seqs),
        "cross_lingual_ratio": ratio,
        "cross_lingual_heatmap": heatmap_table(keys, scores),
    }
    line = summary(ratio)
    if opts.per_answer_token:
        out["cross_lingual_answer_tokens"] = pd.DataFrame(tokens)
        out["cross_lingual_answer_token_shares"] = shares = answer_token_shares(out["cross_lingual_answer_tokens"])
        line |= answer_token_summary(shares)
    return out | {
        "_summary": pd.DataFrame([line]),
        "_metadata": sweep_metadata(
            cfg,
            metas,
            queries,
            top_k=k,
            english="meta language missing or en",
            translations=",".join(t.name for q in queries for t in trans[q.name]),
        ),
    }


STUDY = Study(
    name="cross_lingual",
    title="Cross-lingual generalization",
    where="§5.3.1, Figs. 15–16",
    order=80,
    sweep=True,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig16_cross_lingual_ratio",
            cross_lingual_trend,
            "cross_lingual_ratio",
            caption="Influence on the translated query / on the English one, summed over the English top sequences, "
            "vs model size (median, the headline's statistic): the paper finds it rising from ~0 with size.",
        ),
        figure(
            "fig15_cross_lingual",
            cross_lingual_heatmap,
            "cross_lingual_heatmap",
            caption="Each size's English top sequences (rows) scored on the translated query at every size "
            "(columns): look for rows lighting up only at the larger sizes.",
        ),
        figure(
            "cross_lingual_answer_tokens",
            per_query(share_figure),
            "cross_lingual_answer_token_shares",
            caption="Share of influence on the first vs later answer tokens of the translated queries: look for "
            "whether influence sits on the first token only.",
        ),
    ),
    findings=(
        Finding(
            "Cross-lingual influence rises with model size",
            "near zero at the smallest size, rising steadily",
            "translated/English ratio (median over queries): Spearman ρ with size > 0 and largest > smallest",
            size_trend("cross_lingual_smallest", "cross_lingual_largest", "cross_lingual_vs_size_spearman", +1),
        ),
    ),
    long_tables=frozenset({"cross_lingual_answer_tokens"}),
)
