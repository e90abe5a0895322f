"""Every preset composes; each study runs end to end on the tiny world; W&B offline logs what it should."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from experiments import run as runner
from influence import InfluenceError

from .conftest import CONF, TINY_QUERIES, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF).iterdir() if g.is_dir()}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_names_a_registered_study(preset):
    from experiments.studies import STUDIES

    cfg = compose_cfg(f"experiment={preset}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.study in STUDIES or (preset == "paper" and cfg.study == "paper")  # paper runs the others
    assert (Path(CONF) / "experiment" / f"{preset}.yaml").read_text().startswith("# @package _global_")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_lists_exactly_its_studys_options_with_their_defaults(preset):
    """The options dataclass is the one source of defaults; the preset lists every field (so that `<study>.<key>=`
    overrides need no `+`) with the same value, and nothing else: a misspelt key would be caught here."""
    from dataclasses import asdict, fields

    from experiments.paper import PaperOptions
    from experiments.studies import NoOptions, get_study

    schema = PaperOptions if preset == "paper" else get_study(preset).options
    cfg = compose_cfg(f"experiment={preset}")
    if schema is NoOptions:
        assert cfg.get(preset) is None
        return
    block = OmegaConf.to_container(cfg[preset], resolve=True)
    assert list(block) == [f.name for f in fields(schema)], f"conf/experiment/{preset}.yaml: list the fields in order"
    assert block == asdict(schema()), (
        f"conf/experiment/{preset}.yaml: a value differs from {schema.__qualname__}'s default"
    )
    assert all(f.metadata.get("help") for f in fields(schema)), f"{schema.__qualname__}: give every field a help text"


def test_a_misspelt_or_invalid_option_fails_in_one_line_before_any_work():
    from experiments.studies import get_study

    cfg = compose_cfg("experiment=sparsity")
    with open_dict(cfg):
        cfg.sparsity.tial = 10
    with pytest.raises(InfluenceError, match=r"sparsity has no option\(s\) \['tial'\]: valid options are .*'tail'"):
        runner.main(cfg)  # before the world is built: the tiny world's paths are not even configured here
    for override, message in [
        ("accuracy.pbrf.tol=abc", r"accuracy\.pbrf\.tol: .*Float"),
        ("+accuracy.pbrf.tols=1", r"accuracy\.pbrf\.tols: Key 'tols'"),
        ("accuracy.tasks=[lm,cifar]", r"unknown task\(s\) \['cifar'\]"),
        ("+accuracy.tabular.diabetes.hiden=3", r"accuracy\.tabular\.diabetes: no setting\(s\) \['hiden'\]"),
    ]:
        study = override.lstrip("+").split(".")[0]
        with pytest.raises(InfluenceError, match=message) as e:
            get_study(study).read_options(compose_cfg(f"experiment={study}", override))
        assert "\n" not in str(e.value)


def test_studies_are_discovered_and_self_described():
    """Each module of experiments/studies ends with `STUDY = Study(...)`: the paper's sections, their order and their
    figures and findings come from there."""
    import pkgutil

    import experiments.studies as studies
    from experiments.studies import STUDIES, paper_studies

    modules = {m.name for m in pkgutil.iter_modules(studies.__path__) if not m.name.startswith("_")} - {"registry"}
    assert set(STUDIES) == modules
    assert set(PRESETS) == modules | {"paper"}  # one preset per study
    order = [s.name for s in paper_studies()]
    assert order[:3] == ["query_rank", "tfidf_vs_unfiltered", "accuracy"] and order[-1] == "role_play"
    assert "top_influences" not in order  # a study with no place in the paper
    assert {s.name for s in paper_studies() if s.sweep} == {
        "abstraction",
        "math_code",
        "cross_lingual",
        "word_order",
        "role_play",
    }
    for study in STUDIES.values():
        assert study.title and (study.where or study.order is None)
        stems = [f.stem for f in study.figures]
        assert all(f.tables for f in study.figures) and len(set(zip(stems, [f.draw for f in study.figures]))) == len(
            stems
        )


def test_every_group_option_composes():
    for group, options in GROUPS.items():
        if group == "experiment":
            continue
        for option in options:
            cfg = compose_cfg(f"{group}={option}")
            assert cfg[group] is not None


def test_unknown_experiment_key_or_model_fail_listing_what_exists():
    with pytest.raises(ConfigCompositionException, match=r"(?s)sparsty.*Available options.*sparsity"):
        compose_cfg("experiment=sparsty")
    with pytest.raises(ConfigCompositionException, match=r"(?s)Available options.*xs"):
        compose_cfg("model=xxl")
    with pytest.raises(ConfigCompositionException, match="tial"):
        compose_cfg("experiment=sparsity", "sparsity.tial=10")
    from experiments.studies import get_study

    with pytest.raises(InfluenceError, match="choose one of .*memorization"):
        get_study("memorisation")


def _run(tiny_cfg, preset: str, **overrides):
    cfg = compose_cfg(f"experiment={preset}", *_tiny_overrides(tiny_cfg))
    with open_dict(cfg):
        for k, v in overrides.items():
            OmegaConf.update(cfg, k, v)
    return runner.main(cfg), Path(cfg.paths.output_dir) / "runs" / "latest"


def _tiny_overrides(tiny_cfg):
    return [
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={tiny_cfg.paths.output_dir}",
        "score.num_threads=1",
        "logger=none",
    ]


def test_sparsity_study_fits_every_law_and_writes_table1_and_fig8(tiny_cfg, tiny_world):
    tables, run_dir = _run(tiny_cfg, "sparsity", **{"sparsity.tail": 100, "sparsity.queries": ["shutdown", "water"]})
    t, fits = tables["sparsity"], tables["sparsity_fits"]
    assert list(t["query"]) == ["shutdown", "water"]
    assert set(fits["distribution"]) == {
        "power_law",
        "exponential",
        "weibull",
        "exp_weibull",
        "rayleigh",
        "gumbel",
        "gev",
    }
    assert (fits["n_tail"] == 100).all() and fits["ks_p"].between(0, 1).all()
    # the power-law α is the closed-form MLE on the tail: 1 + n / Σ log(x / x_min)
    s = tables["scores"]
    x = np.sort(s[s["query"] == "shutdown"]["score"].to_numpy())[-100:]
    assert t.iloc[0]["alpha"] == pytest.approx(1 + 100 / np.log(x / x.min()).sum(), rel=1e-6)
    assert (run_dir / "figures" / "fig8_sparsity_ccdf.png").stat().st_size > 5000
    report = (run_dir / "report.md").read_text()
    assert "## Table `sparsity`" in report and "figures/fig8_sparsity_ccdf.png" in report
    with pytest.raises(InfluenceError, match="at least 100"):
        _run(tiny_cfg, "sparsity", **{"sparsity.tail": 50})


def test_concentration_study(tiny_cfg, tiny_world):
    tables, run_dir = _run(tiny_cfg, "concentration")
    c = tables["concentration"]
    for _, g in c.groupby("query"):
        assert g["share"].is_monotonic_increasing and g["share"].iloc[-1] == pytest.approx(1.0)
    n = tiny_world.train.input_ids.shape[0]
    assert (c[c["top_fraction"] == 0.01]["num_sequences"] == round(0.01 * n)).all()
    assert (run_dir / "figures" / "fig9_concentration.pdf").exists()


def test_layer_wise_study_reads_the_scans_layer_split(tiny_cfg, tiny_world):
    tables, run_dir = _run(
        tiny_cfg, "layer_wise", **{"layer_wise.top_n": 20, "layer_wise.heatmap_query": "quote_hamlet"}
    )
    b = tables["layer_blocks"]
    assert b["block"].nunique() == 2  # the tiny model has 2 layers: min(9, 2) blocks
    # the block sums of a top sequence add up to its scan score
    from experiments.pipeline.stages import search_stage

    res = search_stage(compose_cfg(*_tiny_overrides(tiny_cfg)), tiny_world).result
    qi = res.query_names.index("water")
    top = b[(b["query"] == "water") & (b["rank"] == 1)]
    assert top["influence"].sum() == pytest.approx(float(res.scores[qi].max()), rel=1e-4)
    assert (b.groupby("query")["rank"].max() == 20).all()
    shares = tables["layer_shares"]
    assert shares.groupby("query")["share"].sum().round(6).eq(1.0).all()
    heat = tables["token_heatmap"]
    assert heat["layer"].nunique() == 4 and (heat["query"] == "quote_hamlet").all()
    top_hamlet = float(res.scores[res.query_names.index("quote_hamlet")].max())
    assert heat["score"].sum() == pytest.approx(top_hamlet, rel=1e-3)  # the whole grid sums to the influence
    assert (run_dir / "figures" / "fig17_layerwise.png").exists() and (
        run_dir / "figures" / "fig4_token_heatmap.png"
    ).exists()


def test_memorization_study_finds_where_the_passage_is(tiny_cfg, tiny_world):
    tables, run_dir = _run(tiny_cfg, "memorization", **{"memorization.top_k": 5})
    m, summary = tables["memorization"], tables["memorization_summary"]
    assert set(m["query"]) == {"quote_hamlet"} and len(m) == 5
    q = next(q for q in tiny_world.queries if q.name == "quote_hamlet")
    passage = " ".join((q.prompt + q.completion).split())
    for _, r in m.iterrows():  # the flag and offset say exactly where the passage is
        text = " ".join(r["text"].split())
        assert r["contains_passage"] == (passage in text)
        if r["contains_passage"]:
            assert text[r["char_offset"] :].startswith(passage)
    copies = sum(passage in " ".join(t.split()) for t in tiny_world.train.texts)
    assert summary.iloc[0]["copies_in_corpus"] == copies > 0
    html = (run_dir / "figures" / "top_sequences.html").read_text()
    assert html.count("class='seq'") == 5 and "rgba(" in html
    assert (run_dir / "figures" / "fig22_memorization.png").exists()
    assert (run_dir / "figures" / "top_sequences_quote_hamlet.png").exists()


def _wandb_records(run_dir: Path) -> bytes:
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    return files[0].read_bytes()


def test_wandb_offline_logs_figures_tables_config_and_summary(tiny_cfg, tiny_world):
    tables, run_dir = _run(
        tiny_cfg,
        "concentration",
        **{
            "logger": OmegaConf.create(
                {
                    "_target_": "experiments.tracking.WandbTracker",
                    "name": "wandb",
                    "project": "test",
                    "entity": None,
                    "mode": "offline",
                    "group": None,
                    "tags": [],
                    "max_table_rows": 1000,
                }
            )
        },
    )
    files = next((run_dir / "wandb").glob("offline-run-*")) / "files" / "media"
    assert list(files.glob("images/figures/fig9_concentration*.png"))
    logged = list(files.glob("table/tables/concentration*.table.json"))
    assert logged
    import json

    t = json.loads(logged[0].read_text())
    assert len(t["data"]) == len(tables["concentration"]) and "share" in t["columns"]
    records = _wandb_records(run_dir)
    for key in (b"share_top_0.01_median", b"concentration", b"gpt2-tiny", b"max_sequences"):
        assert key in records  # summary metric, group/job type, model, config


def test_a_wandb_failure_warns_and_keeps_the_results(tiny_cfg, tiny_world, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(RuntimeWarning, match="wandb logging failed.*results are kept"):
        tables, run_dir = _run(
            tiny_cfg,
            "concentration",
            **{
                "logger": OmegaConf.create(
                    {"_target_": "experiments.tracking.WandbTracker", "name": "wandb", "mode": "online"}
                )
            },
        )
    assert (run_dir / "concentration.parquet").exists() and (run_dir / "report.md").exists()


@pytest.mark.slow  # ~20 s of Hydra multirun jobs with W&B (make test-slow)
def test_a_multirun_sweep_runs_each_value_in_one_wandb_group(tiny_cfg, tiny_world, tmp_path):
    """`-m` sweeps run every value; the runs of one sweep share a W&B group."""
    out = tiny_cfg.paths.output_dir
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "-m",
        "experiment=concentration",
        "model=tiny",
        "data=tiny",
        "queries=tiny",
        TINY_QUERIES,
        f"paths.output_dir={out}",
        "score.num_threads=1",
        "score.max_sequences=100,200",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert len(runs) == 2
    groups = set()
    for r, n in zip(runs, (100, 200)):
        c = pd.read_parquet(r / "concentration.parquet")
        assert (c["num_candidates"] == n).all()
        assert (r / ".hydra" / "config.yaml").exists() and (r / "report.md").exists()
        groups.add(re.search(rb"concentration-sweep", _wandb_records(r)) is not None)
    assert groups == {True}
    bad = subprocess.run(
        cmd[:4] + ["experiment=concentration", "model=huge,tiny", f"hydra.sweep.dir={tmp_path}/bad"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "huge" in bad.stderr and "Available options" in bad.stderr
