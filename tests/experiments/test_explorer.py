"""The run explorer page: one self-contained HTML page per run directory, an index over runs, and the page working
in a real headless Chromium (system browser, driven by Playwright; skipped where either is missing)."""

import base64
import json
import re
import shutil
import time

import pandas as pd
import pytest

from experiments import explore, explorer
from experiments import run as runner
from influence import InfluenceError

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
NASTY = "</script><b>x</b> & \"quotes\" 'too' <!-- a --> ünïcödé 한국어"


def page_data(page: str) -> dict:
    m = re.search(r"<script type='application/json' id='explorer-data'>(.*?)</script>", page, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))


def no_external_assets(page: str) -> None:
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?(https?:)?//", page), "an asset would need a network"


@pytest.fixture(scope="module")
def tiny_run(tiny_cfg, tiny_world, tiny_output_dir):
    """The default study run end to end on the tiny world (its page and the index written by the runner's hook)."""
    runner.main(tiny_cfg)
    return tiny_output_dir / "runs" / "latest"


def synthetic_run(root, with_tokens=True):
    """A run directory by hand: two queries, two categories, two languages, text that needs escaping."""
    run = root / "runs" / "2026-12-01" / "10-00-00-000001"
    (run / "figures").mkdir(parents=True)
    (run / "status.json").write_text(
        json.dumps({"state": "complete", "study": "top_influences", "started": "2026-12-01T10:00:00"})
    )
    (run / "figures" / "sparsity.png").write_bytes(PNG)
    (run / "figures" / "top_sequences_q1.png").write_bytes(PNG)
    (run / "report.md").write_text(
        "# top_influences\n\nOverrides: `a<b`; see [the listing](figures/top_sequences.html).\n\n## Summary\n\n"
        "- **queries**: 2\n- <script>alert(1)</script>\n\n## Figures\n\n![sparsity](figures/sparsity.png)\n\n"
        "*What to look for: a heavy tail.*\n\n"
        "![top_sequences_q1](figures/top_sequences_q1.png)\n\n| a | b |\n|---|---|\n| x \\| y | 1 |\n",
        encoding="utf-8",
    )
    rows = [
        ("q1", 1, 11, 5.0, "code", "", "def quicksort(xs): return xs"),
        ("q1", 2, 12, 4.0, "prose", "en", "The tortoise won the race."),
        ("q1", 3, 13, 3.0, "multilingual", "ko", NASTY),
        ("q2", 1, 21, 2.0, "prose", "tr", "Kaplumbağa yarışı kazandı."),
    ]
    top = pd.DataFrame(rows, columns=["query", "rank", "sequence_id", "score", "category", "language", "text"])
    top["language"] = top["language"].replace("", None)
    top = top.assign(type="role_play", cosine=0.1, delta_log_p=0.01, loss_per_token=2.5, self_influence=9.0)
    top = top.assign(top_k_queries=1, spurious=[False, True, False, False], topic="literature", layer_0=1.0)
    top.to_parquet(run / "top_influences.parquet", index=False)
    top.to_csv(run / "top_influences.csv", index=False)
    if with_tokens:
        toks = [
            {"query": r[0], "rank": r[1], "sequence_id": r[2], "position": i, "token": w, "token_score": s}
            | {"prompt": f"prompt of {r[0]} <&>", "completion": " the answer"}
            for r in rows
            for i, (w, s) in enumerate(zip(re.findall(r"\S+\s*", r[6]), [1.0, -2.0, 0.5] * 40))
        ]
        pd.DataFrame(toks).to_parquet(run / "top_tokens.parquet", index=False)
    return run


def test_the_runner_writes_a_self_contained_page_and_the_index(tiny_run, tiny_world, tiny_output_dir):
    page = (tiny_run / "explorer.html").read_text(encoding="utf-8")
    no_external_assets(page)
    data = page_data(page)
    assert {q["name"] for q in data["queries"]} == {q.name for q in tiny_world.queries}
    assert {"score", "delta_log_p", "cosine", "loss_per_token", "self_influence", "top_k_queries"} <= set(
        data["diagnostics"]
    )
    top = pd.read_parquet(tiny_run / "top_influences.parquet")
    first = next(q for q in data["queries"] if q["name"] == top.iloc[0]["query"])["rows"][0]
    assert first["text"] == top.iloc[0]["text"] and first["category"] == top.iloc[0]["category"]
    assert first["tokens"] and len(first["tokens"]) == len(first["token_scores"])
    assert "id='report'" in page and "<h2>top_influences</h2>" in page
    index = (tiny_output_dir / "index.html").read_text(encoding="utf-8")
    assert "href='runs/latest/explorer.html'" in index and "top_influences" in index and "complete" in index


def test_a_page_escapes_text_inlines_figures_and_leaves_out_listing_images(tmp_path):
    run = synthetic_run(tmp_path)
    pages = explorer.build(run)
    assert pages == [run / "explorer.html", tmp_path / "index.html"]
    page = pages[0].read_text(encoding="utf-8")
    no_external_assets(page)
    assert NASTY not in page and "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("data:image/png;base64,") == 1  # sparsity.png; the per-query listing image is not inlined
    assert "1 per-query listing image(s) are left out" in page
    assert (
        "<p><i>What to look for: a heavy tail.</i></p>" in page
        and "<td>x | y</td>" in page
        and "<code>a&lt;b</code>" in page
        and "<b>queries</b>" in page
    )
    data = page_data(page)
    q1 = data["queries"][0]
    assert q1["name"] == "q1" and [r["rank"] for r in q1["rows"]] == [1, 2, 3]
    assert q1["prompt"] == "prompt of q1 <&>" and q1["completion"] == " the answer" and q1["type"] == "role_play"
    nasty = q1["rows"][2]
    assert nasty["text"] == NASTY and "".join(nasty["tokens"]) == NASTY and nasty["language"] == "ko"
    assert q1["rows"][1]["spurious"] and q1["rows"][0]["labels"] == {"topic": "literature"}
    assert "layer_0" not in json.dumps(data)


