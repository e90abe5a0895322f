"""The figures of issue 21 read right: the sparsity fits are optima (or marked failed, and not drawn), listings
head each query with its prompt and completion and draw Korean, the Fig. 4 heatmap stays readable for long
sequences, Fig. 16 plots the headline's median, and the layer-wise figure says how many layers a block holds."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.figures import CJK_FONTS, captions, draw_figures, figure, save
from analysis.layers import block_layers, depth_reliability, layer_figure, token_heatmap_figure
from analysis.listings import listing_figure, listings_html
from analysis.scale import cross_lingual_trend
from analysis.sparsity import ccdf_figure, dominated, fit_tail, sparsity_tables, tail


def _pareto_tail_sample(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.pareto(1.5, 20_000) + 1) * 3000


def test_gev_refit_is_no_worse_than_the_gumbel_it_nests():
    scores = _pareto_tail_sample()
    x, _ = tail(scores, 500)
    naive = stats.genextreme.logpdf(x, *stats.genextreme.fit(x)).sum()
    gumbel = stats.gumbel_r.logpdf(x, *stats.gumbel_r.fit(x)).sum()
    assert naive < gumbel - 100  # scipy's own start fails on this sample: the case the refit is for
    fits = fit_tail(scores, 500).set_index("distribution")
    assert fits.loc["gev", "loglik"] >= fits.loc["gumbel", "loglik"]
    assert fits.loc["exp_weibull", "loglik"] >= fits.loc["weibull", "loglik"] - 1e-6 * abs(
        fits.loc["weibull", "loglik"]
    )
    assert bool(fits.loc["gev", "fit_ok"]) and fits.loc["gev", "note"] == ""
    assert fits["fit_ok"].all()


def test_a_dominated_fit_is_marked_and_not_drawn():
    assert dominated(-5000.0, -4000.0) and not dominated(-3999.0, -4000.0) and not dominated(-1.0, -np.inf)
    scores = pd.DataFrame({"query": "q", "score": _pareto_tail_sample(1)})
    fits, table = sparsity_tables(scores, 500)
    assert "failed_fits" in table and table["failed_fits"].iloc[0] == ""
    fits.loc[fits["distribution"] == "gev", "fit_ok"] = False  # as a failed fit would be marked
    fig = ccdf_figure(scores, fits, table)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1 + 3  # the data and three drawn laws: the failed GEV is left out
    assert "not drawn (failed fit): gev" in ax.get_title()
    lo, hi = ax.get_ylim()
    assert lo >= 0.5 / 500 * 0.99 and hi <= 2  # the data's CCDF range, not a fitted law's far tail
    assert all(not ax.get_legend() for ax in fig.axes)  # one legend for the figure, below the panels
    assert fig.legends


def _tokens(query: str, prompt: str, completion: str, words: list[str]) -> pd.DataFrame:
    rows = [
        {
            "query": query,
            "rank": 1,
            "sequence_id": 7,
            "score": 3.0,
            "category": "prose",
            "spurious": False,
            "position": i,
            "token": w,
            "token_score": float(i % 3 - 1),
            "prompt": prompt,
            "completion": completion,
        }
        for i, w in enumerate(words)
    ]
    return pd.DataFrame(rows)


def test_listings_show_the_query_prompt_and_completion():
    t = _tokens(
        "water_ko", "사람: 물을 마셔야 하는 이유는?\n\n어시스턴트:", " 몸을 시원하게 합니다.", ["물", "은", " good"]
    )
    page = listings_html(t)
    assert "사람: 물을 마셔야 하는 이유는?" in page and "몸을 시원하게 합니다." in page
    assert "Noto Sans CJK KR" in page  # the CSS font stack falls back to a CJK font
    fig = listing_figure(t)
    texts = [x.get_text() for x in fig.axes[0].texts]
    assert any("prompt:" in s and "사람" in s for s in texts)
    assert any("completion:" in s and "몸을" in s for s in texts)
    old = listing_figure(t.drop(columns=["prompt", "completion"]))  # a table from before the columns: no heading
    assert not any("prompt:" in x.get_text() for x in old.axes[0].texts)


@pytest.mark.skipif(not CJK_FONTS, reason="no Noto CJK font installed (Debian fonts-noto-cjk)")
def test_korean_renders_without_missing_glyphs(tmp_path):
    t = _tokens("water_ko", "물을 마셔야 하는 이유", " 시원하게", ["물", "은", "시원"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save(listing_figure(t), tmp_path / "ko")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert (tmp_path / "ko.png").stat().st_size > 0


def _heatmap(n_tokens: int, layers: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        [
            {
                "query": "q",
                "rank": 1,
                "sequence_id": 3,
                "layer": f"h.{l}.mlp",
                "position": p,
                "token": f"t{p}",
                "score": float(rng.normal() + (5.0 if p == n_tokens - 10 else 0.0)),
            }
            for l in range(layers)
            for p in range(n_tokens)
        ]
    )


def test_heatmap_of_a_long_sequence_is_wrapped_to_a_readable_width():
    fig = token_heatmap_figure(_heatmap(256))
    width_px = fig.get_size_inches()[0] * 150  # the saved dpi
    assert width_px <= 1800
    panels = [ax for ax in fig.axes if ax.get_xticklabels() and ax.get_ylabel() == "layer (module)"]
    assert len(panels) == 4 and all(len(ax.get_xticks()) <= 64 for ax in panels)
    assert "positions" not in fig._suptitle.get_text()  # all 256 shown
    longer = token_heatmap_figure(_heatmap(400))
    assert longer.get_size_inches()[0] * 150 <= 1800
    assert "positions 144–399 of 400" in longer._suptitle.get_text()  # the window around the top token (390)


def test_fig16_plots_the_median_and_says_so():
    rows = []
    for size, order, params in (("s", 0, 1e5), ("m", 1, 1e6)):
        for q, v in (("a", 0.0), ("b", 0.1), ("c", 10.0)):  # the mean (3.37) is far from the median (0.1)
            rows.append(
                {
                    "size": size,
                    "size_order": order,
                    "params": params,
                    "seed": 0,
                    "query": q,
                    "language": "ko",
                    "ratio": v,
                }
            )
    fig = cross_lingual_trend(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert "median" in ax.get_ylabel()
    black = [ln for ln in ax.get_lines() if ln.get_color() == "black" and len(ln.get_ydata()) == 2]
    assert black and np.allclose(black[0].get_ydata(), 0.1)


def test_layer_blocks_say_how_many_layers_they_hold():
    spans = block_layers(4, 9)
    assert spans["n_layers"].tolist() == [1, 1, 1, 1] and spans["layers"].tolist() == ["0", "1", "2", "3"]
    assert block_layers(12, 4)["layers"].tolist() == ["0–2", "3–5", "6–8", "9–11"]
    assert depth_reliability(4).startswith("low") and not depth_reliability(24).startswith("low")
    blocks = pd.DataFrame(
        [
            {"query": q, "type": t, "rank": 1, "row": 0, "block": b, "influence": float(b + 1)}
            for q, t in (("q1", "fact"), ("q2", "math"))
            for b in range(4)
        ]
    )
    shares = blocks.merge(spans, on="block")
    fig = layer_figure(blocks, shares)
    labels = [x.get_text() for x in fig.axes[0].get_xticklabels()]
    assert labels[0] == "0\nL0"
    assert any("one layer each" in t.get_text() for t in fig.texts)


def test_captions_follow_their_figures(tmp_path):
    specs = (figure("fig_x", lambda df: plt.figure(), "t", caption="look here"),)
    paths = draw_figures(specs, {"t": pd.DataFrame({"a": [1]})}, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    assert set(captions(specs, paths).values()) == {"look here"}


def test_without_a_cjk_font_korean_draws_with_a_warning_at_most(monkeypatch, tmp_path):
    import analysis.fonts as fonts

    monkeypatch.setattr(fonts, "_installed", lambda families: [])
    monkeypatch.setattr(fonts.font_manager, "findSystemFonts", lambda *a, **k: [])
    try:
        assert fonts.use_font_fallback() == []
        assert list(plt.rcParams["font.family"]) == ["DejaVu Sans"] and fonts.mono_families() == ["DejaVu Sans Mono"]
        t = _tokens("water_ko", "물을 마셔야 하는 이유", " 시원하게", ["물", "은"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths = save(listing_figure(t), tmp_path / "ko")
        assert all(p.stat().st_size > 0 for p in paths)
    finally:
        monkeypatch.undo()
        fonts.use_font_fallback()
