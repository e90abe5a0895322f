"""The model of the embedded world, and any local Hugging Face causal LM: built, loaded, planned, counted.

Each fact about a model (its architecture table, its context length, its non-embedding parameter count)
is defined once here, on the model, the way nanoGPT's `GPT.get_num_params` is.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import (AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM)

from influence.errors import InfluenceError

from .tokenizer import load_tokenizer

#: model-config keys that make the architecture (part of a trained model's fingerprint)
ARCH_KEYS = ("arch", "n_layer", "n_embd", "n_head", "max_length")


def build_model(mcfg: DictConfig, vocab_size: int, eos_id: int, seed: int):
    """A randomly initialised causal LM (GPT-2 or GPT-NeoX) without dropout: influence assumes a deterministic loss."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if mcfg.arch == "gpt2":
        config = GPT2Config(n_positions=mcfg.max_length, n_embd=mcfg.n_embd, n_layer=mcfg.n_layer, n_head=mcfg.n_head,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
        return GPT2LMHeadModel(config)
    if mcfg.arch == "gpt_neox":
        config = GPTNeoXConfig(max_position_embeddings=mcfg.max_length, hidden_size=mcfg.n_embd, num_hidden_layers=mcfg.n_layer,
                               num_attention_heads=mcfg.n_head, intermediate_size=4 * mcfg.n_embd, hidden_dropout=0.0,
                               attention_dropout=0.0, tie_word_embeddings=False, **common)
        return GPTNeoXForCausalLM(config)
    raise InfluenceError(f"model.arch={mcfg.arch} is not known: use gpt2 or gpt_neox")


def non_embedding_params(model) -> int:
    """Parameters outside the token and position embeddings and an untied output embedding (the scale axis)."""
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    emb |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def load_checkpoint(path: str):
    """A local HF causal LM and its tokenizer, in eval mode, float32, on CPU."""
    p = Path(path).expanduser()
    if not (p / "config.json").exists():
        raise InfluenceError(f"model.path={path} has no config.json: point it at a saved Hugging Face causal LM directory")
    try:
        AutoConfig.from_pretrained(str(p))
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise InfluenceError(f"model.path={path} does not hold a causal LM that transformers can load: {str(e).splitlines()[0]}") from e
    try:
        tok = load_tokenizer(str(p))
    except (ValueError, OSError) as e:
        raise InfluenceError(f"model.path={path} has no tokenizer: save one beside the model with tokenizer.save_pretrained") from e
    return model.float().eval(), tok


def context_limit(model) -> int | None:
    """The longest sequence the model takes (GPT-2's n_positions, GPT-NeoX's max_position_embeddings)."""
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)


def meta_model(cfg: DictConfig):
    """The configured model with no storage: from `model.path`'s config.json, or the embedded size's config."""
    with torch.device("meta"):
        if cfg.model.get("path"):
            p = Path(str(cfg.model.path)).expanduser()
            if not (p / "config.json").exists():
                raise InfluenceError(f"model.path={cfg.model.path} has no config.json: point it at a saved Hugging Face model directory")
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(p)))
        return build_model(cfg.model, int(cfg.data.vocab_size), 0, int(cfg.seed))
