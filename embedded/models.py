"""The model of the embedded world, and any local Hugging Face causal LM: built, loaded, planned, counted.

Each fact about a model (its architecture table, its context length, its non-embedding parameter count)
is defined once here, on the model, the way nanoGPT's `GPT.get_num_params` is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import get_method
from omegaconf import DictConfig
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

from influence.errors import InfluenceError

from .tokenizer import load_tokenizer

#: model-config keys that make the architecture (part of a trained model's fingerprint)
ARCH_KEYS = ("arch", "n_layer", "n_embd", "n_head", "max_length")


def build_gpt2(n_layer: int, n_embd: int, n_head: int, max_length: int, vocab_size: int, eos_id: int):
    """GPT-2 (`arch: gpt2`), tied embeddings, without dropout."""
    config = GPT2Config(
        n_positions=max_length,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        vocab_size=vocab_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)


def build_gpt_neox(n_layer: int, n_embd: int, n_head: int, max_length: int, vocab_size: int, eos_id: int):
    """GPT-NeoX (`arch: gpt_neox`), untied output embedding, MLP width 4 n_embd, without dropout."""
    config = GPTNeoXConfig(
        max_position_embeddings=max_length,
        hidden_size=n_embd,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        intermediate_size=4 * n_embd,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        vocab_size=vocab_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPTNeoXForCausalLM(config)


def build_model(mcfg: DictConfig, vocab_size: int, eos_id: int, seed: int):
    """A randomly initialised causal LM without dropout (influence assumes a deterministic loss), from the builder
    `model._target_` names: `embedded.models.build_<arch>` in conf/model, so a new architecture is one builder here.

    The builder takes the architecture keys (ARCH_KEYS but `arch`) and the vocabulary; the model it returns must be
    of Hugging Face model type `model.arch`, the name that keys the trained model's cache.
    """
    torch.manual_seed(seed)
    if "_target_" not in mcfg:
        raise InfluenceError(
            f"the model config has no _target_: name the builder of model.arch={mcfg.arch} "
            f"(embedded.models.build_{mcfg.arch}, as conf/model does)"
        )
    try:
        builder = get_method(str(mcfg._target_))
    except Exception as e:  # noqa: BLE001 - hydra reports a missing module or attribute in several ways
        raise InfluenceError(
            f"model.arch={mcfg.arch} is not known: model._target_={mcfg._target_} names no builder "
            "(embedded/models.py has build_gpt2 and build_gpt_neox)"
        ) from e
    model = builder(**{k: mcfg[k] for k in ARCH_KEYS if k != "arch"}, vocab_size=vocab_size, eos_id=eos_id)
    if model.config.model_type != mcfg.arch:
        raise InfluenceError(
            f"model._target_={mcfg._target_} builds a {model.config.model_type} model, but model.arch="
            f"{mcfg.arch}: set model.arch to the builder's architecture (it keys the model cache)"
        )
    return model


def non_embedding_params(model) -> int:
    """Parameters outside the token and position embeddings and an untied output embedding (the scale axis)."""
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    emb |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def load_checkpoint(path: str):
    """A local HF causal LM and its tokenizer, in eval mode, float32, on CPU."""
    p = Path(path).expanduser()
    if not (p / "config.json").exists():
        raise InfluenceError(
            f"model.path={path} has no config.json: point it at a saved Hugging Face causal LM directory"
        )
    try:
        AutoConfig.from_pretrained(str(p))
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise InfluenceError(
            f"model.path={path} does not hold a causal LM that transformers can load: {str(e).splitlines()[0]}"
        ) from e
    try:
        tok = load_tokenizer(str(p))
    except (ValueError, OSError) as e:
        raise InfluenceError(
            f"model.path={path} has no tokenizer: save one beside the model with tokenizer.save_pretrained"
        ) from e
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
                raise InfluenceError(
                    f"model.path={cfg.model.path} has no config.json: point it at a saved Hugging Face model directory"
                )
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(p)))
        return build_model(cfg.model, int(cfg.data.vocab_size), 0, int(cfg.seed))
