"""The linear datamodeling score and proponent removal on a language model: the retraining checks of attribution.

The fine-tuning protocol kronfluence and Bergson use. From the trained model, fine-tune on M seeded random
subsets (fraction α) of a fine-tuning set of n training sequences; for each query, the LDS is the Spearman
correlation across subsets between the summed attributions of each subset's sequences and the query's measured
log p(completion | prompt) after fine-tuning on it (`analysis.lds`), averaged over queries with a bootstrap
interval. Attributions are computed on the model fine-tuned on all n, with every method fitted on those n. The
1 %-drop variant fine-tunes on M subsets that each miss a random 1 %. Proponent removal fine-tunes, per query,
without each method's top 1 % (the sequences it says raise log p most) and without a random 1 %, and reports the
rise in the query's loss (−log p) over the model fine-tuned on all n.

Every fine-tune is an entry of the retrain bank (`pipeline.bank`): cached by fingerprint, resumable, shared by
methods and runs, split over `lds.shards` jobs (a Hydra `-m` sweep over `lds.shard`) and torchrun ranks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from analysis.attribution import COMPARISON_FIGURE, method_comparison, removal_summary, removal_table
from analysis.lds import lds_summary, linear_datamodeling_score
from embedded.finetune import FinetuneSettings, finetune
from embedded.world import TrainingSet
from influence import InfluenceError
from influence.batching import sample_indices

from ..pipeline.attribution import (
    METHODS,
    OVERRIDES_HELP,
    check_methods,
    check_overrides,
    default_overrides,
    method_scores,
    study_worlds,
)
from ..pipeline.bank import Retrain, RetrainBank, subset_masks, without
from ..pipeline.options import typed
from ..pipeline.stages import encode_stage, select_queries
from .registry import Study, option


@dataclass
class Options:
    methods: list[str] = option(help=f"methods compared, from {', '.join(METHODS)}", factory=lambda: list(METHODS))
    n_finetune: int = option(256, "fine-tuning set: this many training sequences, a seeded sample (sample_seed)")
    sample_seed: int = option(0, "seed of the fine-tuning set's sample (the same set for every model seed)")
    queries: list[str] | None = option(None, "query names (null: the run's queries tagged lds, else all of them)")
    max_queries: int | None = option(24, "the first this many of those queries (null: all)")
    n_subsets: int = option(32, "M: random subsets fine-tuned on (standard protocol: 100)")
    fraction: float = option(0.5, "α: each subset's share of the fine-tuning set")
    retrain_seeds: list[int] = option(
        help="fine-tuning seeds per subset, measurements averaged (standard: 5)", factory=lambda: [0]
    )
    drop_subsets: int = option(16, "the 1 %-drop variant: subsets each missing drop_fraction of the set (0: skip)")
    drop_fraction: float = option(0.01, "share of the set each drop subset misses")
    removal_queries: int = option(8, "proponent removal: the first this many queries (0: skip)")
    removal_fraction: float = option(0.01, "share of the set removed per method and query (at least one sequence)")
    finetune: dict = option(
        help="fine-tuning settings (embedded.finetune.FinetuneSettings)", factory=lambda: asdict(FinetuneSettings())
    )
    shard: int = option(0, "this job's share of the retrain bank (0 .. shards-1)")
    shards: int = option(1, "jobs the bank is split over (one Hydra -m job per lds.shard value)")
    bank_only: bool = option(False, "fill this share of the bank and stop (then run once without it for the scores)")
    method_overrides: dict = option(help=OVERRIDES_HELP, factory=default_overrides)

    def __post_init__(self):
        check_methods(self.methods, "lds")
        check_overrides(self.method_overrides, "lds")
        for key, low in (
            ("n_finetune", 4),
            ("n_subsets", 3),
            ("drop_subsets", 0),
            ("removal_queries", 0),
            ("shards", 1),
        ):
            if int(getattr(self, key)) < low:
                raise InfluenceError(f"lds.{key}={getattr(self, key)} must be at least {low}")
        if self.drop_subsets and self.drop_subsets < 3:
            raise InfluenceError(f"lds.drop_subsets={self.drop_subsets}: the LDS needs at least 3 subsets (or 0)")
        for key in ("fraction", "drop_fraction", "removal_fraction"):
            if not 0 < float(getattr(self, key)) < 1:
                raise InfluenceError(f"lds.{key}={getattr(self, key)} must be in (0, 1)")
        if not self.retrain_seeds or len(set(self.retrain_seeds)) != len(self.retrain_seeds):
            raise InfluenceError(f"lds.retrain_seeds={self.retrain_seeds}: give distinct seeds")
        if not 0 <= self.shard < self.shards:
            raise InfluenceError(f"lds.shard={self.shard} must be in 0 .. lds.shards-1 = {self.shards - 1}")
        if self.max_queries is not None and self.max_queries < 1:
            raise InfluenceError(f"lds.max_queries={self.max_queries} must be at least 1 (or null)")
        typed(FinetuneSettings, self.finetune, "lds.finetune")  # unknown keys or bad values fail here

    @property
    def settings(self) -> FinetuneSettings:
        return typed(FinetuneSettings, self.finetune, "lds.finetune")


@dataclass
class Setup:
    """One model's fine-tuning set, queries, bank and the retrains of the LDS."""

    rows: torch.Tensor  # (n,) training rows of the fine-tuning set
    queries: list
    bank: RetrainBank
    full: list[Retrain]  # fine-tuned on all n, one per seed
    subsets: torch.Tensor  # (M, n) bool
    drops: torch.Tensor  # (D, n) bool

    def retrains(self, masks: torch.Tensor, seeds) -> list[Retrain]:
        return [Retrain(m, int(s)) for m in masks for s in seeds]


