"""Layer-wise influence (Figs. 17–21) and the layers × tokens heatmap (Fig. 4).

Each query's top sequences (by the scan) with their influence split over layer blocks: the scan keeps
the layer-wise split of every score, so no second pass is needed. The heatmap re-scores one sequence
at full rank per token.
"""
from __future__ import annotations

import pandas as pd

from analysis.layers import block_shares
from influence import InfluenceError

from ..pipeline.stages import metadata, search_stage, select_queries
from ..pipeline.tables import layer_block_table, token_heatmap_table
from . import register


@register("layer_wise")
def run(cfg, world) -> dict[str, pd.DataFrame]:
    opts = cfg.get("layerwise") or {}
    top_n, max_blocks = int(opts.get("top_n", 500)), int(opts.get("blocks", 9))
    queries = select_queries(world, "layerwise", opts.get("queries"))
    heat_name = opts.get("heatmap_query") or queries[0].name
    names = [q.name for q in world.queries]
    if heat_name not in names:
        raise InfluenceError(f"layerwise.heatmap_query={heat_name!r} is not a query of this run: choose from {names}")
    rank = int(opts.get("heatmap_rank", 1))
    search = search_stage(cfg, world, breakdown_k=max(rank, int(cfg.score.top_k)))
    blocks = layer_block_table(search.result, search.layer_names, queries, top_n, max_blocks)
    qi = names.index(heat_name)
    heat = token_heatmap_table(search.tops[qi], world.queries[qi], rank, search.layer_names, world)
    shares = block_shares(blocks)
    nb = int(blocks["block"].max()) + 1
    by_type = shares.groupby(["type", "block"])["share"].mean().unstack("block")
    summary = {"queries": len(queries), "top_n": top_n, "blocks": nb,
               **{f"{t}_peak_block": int(row.to_numpy().argmax()) for t, row in by_type.iterrows()}}
    return {"layer_blocks": blocks, "layer_shares": shares, "token_heatmap": heat,
            "_summary": pd.DataFrame([summary]), "_metadata": metadata(search, world, top_n=top_n, heatmap_query=heat_name)}
