"""What the model knows of the material the studies ask about, put at the head of every study's report.

A study's finding cannot be read without it: a model that recalls 16 % of its facts and completes 3 of 12 quotes
is not evidence about how a model that knows them generalizes. A model trained here carries the probes in its
`training.json` (`embedded.train.checks`: greedy fact recall forward and flipped, quote completion, cross-lingual
recall, and the documents it has not learned); a checkpoint loaded with `model.path` on the embedded corpus is
probed once, the result cached under `outputs/knowledge/`; a corpus without facts or quotes (local, shards) has
no probe, and the report says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from embedded.prepare import prepare_data
from embedded.train import checks
from influence.storage import atomic_write

log = logging.getLogger(__name__)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s): the model's knowledge is probed again", path, e)
        return None


def probes(cfg: DictConfig, world) -> tuple[dict, str]:
    """The model's probe results and where they come from: its training.json, or probes run now (and cached)."""
    trained = _read(Path(world.model_dir) / "training.json")
    if trained is not None and "facts" in trained:
        return trained, "the model's training.json"
    cached = Path(str(cfg.paths.output_dir)) / "knowledge" / f"{world.name}.json"
    found = _read(cached)
    if found is None:
        if cfg.data.get("path"):  # a local corpus or shards: no generated facts or quotes to ask about
            return {}, "no probe: the corpus has no generated facts or quotes"
        found = checks(world.model, prepare_data(cfg, tokenizer=world.tokenizer))
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda tmp: Path(tmp).write_text(json.dumps(found, indent=2)))
    return found, "probed for this run (cached in outputs/knowledge/)"


def _share(value, n=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * float(value):.0f} %" + ("" if n is None else f" of {n}")


def knowledge_lines(report: dict, source: str) -> dict[str, str]:
    """{probe: what the model did} from a probe report (the layout of `training.json`)."""
    lines = {"source": source}
    facts = report.get("facts") or {}
    if facts:
        n = facts.get("n_facts")
        lines["fact recall, forward"] = _share(facts.get("forward_accuracy"), f"{n} facts" if n else None)
        lines["fact recall, flipped (facts stated in both orders)"] = _share(
            facts.get("flipped_accuracy_stated_both_orders")
        )
        lines["fact recall, flipped (facts stated forward only)"] = _share(
            facts.get("flipped_accuracy_stated_forward_only")
        )
    quotes = report.get("quotes") or {}
    if quotes:
        done = [q for q, ok in (quotes.get("by_quote") or {}).items() if ok]
        lines["quotes completed verbatim"] = f"{quotes.get('memorized')} of {quotes.get('total')}" + (
            f" ({', '.join(done)})" if done else ""
        )
    for group, label in (
        ("stated_in_all_languages", "stated in every language"),
        ("stated_in_english_only", "stated in English only"),
    ):
        g = (report.get("cross_lingual_facts") or {}).get(group) or {}
        langs = [k for k in g if k != "n_facts"]
        if langs:
            lines[f"cross-lingual recall, facts {label}"] = ", ".join(f"{k} {_share(g[k])}" for k in langs) + (
                f" ({g['n_facts']} facts)" if "n_facts" in g else ""
            )
    if "heldout_loss" in report:
        drop = report.get("heldout_loss_drop_last_20pct")
        lines["held-out loss"] = f"{report['heldout_loss']:.3f} nats/token" + (
            f" (fell {100 * drop:.1f} % over the last fifth of training)" if drop is not None else ""
        )
    docs = report.get("doc_losses") or {}
    if "unlearned_count" in docs:
        lines["training documents not learned"] = (
            f"{docs['unlearned_count']} of {docs.get('docs_scored')} above {docs.get('unlearned_threshold')} "
            f"nats/token (median document {docs.get('overall', {}).get('q50')})"
        )
    return lines


def model_knowledge(cfg: DictConfig, world) -> pd.DataFrame:
    """`_knowledge`: one row, {probe: result}, for the report's "What the model knows" section."""
    report, source = probes(cfg, world)
    return pd.DataFrame([knowledge_lines(report, source)])
