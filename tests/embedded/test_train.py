"""Training: sizes, schedule, the recall checks, and memorization of a repeated quote."""

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from embedded import recall
from embedded.corpus.quotes import QUOTES
from embedded.models import build_model, non_embedding_params
from embedded.prepare import prepare_data
from embedded.train import lr_at, train

from ..conftest import compose_cfg


def test_default_sizes_are_roughly_geometric_from_01M_to_5M():
    params = []
    for size in ["xs", "s", "m", "l"]:
        cfg = compose_cfg(f"model={size}")
        params.append(non_embedding_params(build_model(cfg.model, 4096, 0, 0)))
    assert 0.08e6 < params[0] < 0.15e6 and 3e6 < params[-1] < 6e6
    ratios = [b / a for a, b in zip(params, params[1:])]
    assert all(2 < r < 6 for r in ratios), ratios


def test_gpt_neox_architecture_builds():
    cfg = OmegaConf.create(
        {
            "_target_": "embedded.models.build_gpt_neox",
            "arch": "gpt_neox",
            "n_layer": 2,
            "n_embd": 32,
            "n_head": 2,
            "max_length": 64,
        }
    )
    model = build_model(cfg, 100, 0, 0)
    assert type(model).__name__ == "GPTNeoXForCausalLM" and model(torch.zeros(1, 5, dtype=torch.long)).logits.shape == (
        1,
        5,
        100,
    )


def test_lr_schedule_warms_up_then_decays_to_floor():
    t = OmegaConf.create({"lr": 1.0, "warmup": 0.1, "min_lr_ratio": 0.1})
    lrs = [lr_at(s, 100, t) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_greedy_check_agrees_with_generate(tiny_world):
    m, tok = tiny_world.model, tiny_world.tokenizer
    prompts = ["The capital of Velmora is", "Water is composed of", "def binary_search(arr, target):"]
    kept, answers = [], []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        new = m.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)[
            0, ids.shape[1] :
        ].tolist()
        text = tok.decode(new)
        if tok(text, add_special_tokens=False)["input_ids"] == new:  # the check scores the answer's own tokenization
            kept.append(p)
            answers.append(text)
    assert kept
    assert recall.greedy_matches(m, tok, kept, answers) == [True] * len(kept)
    wrong = [a + " zebra" for a in answers]
    assert recall.greedy_matches(m, tok, kept, wrong) == [False] * len(kept)


def test_small_model_memorizes_a_repeated_quote(tmp_path):
    """Train on a tiny corpus in which quotes repeat: the model must then complete one verbatim."""
    cfg = compose_cfg(
        "model=tiny",
        "data=tiny",
        "data.n_docs=20",
        "data.quote_copies=[8,8]",
        "model.n_embd=128",
        "model.n_head=4",
        f"paths.output_dir={tmp_path}",
    )
    prep = prepare_data(cfg)
    model = build_model(cfg.model, len(prep.tokenizer), prep.tokenizer.eos_token_id, 0)
    before = recall.quote_check(model.eval(), prep.tokenizer, QUOTES)["memorized"]
    with open_dict(cfg):
        cfg.model.train.tokens = 400 * 8 * 128
        cfg.model.train.n_evals = 20
        cfg.model.train.eval_docs = 4
    model.train()

    def memorized(m):
        m.eval()
        return recall.quote_check(m, prep.tokenizer, QUOTES)["memorized"] >= 1

    report, _ = train(model, prep, cfg.model.train, int(cfg.data.seq_len), 0, stop_when=memorized)
    after = recall.quote_check(model.eval(), prep.tokenizer, QUOTES)
    assert before == 0 and after["memorized"] >= 1, (report, after)