def setup(cfg, world, opts: Options) -> Setup:
    n_all = world.train.input_ids.shape[0]
    if opts.n_finetune > n_all:
        raise InfluenceError(f"lds.n_finetune={opts.n_finetune} exceeds the {n_all} training sequences: lower it")
    rows = torch.sort(sample_indices(n_all, opts.n_finetune, opts.sample_seed)).values
    queries = select_queries(world, "lds", opts.queries)[: opts.max_queries]
    ids, mask = world.train.input_ids[rows], world.train.attention_mask[rows]
    root = Path(str(cfg.paths.output_dir)) / "retrains" / world.name
    bank = RetrainBank(root, world.model, ids, mask, opts.settings, encode_stage(world, queries))
    n = len(rows)
    seed = int(cfg.seed)
    return Setup(
        rows=rows,
        queries=queries,
        bank=bank,
        full=[Retrain(torch.ones(n, dtype=torch.bool), int(s)) for s in opts.retrain_seeds],
        subsets=subset_masks(n, opts.n_subsets, opts.fraction, seed),
        drops=subset_masks(n, opts.drop_subsets, 1 - opts.drop_fraction, seed + 1)
        if opts.drop_subsets
        else torch.zeros(0, n, dtype=torch.bool),
    )


def finetuned_world(world, s: Setup, opts: Options):
    """The world of the model fine-tuned on all n (first seed): the model every method attributes."""
    ids, mask = s.bank.ids, s.bank.mask
    tuned = finetune(world.model, ids, mask, opts.settings, s.full[0].seed)
    meta = world.train.meta.iloc[s.rows.numpy()].reset_index(drop=True)
    train = TrainingSet(ids, mask, [world.train.texts[i] for i in s.rows.tolist()], meta)
    return dataclasses.replace(world, name=f"{world.name}-ft-{s.bank.key(s.full[0])[:10]}", model=tuned, train=train)


def lds_rows(method: str, variant: str, scores, masks, outputs, queries) -> list[dict]:
    res = linear_datamodeling_score(scores, masks, outputs)
    return [
        {"method": method, "variant": variant, "query": q.name, "lds": v, "n_subsets": res.n_subsets}
        for q, v in zip(queries, res.per_query)
    ]


def removal_retrains(s: Setup, scores: dict, opts: Options, seed: int) -> list[tuple[str, str, Retrain]]:
    """(method, query, retrain) without each method's top fraction, and without a random fraction, per query."""
    n = len(s.rows)
    k = max(1, math.ceil(opts.removal_fraction * n))
    gen = torch.Generator().manual_seed(seed + 2)
    out = []
    for qi, q in enumerate(s.queries[: opts.removal_queries]):
        for method, sc in scores.items():
            out.append((method, q.name, Retrain(without(n, torch.topk(sc[qi], k).indices), s.full[0].seed)))
        out.append(("random", q.name, Retrain(without(n, torch.randperm(n, generator=gen)[:k]), s.full[0].seed)))
    return out


def measure(cfg, world, opts: Options, labels: dict) -> dict[str, pd.DataFrame] | None:
    s = setup(cfg, world, opts)
    base = s.full + s.retrains(s.subsets, opts.retrain_seeds) + s.retrains(s.drops, opts.retrain_seeds)
    fresh = s.bank.fill(base, opts.shard, opts.shards, desc=f"retrain bank {labels['model']}")
    if opts.bank_only and not opts.removal_queries:
        return None
    ft = finetuned_world(world, s, opts)
    scores, seconds = {}, []
    for m in check_methods(opts.methods, "lds"):
        scores[m.name], sec = method_scores(
            cfg, ft, m, s.queries, torch.arange(len(s.rows)), opts.method_overrides.get(m.name)
        )
        seconds.append({"method": m.name, "seconds": sec, **labels})
    removal = removal_retrains(s, scores, opts, int(cfg.seed)) if opts.removal_queries else []
    fresh += s.bank.fill([r for _, _, r in removal], opts.shard, opts.shards, desc="proponent removal")
    if opts.bank_only:
        return None
    retrains = pd.DataFrame([{**labels, "retrains": len(base) + len(removal), "fine_tuned_now": fresh}])
    return tables_of(s, opts, scores, removal, labels) | {"seconds": pd.DataFrame(seconds), "retrains": retrains}


