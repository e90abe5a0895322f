"""Every study's tables carry what the model knows (fact, quote, cross-lingual recall), from its training.json or
from probes run on a loaded checkpoint."""

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from embedded.world import build_world
from experiments.pipeline import knowledge
from experiments.pipeline.knowledge import knowledge_lines, model_knowledge

REPORT = {
    "facts": {
        "n_facts": 80,
        "forward_accuracy": 0.1625,
        "flipped_accuracy_stated_both_orders": 0.0976,
        "flipped_accuracy_stated_forward_only": 0.0,
    },
    "quotes": {"memorized": 2, "total": 12, "by_quote": {"hamlet": True, "raven": False, "pride": True}},
    "cross_lingual_facts": {"stated_in_all_languages": {"n_facts": 9, "en": 0.7778, "tr": 0.3333, "ko": 0.4444}},
    "heldout_loss": 0.7057,
    "heldout_loss_drop_last_20pct": 0.0426,
}


def test_the_lines_say_each_probe_with_its_denominator():
    lines = knowledge_lines(REPORT, "src")
    assert lines["fact recall, forward"] == "16 % of 80 facts"
    assert lines["fact recall, flipped (facts stated in both orders)"] == "10 %"
    assert lines["fact recall, flipped (facts stated forward only)"] == "0 %"
    assert lines["quotes completed verbatim"] == "2 of 12 (hamlet, pride)"
    assert lines["cross-lingual recall, facts stated in every language"] == "en 78 %, tr 33 %, ko 44 % (9 facts)"
    assert lines["held-out loss"] == "0.706 nats/token (fell 4.3 % over the last fifth of training)"
    assert knowledge_lines({}, "no probe") == {"source": "no probe"}


def test_a_trained_model_reports_its_training_json(tiny_cfg, tiny_world):
    row = model_knowledge(tiny_cfg, tiny_world).iloc[0]
    trained = json.loads((Path(tiny_world.model_dir) / "training.json").read_text())
    assert row["source"] == "the model's training.json"
    assert row["fact recall, forward"].startswith(f"{100 * trained['facts']['forward_accuracy']:.0f} %")
    assert row["quotes completed verbatim"].startswith(f"{trained['quotes']['memorized']} of 12")


def test_a_checkpoint_is_probed_once_then_read_from_the_cache(tiny_cfg, tiny_world, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_world.model_dir, ckpt, ignore=shutil.ignore_patterns("training.json", "doc_losses.csv"))
    cfg = OmegaConf.create(OmegaConf.to_container(tiny_cfg, resolve=True))
    with open_dict(cfg):
        cfg.model.path = str(ckpt)
        cfg.paths.output_dir = str(tmp_path / "out")
    world = build_world(cfg)
    calls = []
    real = knowledge.checks
    monkeypatch.setattr(knowledge, "checks", lambda model, prep: calls.append(1) or real(model, prep))
    first = model_knowledge(cfg, world).iloc[0]
    second = model_knowledge(cfg, world).iloc[0]
    assert len(calls) == 1 and first.to_dict() == second.to_dict()
    assert first["source"].startswith("probed for this run")
    # the same model, so the same recall as its training.json says
    trained = json.loads((Path(tiny_world.model_dir) / "training.json").read_text())
    assert first["fact recall, forward"].startswith(f"{100 * trained['facts']['forward_accuracy']:.0f} %")
    assert (tmp_path / "out" / "knowledge" / f"{world.name}.json").is_file()


def test_a_corpus_without_facts_says_it_has_no_probe(tiny_cfg, tiny_world, tmp_path):
    cfg = OmegaConf.create(OmegaConf.to_container(tiny_cfg, resolve=True))
    with open_dict(cfg):
        cfg.data.path = str(tmp_path / "corpus.txt")
        cfg.paths.output_dir = str(tmp_path / "out")

    class Checkpoint:  # a loaded checkpoint (no training.json) on a local corpus
        model_dir, name = str(tmp_path), "ckpt-x"

    row = model_knowledge(cfg, Checkpoint()).iloc[0].to_dict()
    assert row == {"source": "no probe: the corpus has no generated facts or quotes"}
