"""Layer-wise influence (Figs. 17–21) and the layers × tokens heatmap (Fig. 4).

Each query's top sequences (by the scan) with their influence split over layer blocks: the scan keeps
the layer-wise split of every score, so no second pass is needed. The heatmap re-scores one sequence
at full rank per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.figures import figure
from analysis.layers import block_layers, block_shares, depth_reliability, layer_figure, token_heatmap_figure
from analysis.scorecard import Finding, layer_peaks
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import layer_block_table, token_heatmap_table, transformer_layer
from .registry import Study, option


@dataclass
class Options:
    top_n: int = option(500, "top sequences per query (the paper: 500)")
    blocks: int = option(9, "layer blocks: min(blocks, number of layers)")
    queries: list[str] | None = option(None, "null: the queries tagged `layer_wise`; or a list of names")
    heatmap_query: str | None = option(None, "the Fig. 4 query (null: the first selected query)")
    heatmap_rank: int = option(1, "which of its top sequences")

    def __post_init__(self):
        if self.top_n < 1 or self.blocks < 1 or self.heatmap_rank < 1:
            raise InfluenceError(
                f"layer_wise needs top_n, blocks and heatmap_rank >= 1 "
                f"(got {self.top_n}, {self.blocks}, {self.heatmap_rank})"
            )


def per_block(sizes: list[int]) -> str:
    """How many layers a block holds: `1`, or `2–3` where blocks differ."""
    return str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}–{max(sizes)}"


def run(cfg, world, opts: Options) -> dict[str, pd.DataFrame]:
    top_n, max_blocks = opts.top_n, opts.blocks
    queries = select_queries(world, "layer_wise", opts.queries)
    heat_name = opts.heatmap_query or queries[0].name
    names = [q.name for q in world.queries]
    if heat_name not in names:
        raise InfluenceError(f"layer_wise.heatmap_query={heat_name!r} is not a query of this run: choose from {names}")
    rank = opts.heatmap_rank
    search = search_stage(cfg, world, breakdown_k=max(rank, int(cfg.score.top_k)))
    blocks = layer_block_table(search.result, search.layer_names, queries, top_n, max_blocks)
    qi = names.index(heat_name)
    heat = token_heatmap_table(search.tops[qi], world.queries[qi], rank, search.layer_names, world)
    depth = max(transformer_layer(n) for n in search.layer_names) + 1
    spans = block_layers(depth, max_blocks)
    shares = block_shares(blocks).merge(spans, on="block", how="left")  # which layers each block holds
    nb = int(blocks["block"].max()) + 1
    by_type = shares.groupby(["type", "block"])["share"].mean().unstack("block")
    summary = {
        "queries": len(queries),
        "top_n": top_n,
        "blocks": nb,
        **{f"{t}_peak_block": int(row.to_numpy().argmax()) for t, row in by_type.iterrows()},
        "layers": depth,
        "layers_per_block": per_block(spans["n_layers"].tolist()),
        "depth_reliability": depth_reliability(depth, max_blocks),
    }
    return {
        "layer_blocks": blocks,
        "layer_shares": shares,
        "token_heatmap": heat,
        "_summary": pd.DataFrame([summary]),
        "_metadata": metadata(search, world, top_n=top_n, heatmap_query=heat_name),
    }


STUDY = Study(
    name="layer_wise",
    title="Layer-wise attribution",
    where="§5.3.2, Figs. 4, 17–21",
    order=90,
    run=run,
    options=Options,
    figures=(
        figure(
            "fig17_layerwise",
            layer_figure,
            "layer_blocks",
            "layer_shares",
            caption="Which layer block (bottom → top; the layers each holds under it) carries each query's influence: "
            "the paper finds quotes and facts peaking high, math and code in the middle; with few layers per block "
            "the peak is one layer (see depth_reliability).",
        ),
        figure(
            "fig4_token_heatmap",
            token_heatmap_figure,
            "token_heatmap",
            caption="Layers × tokens influence of one top sequence (rows of 64 tokens): look for a few columns (tokens) "
            "and layers that carry most of the score, the red label marking the most influential position.",
        ),
    ),
    findings=(
        Finding(
            "Quotes and facts peak in upper layers; math and code in middle layers",
            "upper / middle",
            "each type's peak block in the expected third of the layers",
            layer_peaks,
        ),
    ),
    long_tables=frozenset({"layer_blocks", "token_heatmap"}),
)
