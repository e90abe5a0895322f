"""The model of the embedded world, and any Hugging Face causal LM (a local directory or a hub id, which
`embedded.hub` resolves to its cached snapshot): built, loaded, planned, counted.

Each fact about a model (its architecture table, its context length, its non-embedding parameter count)
is defined once here, on the model, the way nanoGPT's `GPT.get_num_params` is.
"""

from __future__ import annotations

import json
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
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from influence.errors import InfluenceError

from .hub import locate
from .tokenizer import load_tokenizer

#: model-config keys that make the architecture (part of a trained model's fingerprint)
ARCH_KEYS = ("arch", "n_layer", "n_embd", "n_head", "max_length")
#: the weight files `save_pretrained` writes (one of them, or a sharded index)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def read_config(path: str):
    """`model.path`'s config.json, read by transformers; a missing directory or file, or one that is not JSON,
    fails in one line naming it."""
    p, where = Path(path).expanduser(), f"model.path={path}"
    f = p / "config.json"
    if not f.is_file():
        why = "" if p.is_dir() else (" (it is not a directory)" if p.exists() else " (the directory does not exist)")
        raise InfluenceError(f"{where} has no config.json{why}: point it at a saved Hugging Face causal LM directory")
    try:
        json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InfluenceError(
            f"{where}: {f} is not valid JSON ({e}): save the model again with save_pretrained"
        ) from None
    try:
        config = AutoConfig.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - transformers raises several types for a config it cannot use
        raise InfluenceError(f"{where}: {f} is not a config transformers can read ({_first_line(e)})") from None
    check_causal(config, where)
    return config


def _causal_classes() -> set[str]:
    names = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


def check_causal(config, where: str) -> None:
    """Refuse a checkpoint that is not a causal LM: `AutoModelForCausalLM` would load a BertForMaskedLM's weights
    into a BertLMHeadModel (bidirectional attention, scores silently wrong) with only a warning."""
    archs = list(getattr(config, "architectures", None) or [])
    bad = [a for a in archs if a not in _causal_classes() and not a.endswith("ForCausalLM")]
    if bad:
        raise InfluenceError(
            f"{where} holds a {bad[0]} (config.json architectures), not a causal LM: "
            "point it at a decoder-only checkpoint (a *ForCausalLM, e.g. GPT2LMHeadModel)"
        )
    if not archs and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InfluenceError(
            f"{where} is a {config.model_type!r} model, which has no causal LM in transformers: "
            "point it at a decoder-only checkpoint (a *ForCausalLM)"
        )


def check_weights(path: str) -> None:
    """A weight file is there and every safetensors file's header covers it: a truncated download fails naming
    its file (transformers' own error names neither the file nor the directory)."""
    p, where = Path(path).expanduser(), f"model.path={path}"
    present = [p / n for n in WEIGHT_FILES if (p / n).is_file()]
    if not present:
        raise InfluenceError(
            f"{where} has no weights (none of {', '.join(WEIGHT_FILES)}): save the model there with save_pretrained"
        )
    files = []
    for f in present:
        if not f.name.endswith(".index.json"):
            files.append(f)
            continue
        try:
            shards = sorted(set(json.loads(f.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise InfluenceError(
                f"{where}: {f} is not a weight index ({_first_line(e)}): save the model again"
            ) from None
        absent = [s for s in shards if not (p / s).is_file()]
        if absent:
            raise InfluenceError(f"{where}: {f.name} lists shards that are missing ({', '.join(absent[:3])})")
        files += [p / s for s in shards]
    from safetensors import safe_open

    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except Exception as e:  # noqa: BLE001 - SafetensorError derives from Exception only
                raise InfluenceError(
                    f"{where}: {f} is truncated or corrupt ({_first_line(e)}): save or download it again"
                ) from None


def check_vocab(model, tokenizer, where: str) -> None:
    """Refuse a tokenizer with ids past the model's embedding rows (an index error mid-scan otherwise)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InfluenceError(
            f"tokenizer in {where} has {len(tokenizer)} tokens but the model embeds only {rows}: "
            "use the tokenizer the model was trained with"
        )


def load_checkpoint(path: str, revision: str | None = None):
    """A HF causal LM and its tokenizer, in eval mode, float32, on CPU: from a local directory, or from a hub id
    at `revision` (its cached snapshot, downloaded when missing and online; see `embedded.hub`).

    Everything is checked at load, each failure one line naming the file: the config (JSON, a causal LM), the
    weights (present, not truncated, covering every parameter: transformers would initialise missing ones at
    random with only a warning), the tokenizer (present, parseable, not empty) and its fit to the embeddings."""
    path = locate(path, revision).path
    where = f"model.path={path}"
    read_config(path)
    check_weights(path)
    p = Path(path).expanduser()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - torch.load and safetensors raise many types for a bad file
        names = ", ".join(n for n in WEIGHT_FILES if (p / n).is_file())
        raise InfluenceError(
            f"{where}: its weights ({names}) cannot be loaded ({_first_line(e)}): save the model again with "
            "save_pretrained"
        ) from None
    lost = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if lost:
        raise InfluenceError(
            f"{where}: its weights lack {len(lost)} parameter(s) its config.json needs ({', '.join(lost[:3])}"
            f"{', ...' if len(lost) > 3 else ''}): the weights and config.json do not match; save the model again"
        )
    model = model.float().eval()
    check_attends_backwards(model, where)
    tok = load_tokenizer(str(p), where=where)
    check_vocab(model, tok, where)
    return model, tok


@torch.no_grad()
def check_attends_backwards(model, where: str) -> None:
    """Refuse a model whose prediction at a position changes with a later token: an encoder loaded through
    `AutoModelForCausalLM` (a BERT config without `architectures` becomes a BertLMHeadModel that still attends
    both ways) would score every query silently wrong. One forward of two 4-token rows."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < 5:
        return
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    # the later token's effect on the earlier positions, against its effect on its own position: exactly 0 (up to
    # rounding) for a causal model, whatever the weights' scale (a small random init moves logits by ~1e-5 only)
    later = float((logits[0, :3] - logits[1, :3]).abs().max())
    own = float((logits[0, 3] - logits[1, 3]).abs().max())
    if own > 0 and later > 1e-5 * own and later > 1e-6 * (1 + float(logits.abs().max())):
        raise InfluenceError(
            f"{where}: its predictions depend on later tokens, so it is not a causal LM ({type(model).__name__} of "
            f"a {model.config.model_type} config): point it at a decoder-only checkpoint"
        )


def context_limit(model) -> int | None:
    """The longest sequence the model takes (GPT-2's n_positions, GPT-NeoX's max_position_embeddings)."""
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)


def meta_model(cfg: DictConfig):
    """The configured model with no storage: from `model.path`'s config.json (a hub id's from its snapshot at
    `model.revision`), or the embedded size's config."""
    config = read_config(locate(str(cfg.model.path), cfg.model.get("revision")).path) if cfg.model.get("path") else None
    with torch.device("meta"):
        if config is not None:
            return AutoModelForCausalLM.from_config(config)
        return build_model(cfg.model, int(cfg.data.vocab_size), 0, int(cfg.seed))