def _mean_over_seeds(s: Setup, masks: torch.Tensor, opts: Options) -> torch.Tensor:
    m = s.bank.measurements(s.retrains(masks, opts.retrain_seeds))
    return m.view(len(masks), len(opts.retrain_seeds), -1).mean(1)


def tables_of(s: Setup, opts: Options, scores: dict, removal: list, labels: dict) -> dict[str, pd.DataFrame]:
    variants = {"subsets": s.subsets, **({"drop": s.drops} if len(s.drops) else {})}
    outputs = {v: _mean_over_seeds(s, masks, opts) for v, masks in variants.items()}
    lds = [
        r
        for m, sc in scores.items()
        for v, masks in variants.items()
        for r in lds_rows(m, v, sc, masks, outputs[v], s.queries)
    ]
    full = s.bank.measurements(s.full[:1])[0]
    pos = {q.name: i for i, q in enumerate(s.queries)}
    losses = pd.DataFrame(
        [
            {
                "method": m,
                "query": q,
                "loss_full": -float(full[pos[q]]),
                "loss_removed": -float(s.bank.measurements([r])[0][pos[q]]),
            }
            for m, q, r in removal
        ],
        columns=["method", "query", "loss_full", "loss_removed"],
    )
    return {"lds": pd.DataFrame(lds).assign(**labels), "removal": removal_table(losses).assign(**labels)}


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    parts = [measure(c, w, opts, labels) for labels, c, w in study_worlds(cfg, world)]
    if opts.bank_only:
        done = f"shard {opts.shard} of {opts.shards}"
        return {"_summary": pd.DataFrame([{"bank_only": True, "filled": done}])}
    lds = pd.concat([p["lds"] for p in parts], ignore_index=True)
    removal = pd.concat([p["removal"] for p in parts], ignore_index=True)
    seconds = pd.concat([p["seconds"] for p in parts], ignore_index=True)
    retrains = pd.concat([p["retrains"] for p in parts], ignore_index=True)
    models = ["model"] if lds["model"].nunique() > 1 else []
    summary = lds_summary(lds, by=(*models, "variant", "method"))
    rise = removal_summary(removal, by=(*models, "method")) if len(removal) else None
    main = summary[summary["variant"] == "subsets"].drop(columns="variant")
    comparison = method_comparison(None, main, rise, seconds[[*models, "method", "seconds"]])
    return {
        "lds": lds,
        "lds_summary": summary,
        "removal": removal,
        "removal_summary": rise if rise is not None else pd.DataFrame(),
        "attribution_comparison": comparison,
        "lds_retrains": retrains,
        "_summary": pd.DataFrame([headline(main, rise, retrains, models)]),
        "_metadata": pd.DataFrame([protocol(opts)]),
    }


def headline(main: pd.DataFrame, rise, retrains: pd.DataFrame, models) -> dict:
    out = {"retrains": int(retrains["retrains"].sum()), "fine_tuned_now": int(retrains["fine_tuned_now"].sum())}
    if not models:
        out |= {f"lds_{r.method}": float(r.lds_mean) for r in main.itertuples()}
        if rise is not None:
            out |= {f"removal_rise_{r.method}": float(r.rise_mean) for r in rise.itertuples()}
    return out


def protocol(opts: Options) -> dict:
    """What was run, beside the standard protocol (kronfluence/Bergson: M = 100 subsets × 5 seeds)."""
    s = opts.settings
    return {
        "n_finetune": opts.n_finetune,
        "n_subsets": opts.n_subsets,
        "fraction": opts.fraction,
        "retrain_seeds": ",".join(map(str, opts.retrain_seeds)),
        "drop_subsets": opts.drop_subsets,
        "removal_queries": opts.removal_queries,
        "finetune": f"epochs {s.epochs}, lr {s.lr}, batch {s.batch_size}",
        "versus_standard": f"{opts.n_subsets} subsets x {len(opts.retrain_seeds)} seed(s); standard 100 x 5",
    }


STUDY = Study(
    name="lds",
    title="Linear datamodeling score and proponent removal",
    where="beyond the paper: TRAK's LDS, kronfluence and Bergson's fine-tuning protocol",
    run=run,
    options=Options,
    figures=(COMPARISON_FIGURE,),
    long_tables=frozenset({"lds", "removal"}),
)