def test_a_run_lacking_tables_still_gets_a_page(tmp_path):
    run = synthetic_run(tmp_path, with_tokens=False)
    data = page_data(explorer.render_page(run))
    assert data["queries"][0]["rows"][0]["tokens"] is None  # plain text, no colouring
    bare = tmp_path / "runs" / "2026-12-01" / "10-00-00-000002"
    bare.mkdir(parents=True)
    (bare / "status.json").write_text(json.dumps({"state": "failed", "study": "sparsity", "error": "boom <x>"}))
    page = explorer.render_page(bare)
    assert page_data(page) == {"queries": [], "diagnostics": {}} and "boom &lt;x&gt;" in page
    assert "no report.md" in page and "id='listing'" not in page
    explorer.write_index(tmp_path)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "failed" in index and "no page: python -m experiments.explore" in index


def test_a_paper_run_page_has_the_scorecard_and_links_its_sections(tmp_path):
    run = tmp_path / "paper"
    (run / "sparsity").mkdir(parents=True)
    (run / "sparsity" / "report.md").write_text("# sparsity\n")
    (run / "report.md").write_text("# paper\n\n![fig](sparsity/figures/missing.png)\n")
    card = pd.DataFrame(
        [
            {"study": "sparsity", "finding": "heavy tail", "measured": "0.9", "reproduced": "yes", "value": 0.9},
            {"study": "sparsity", "finding": "power law", "measured": "0.1", "reproduced": "no", "value": 0.1},
        ]
    )
    card.to_csv(run / "scorecard.csv", index=False)
    pages = explorer.render_run(run)
    assert pages == [run / "sparsity" / "explorer.html", run / "explorer.html"]
    page = pages[1].read_text(encoding="utf-8")
    assert "id='scorecard-table'" in page and "<td class='yes'>yes</td>" in page and "<td class='no'>no</td>" in page
    assert "href='sparsity/explorer.html'" in page and "<a href='sparsity/figures/missing.png'>" in page


def test_bad_input_is_one_line_naming_what_to_fix(tmp_path, capsys):
    with pytest.raises(InfluenceError, match="is not a run directory") as e:
        explorer.build(tmp_path / "nowhere")
    assert "\n" not in str(e.value)
    run = synthetic_run(tmp_path)
    (run / "top_influences.parquet").write_bytes(b"not parquet")
    with pytest.raises(InfluenceError, match=r"cannot read .*top_influences\.parquet.*rerun the study") as e:
        explorer.render_run(run)
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="error: .*not a run directory"):
        explore.main([str(tmp_path / "nowhere")])


def test_explore_rebuilds_every_run_of_an_output_directory(tmp_path, capsys):
    run = synthetic_run(tmp_path)
    explore.main([str(tmp_path)])
    assert (run / "explorer.html").exists() and (tmp_path / "index.html").exists()
    assert "1 run page(s) written" in capsys.readouterr().out


def _browser_or_skip():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it where apt works)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    return exe, sync_api


@pytest.mark.browser
def test_the_page_works_in_headless_chromium(tiny_run, tmp_path):
    exe, sync_api = _browser_or_skip()
    t0 = time.perf_counter()
    synthetic = explorer.render_run(synthetic_run(tmp_path))[-1]
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            # the tiny run's own page: loads clean, the first query's listing shows with coloured tokens
            page.goto((tiny_run / "explorer.html").as_uri())
            cards = page.locator("#listing .card")
            assert cards.count() > 0 and page.locator("#listing .card .tok").count() > 0
            assert "rgba(" in page.locator("#listing .card .tok").first.get_attribute("style")
            # the hand-made run: filters and search change what is shown
            page.goto(synthetic.as_uri())
            assert page.locator("#report img").count() == 1  # the figure inline
            assert page.locator("#count").text_content() == "3 of 3 sequences shown"
            assert page.locator("#query-info").text_content() == "prompt: prompt of q1 <&>\ncompletion:  the answer"
            assert page.locator("#listing .card").first.locator(".meta").text_content().startswith("#1")
            page.select_option("#category", "prose")
            assert page.locator("#listing .card").count() == 1
            assert "tortoise" in page.locator("#listing").text_content()
            page.select_option("#category", "*")
            page.select_option("#language", "ko")
            assert page.locator("#listing .card").count() == 1 and NASTY in page.locator("#listing").text_content()
            page.select_option("#language", "*")
            page.fill("#search", "QUICKSORT")
            assert page.locator("#count").text_content() == "1 of 3 sequences shown"
            page.fill("#search", "")
            page.select_option("#query", "all")
            assert page.locator("#listing .card").count() == 4
            page.fill("#search", "kazandı")
            assert page.locator("#listing .card").count() == 1
            assert page.locator(".spurious").count() == 0  # the spurious row is filtered out now
        finally:
            browser.close()
    assert not errors, errors
    assert time.perf_counter() - t0 < 20
