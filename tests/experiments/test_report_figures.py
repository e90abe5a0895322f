"""report.md writes each figure's caption under it and opens with what the model knows (`_knowledge`)."""

import matplotlib.pyplot as plt
import pandas as pd

from analysis.figures import captions, draw_figures, figure, per_query
from experiments.report import write_report


def _line(df):
    fig, ax = plt.subplots()
    ax.plot(df["x"], df["y"])
    return fig


def test_captions_and_knowledge_reach_report_md(tmp_path):
    specs = (
        figure("fig_a", _line, "t", caption="Look for the line rising."),
        figure("fig_each", per_query(_line), "t", caption="One per query: look for the same shape."),
    )
    tables = {
        "t": pd.DataFrame({"query": ["p", "p", "q", "q"], "x": [0, 1, 0, 1], "y": [0.0, 1.0, 1.0, 0.0]}),
        "_summary": pd.DataFrame([{"queries": 2}]),
        "_knowledge": pd.DataFrame(
            [
                {"probe": "fact recall (forward)", "value": 0.005, "detail": "1 of 200 facts"},
                {"probe": "quote completion", "value": 0.0, "detail": None},
            ]
        ),
    }
    paths = draw_figures(specs, tables, tmp_path)
    text = write_report(tmp_path, "demo", [], tables, paths, captions=captions(specs, paths)).read_text()
    assert text.index("## What the model knows") < text.index("## Summary")
    assert "- **fact recall (forward)**: 0.005 (1 of 200 facts)" in text
    assert "- **quote completion**: 0" in text
    assert "*Look for the line rising.*" in text
    assert text.count("*One per query: look for the same shape.*") == 1  # once, under the last of its figures
    assert text.index("fig_each_q.png") < text.index("One per query")


def test_a_wide_knowledge_row_is_one_line_per_column(tmp_path):
    tables = {"_knowledge": pd.DataFrame([{"source": "training.json", "fact recall, forward": "0 % of 8 facts"}])}
    text = write_report(tmp_path, "demo", [], tables, []).read_text()
    assert "- **source**: training.json" in text and "- **fact recall, forward**: 0 % of 8 facts" in text


def test_a_report_without_knowledge_or_captions_is_unchanged_in_shape(tmp_path):
    tables = {"_summary": pd.DataFrame([{"queries": 2}])}
    text = write_report(tmp_path, "demo", [], tables, []).read_text()
    assert "What the model knows" not in text and "## Summary" in text
