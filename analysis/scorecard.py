"""The findings scorecard: each of the paper's findings as a scale-free check on our own results.

Every check reads the tables a study wrote (its `_summary` row or a small result table) and returns the
measured number beside the paper's, with the criterion it was judged by. Raw influence magnitudes are
never compared with the paper's (its normalisation differs): only ratios, shares, correlations and trends.
A study that did not run, or a number it could not produce, is reported as "not run" / "no data", never
as reproduced.

This module is the engine and a library of measures; which findings a study checks is on its descriptor
(`experiments/studies/<study>.py: STUDY.findings`), and `scorecard` is given them per study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .layers import MIN_RELIABLE_LAYERS

Tables = dict[str, dict[str, pd.DataFrame]]  # study name -> its tables
Measure = Callable[[dict[str, pd.DataFrame]], tuple[float | None, str, bool | None]]  # tables -> (value, shown, holds)


@dataclass(frozen=True)
class Finding:
    """One finding of the paper: what it reported, the criterion we judge ours by, the measure on a study's tables."""

    finding: str
    paper: str
    criterion: str
    measure: Measure


def _summary(tables: dict[str, pd.DataFrame]) -> dict:
    s = tables.get("_summary")
    return s.iloc[0].to_dict() if isinstance(s, pd.DataFrame) and not s.empty else {}


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def key_check(key: str, holds: Callable[[float], bool], fmt: str = "{:.3g}"):
    """A check on one number of the study's summary row."""

    def measure(tables):
        v = _num(_summary(tables).get(key))
        return (None, "no data", None) if v is None else (v, fmt.format(v), bool(holds(v)))

    return measure


def power_law_best(tables):
    """Share of the fitted queries whose tail the power law fits best (`_summary`: fitted, power_law_best_fit)."""
    s = _summary(tables)
    n, best = _num(s.get("fitted")), _num(s.get("power_law_best_fit"))
    if not n:
        return None, "no data", None
    return best / n, f"{int(best)} of {int(n)} queries", best / n > 0.5


def alpha_range(tables):
    """Share of the `sparsity` table's fitted exponents α in [1.5, 5]."""
    t = tables.get("sparsity")
    if not isinstance(t, pd.DataFrame) or t["alpha"].dropna().empty:
        return None, "no data", None
    a = t["alpha"].dropna()
    inside = float(((a >= 1.5) & (a <= 5)).mean())
    return (
        inside,
        f"{inside:.0%} of queries in range (α {a.min():.2f}–{a.max():.2f}, median {a.median():.2f})",
        inside == 1.0,
    )


def top_percent_share(tables):
    """Median share of positive influence held by the top 1% (`concentration` table)."""
    t = tables.get("concentration")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    at = t[np.isclose(t["top_fraction"], 0.01)]["share"].dropna()
    if at.empty:
        return None, "no data (top 1% not among concentration.fractions)", None
    med = float(at.median())
    return med, f"median {med:.0%} (range {at.min():.0%}–{at.max():.0%})", 0.10 <= med <= 0.60


def rank32_pearson(tables):
    """Mean Pearson r of rank-32 with full-rank scores (`query_rank` table)."""
    t = tables.get("query_rank")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    at = t[t["rank"] == 32]["pearson"].dropna()
    if at.empty:
        return None, "no data (rank 32 not among ranks)", None
    m = float(at.mean())
    return m, f"mean Pearson {m:.3f} over {len(at)} queries (min {at.min():.3f})", m >= 0.99


def estimators_vs_pbrf(tables):
    """Per task, EK-FAC ≈ LiSSA and well above the dot product in Pearson r with the PBRF (`accuracy_summary`; its
    PBRF rows at the main damping where it also holds the exact-GN reference and a damping sweep)."""
    t = tables.get("accuracy_summary")
    if not isinstance(t, pd.DataFrame) or t.empty:
        return None, "no data", None
    if "reference" in t:
        t = t[t["reference"] == "pbrf"]
    if "main_damping" in t:
        t = t[t["main_damping"].astype(bool)]
    parts, ok = [], []
    for task, g in t.groupby("task", sort=False):
        r = g.set_index("method")["pearson_mean"]
        if not {"ekfac", "lissa", "identity"} <= set(r.index):
            continue
        e, li, d = float(r["ekfac"]), float(r["lissa"]), float(r["identity"])
        ok.append(abs(e - li) <= 0.1 and e - d >= 0.1)
        verified = all(bool(g[c].iloc[0]) for c in ("pbrf_converged", "pbrf_linear") if c in g)
        parts.append(
            f"{task}: EK-FAC {e:.2f}, LiSSA {li:.2f}, dot {d:.2f}" + ("" if verified else " (PBRF unverified)")
        )
    if not ok:
        return None, "no data (needs ekfac, lissa and identity)", None
    return float(np.mean(ok)), "; ".join(parts), all(ok)


