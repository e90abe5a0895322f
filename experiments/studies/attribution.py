"""Is the attribution right? Fact tracing, the LDS and proponent removal in one run, one table side by side.

Runs `fact_tracing` and `lds` with their own option blocks (`fact_tracing:`, `lds:`) and joins their results per
method (and per model when `scale.sizes` sweeps): MRR, Recall@10, Recall@50, LDS with its interval, the rise in
loss when the method's proponents are removed, and the seconds spent attributing (fits and scans of both).
"""

from __future__ import annotations

import pandas as pd

from analysis.attribution import COMPARISON_FIGURE, method_comparison

from . import fact_tracing, lds
from .registry import Study


def run(cfg, world, opts) -> dict[str, pd.DataFrame]:
    traced = fact_tracing.STUDY(cfg, world)
    retrained = lds.STUDY(cfg, world)
    if "lds" not in retrained:  # lds.bank_only: this job only filled its share of the bank
        return {"_summary": retrained["_summary"]}
    keys = [c for c in ("model", "method") if c in traced["attribution_comparison"]]
    seconds = (
        pd.concat(
            [
                traced["attribution_comparison"][[*keys, "seconds"]],
                retrained["attribution_comparison"][[*keys, "seconds"]],
            ]
        )
        .groupby(keys, sort=False, as_index=False)["seconds"]
        .sum()
    )
    main = retrained["lds_summary"]
    main = main[main["variant"] == "subsets"].drop(columns="variant")
    rise = retrained["removal_summary"] if len(retrained["removal_summary"]) else None
    comparison = method_comparison(traced["fact_tracing_summary"], main, rise, seconds)
    out = {k: v for k, v in {**traced, **retrained}.items() if not k.startswith("_") and k != "attribution_comparison"}
    summary = traced["_summary"].add_prefix("fact_tracing_").join(retrained["_summary"].add_prefix("lds_"))
    return out | {"attribution_comparison": comparison, "_summary": summary, "_metadata": retrained["_metadata"]}


STUDY = Study(
    name="attribution",
    title="Is the attribution right? Fact tracing, LDS and proponent removal",
    where="beyond the paper",
    run=run,
    figures=(COMPARISON_FIGURE,),
    long_tables=fact_tracing.STUDY.long_tables | lds.STUDY.long_tables,
)
