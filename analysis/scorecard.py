"""The findings scorecard: each of the paper's findings as a scale-free check on our own results.

Every check reads the tables a study wrote (its `_summary` row or a small result table) and returns the
measured number beside the paper's, with the criterion it was judged by. Raw influence magnitudes are
never compared with the paper's (its normalisation differs): only ratios, shares, correlations and trends.
A study that did not run, or a number it could not produce, is reported as "not run" / "no data", never
as reproduced.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

Tables = dict[str, dict[str, pd.DataFrame]]  # study name -> its tables


@dataclass(frozen=True)
class Finding:
    study: str
    finding: str
    paper: str
    criterion: str
    measure: Callable[[dict[str, pd.DataFrame]], tuple[float | None, str, bool | None]]  # (value, shown, holds)


def _summary(tables: dict[str, pd.DataFrame]) -> dict:
    s = tables.get("_summary")
    return s.iloc[0].to_dict() if isinstance(s, pd.DataFrame) and not s.empty else {}


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _key_check(key: str, holds: Callable[[float], bool], fmt: str = "{:.3g}"):
    """A check on one number of the study's summary row."""
    def measure(tables):
        v = _num(_summary(tables).get(key))
        return (None, "no data", None) if v is None else (v, fmt.format(v), bool(holds(v)))
    return measure


def _power_law_best(tables):
    s = _summary(tables)
    n, best = _num(s.get("fitted")), _num(s.get("power_law_best_fit"))
    if not n:
        return None, "no data", None
    return best / n, f"{int(best)} of {int(n)} queries", best / n > 0.5


def _alpha_range(tables):
    t = tables.get("sparsity")
    if not isinstance(t, pd.DataFrame) or t["alpha"].dropna().empty:
        return None, "no data", None
    a = t["alpha"].dropna()
    inside = float(((a >= 1.5) & (a <= 5)).mean())
    return inside, f"{inside:.0%} of queries in range (α {a.min():.2f}–{a.max():.2f}, median {a.median():.2f})", inside == 1.0


def _concentration(tables):
    t = tables.get("concentration")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    at = t[np.isclose(t["top_fraction"], 0.01)]["share"].dropna()
    if at.empty:
        return None, "no data (top 1% not among concentration.fractions)", None
    med = float(at.median())
    return med, f"median {med:.0%} (range {at.min():.0%}–{at.max():.0%})", 0.10 <= med <= 0.60


def _rank32(tables):
    t = tables.get("query_rank")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    at = t[t["rank"] == 32]["pearson"].dropna()
    if at.empty:
        return None, "no data (rank 32 not among ranks)", None
    m = float(at.mean())
    return m, f"mean Pearson {m:.3f} over {len(at)} queries (min {at.min():.3f})", m >= 0.99


def _accuracy(tables):
    t = tables.get("accuracy_summary")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    parts, ok = [], []
    for task, g in t.groupby("task", sort=False):
        r = g.set_index("method")["pearson_mean"]
        if not {"ekfac", "lissa", "identity"} <= set(r.index):
            continue
        e, li, d = float(r["ekfac"]), float(r["lissa"]), float(r["identity"])
        ok.append(abs(e - li) <= 0.1 and e - d >= 0.1)
        verified = all(bool(g[c].iloc[0]) for c in ("pbrf_converged", "pbrf_linear") if c in g)
        parts.append(f"{task}: EK-FAC {e:.2f}, LiSSA {li:.2f}, dot {d:.2f}" + ("" if verified else " (PBRF unverified)"))
    if not ok:
        return None, "no data (needs ekfac, lissa and identity)", None
    return float(np.mean(ok)), "; ".join(parts), all(ok)


def _layerwise(tables):
    s = _summary(tables)
    nb = _num(s.get("blocks"))
    peaks = {k.removesuffix("_peak_block"): int(v) for k, v in s.items() if k.endswith("_peak_block") and _num(v) is not None}
    want = {"quote": "upper", "fact": "upper", "math": "middle", "code": "middle"}
    have = {t: peaks[t] for t in want if t in peaks}
    if not nb or not have:
        return None, "no data", None

    def third(b: int) -> str:
        return ("lower", "middle", "upper")[min(2, int(3 * (b + 0.5) / nb))]  # the block's centre, in thirds of the depth

    hits = [third(b) == want[t] for t, b in have.items()]
    shown = ", ".join(f"{t} peak block {b}/{int(nb)} ({third(b)})" for t, b in have.items())
    return float(np.mean(hits)), shown, all(hits)


def _memorization(tables):
    s = _summary(tables)
    n, hit = _num(s.get("queries_with_passage_in_corpus")), _num(s.get("queries_with_passage_in_top_k"))
    if not n:
        return None, "no data", None
    return hit / n, f"{int(hit)} of {int(n)} quote queries find their passage in the top k", hit == n


def _trend(key_smallest: str, key_largest: str, key_rho: str, sign: int):
    """A scale trend: the Spearman correlation with model size has the expected sign, and the ends agree."""
    def measure(tables):
        s = _summary(tables)
        a, b, rho = _num(s.get(key_smallest)), _num(s.get(key_largest)), _num(s.get(key_rho))
        if a is None or b is None or rho is None:
            return None, "no data", None
        return rho, f"Spearman ρ with size {rho:+.2f}; smallest {a:.3g} → largest {b:.3g}", bool(sign * rho > 0 and sign * (b - a) > 0)
    return measure