def layer_peaks(tables):
    """Each query type's peak layer block in the expected third of the depth (`_summary`: blocks, <type>_peak_block)."""
    s = _summary(tables)
    nb = _num(s.get("blocks"))
    peaks = {
        k.removesuffix("_peak_block"): int(v) for k, v in s.items() if k.endswith("_peak_block") and _num(v) is not None
    }
    want = {"quote": "upper", "fact": "upper", "math": "middle", "code": "middle"}
    have = {t: peaks[t] for t in want if t in peaks}
    if not nb or not have:
        return None, "no data", None

    def third(b: int) -> str:
        return ("lower", "middle", "upper")[
            min(2, int(3 * (b + 0.5) / nb))
        ]  # the block's centre, in thirds of the depth

    hits = [third(b) == want[t] for t, b in have.items()]
    shown = ", ".join(f"{t} peak block {b}/{int(nb)} ({third(b)})" for t, b in have.items())
    layers = _num(s.get("layers"))
    if layers is not None and layers < MIN_RELIABLE_LAYERS:
        shown += f"; unreliable: {int(layers)} layers, {s.get('layers_per_block', '?')} per block"
    return float(np.mean(hits)), shown, all(hits)


def passages_found(tables):
    """Share of the quote queries with a passage in the corpus that find it in their top k (`_summary`)."""
    s = _summary(tables)
    n, hit = _num(s.get("queries_with_passage_in_corpus")), _num(s.get("queries_with_passage_in_top_k"))
    if not n:
        return None, "no data", None
    return hit / n, f"{int(hit)} of {int(n)} quote queries find their passage in the top k", hit == n


def size_trend(key_smallest: str, key_largest: str, key_rho: str, sign: int):
    """A scale trend: the Spearman correlation with model size has the expected sign, and the ends agree."""

    def measure(tables):
        s = _summary(tables)
        a, b, rho = _num(s.get(key_smallest)), _num(s.get(key_largest)), _num(s.get(key_rho))
        if a is None or b is None or rho is None:
            return None, "no data", None
        return (
            rho,
            f"Spearman ρ with size {rho:+.2f}; smallest {a:.3g} → largest {b:.3g}",
            bool(sign * rho > 0 and sign * (b - a) > 0),
        )

    return measure


def distractor_drop(tables):
    """The share of distractor sequences falls from the smallest to the largest size (`_summary`)."""
    s = _summary(tables)
    a, b = _num(s.get("distractor_share_smallest")), _num(s.get("distractor_share_largest"))
    if a is None or b is None:
        return None, "no data", None
    return b - a, f"smallest {a:.0%} → largest {b:.0%}", b < a


def scorecard(results: Tables, findings: Mapping[str, Sequence[Finding]]) -> pd.DataFrame:
    """One row per finding of each study in `findings` ({study: its findings}, in order): what the paper reported,
    what we measured on `results[study]`, and whether it reproduced ("not run" for a study not in `results`)."""
    rows = []
    for study, checks in findings.items():
        tables = results.get(study)
        for f in checks:
            if tables is None:
                value, shown, holds = None, "not run", None
            else:
                try:
                    value, shown, holds = f.measure(tables)
                except (KeyError, ValueError, TypeError) as e:  # a table without the expected columns
                    value, shown, holds = None, f"no data ({type(e).__name__}: {e})", None
            verdict = "not run" if tables is None else ("no data" if holds is None else ("yes" if holds else "no"))
            rows.append(
                {
                    "study": study,
                    "finding": f.finding,
                    "paper": f.paper,
                    "measured": shown,
                    "value": value,
                    "criterion": f.criterion,
                    "reproduced": verdict,
                }
            )
    return pd.DataFrame(rows, columns=["study", "finding", "paper", "measured", "value", "criterion", "reproduced"])


def scorecard_summary(card: pd.DataFrame) -> dict[str, int]:
    counts = card["reproduced"].value_counts()
    return {f"findings_{k.replace(' ', '_')}": int(counts.get(k, 0)) for k in ("yes", "no", "no data", "not run")}