def _distractor_check(tables):
    s = _summary(tables)
    a, b = _num(s.get("distractor_share_smallest")), _num(s.get("distractor_share_largest"))
    if a is None or b is None:
        return None, "no data", None
    return b - a, f"smallest {a:.0%} → largest {b:.0%}", b < a


FINDINGS: list[Finding] = [
    Finding("sparsity", "Power law fits the influence tail best for most queries", "best for most of 8 queries",
            "power law has the lowest AIC for > 50% of queries", _power_law_best),
    Finding("sparsity", "Power-law exponent α in [1.5, 5]", "α 1.99–4.34 (8 queries)", "every fitted α in [1.5, 5]", _alpha_range),
    Finding("concentration", "Top 1% of sequences hold 10–60% of positive influence", "12–52%",
            "median share of the top 1% in [10%, 60%]", _concentration),
    Finding("query_rank", "Rank-32 query gradients match full rank", "Pearson 0.995", "mean Pearson ≥ 0.99", _rank32),
    Finding("accuracy", "EK-FAC ≈ LiSSA ≫ dot product against the PBRF", "EK-FAC and LiSSA similar, both well above the dot product",
            "per task |EK-FAC − LiSSA| ≤ 0.1 and EK-FAC − dot ≥ 0.1 (Pearson)", _accuracy),
    Finding("abstraction", "Token overlap of top sequences falls with model size", "small: token matches; large: thematic",
            "Jaccard overlap: Spearman ρ with size < 0 and largest < smallest",
            _trend("jaccard_smallest", "jaccard_largest", "jaccard_vs_size_spearman", -1)),
    Finding("abstraction", "Share of token-overlap distractors among top sequences falls with size", "small: spurious token matches",
            "distractor share largest < smallest", _distractor_check),
    Finding("abstraction", "Top influence values fall with model size", "e.g. paperclips 0.910 → 0.075 (810M → 52B)",
            "top score per query: Spearman ρ with size < 0 (a sign, not a magnitude)",
            _key_check("top_score_vs_size_spearman", lambda v: v < 0, "Spearman ρ {:+.2f}")),
    Finding("math_code", "Spurious token matches give way to related solutions with size", "small: spurious; large: related solutions",
            "spurious share: Spearman ρ with size < 0 and largest < smallest",
            _trend("spurious_share_smallest", "spurious_share_largest", "spurious_vs_size_spearman", -1)),
    Finding("cross_lingual", "Cross-lingual influence rises with model size", "near zero at the smallest size, rising steadily",
            "translated/English ratio (median over queries): Spearman ρ with size > 0 and largest > smallest",
            _trend("cross_lingual_smallest", "cross_lingual_largest", "cross_lingual_vs_size_spearman", +1)),
    Finding("layer_wise", "Quotes and facts peak in upper layers; math and code in middle layers", "upper / middle",
            "each type's peak block in the expected third of the layers", _layerwise),
    Finding("memorization", "Top sequences contain the exact memorized passages", "yes", "every quote in the corpus is found in its top k",
            _memorization),
    Finding("word_order", "Flipping the order cuts influence to near zero", "≤ 0.1× same-order",
            "flipped / same-order mean influence ≤ 0.1 (largest size)", _key_check("flipped_over_same_order", lambda v: v <= 0.1)),
    Finding("word_order", "Removing the completion removes the influence", "≈ 0", "completion-removed / same-order ≤ 0.1 (largest size)",
            _key_check("completion_removed_over_same_order", lambda v: v <= 0.1)),
    Finding("word_order", "Cross-lingual flipped sequences: ≥ 10× drop", "≥ 10× (English → Mandarin)",
            "flipped / same-order in another language ≤ 0.1 (largest size)",
            _key_check("cross_lingual_flipped_over_same_order", lambda v: v <= 0.1)),
    Finding("role_play", "Role-play queries draw on AI-themed text more as models grow", "52B: science fiction and AI-risk text",
            "share of `ai` sequences among top k: Spearman ρ with size > 0 and largest > smallest",
            _trend("ai_share_smallest", "ai_share_largest", "ai_vs_size_spearman", +1)),
]


def scorecard(results: Tables, findings: list[Finding] = FINDINGS) -> pd.DataFrame:
    """One row per finding: what the paper reported, what we measured, and whether it reproduced."""
    rows = []
    for f in findings:
        tables = results.get(f.study)
        if tables is None:
            value, shown, holds = None, "not run", None
        else:
            try:
                value, shown, holds = f.measure(tables)
            except (KeyError, ValueError, TypeError) as e:  # a table without the expected columns
                value, shown, holds = None, f"no data ({type(e).__name__}: {e})", None
        rows.append({"study": f.study, "finding": f.finding, "paper": f.paper, "measured": shown, "value": value,
                     "criterion": f.criterion,
                     "reproduced": "not run" if tables is None else ("no data" if holds is None else ("yes" if holds else "no"))})
    return pd.DataFrame(rows)


def scorecard_summary(card: pd.DataFrame) -> dict[str, int]:
    counts = card["reproduced"].value_counts()
    return {f"findings_{k.replace(' ', '_')}": int(counts.get(k, 0)) for k in ("yes", "no", "no data", "not run")}
