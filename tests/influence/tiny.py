"""Tiny causal LMs and data built inside the tests (random init, no downloads)."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM


def neox(vocab=32, hidden=8, inter=16, layers=2, heads=2, ctx=32, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=ctx,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attn_implementation="sdpa",
    )
    return GPTNeoXForCausalLM(cfg).to(dtype).eval()


def gpt2(vocab=32, hidden=8, layers=2, heads=2, ctx=32, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=ctx,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def token_data(n, length, vocab=32, seed=0, ragged=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if ragged:
        for i in range(n):
            keep = int(torch.randint(2, length + 1, (1,), generator=g))
            mask[i, keep:] = 0
            ids[i, keep:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def query_batch(n, prompt_len, comp_len, vocab=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = prompt_len + comp_len
    ids = torch.randint(0, vocab, (n, t), generator=g)
    comp = torch.zeros(n, t, dtype=torch.long)
    comp[:, prompt_len:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones(n, t, dtype=torch.long), "completion_mask": comp}


def layer_grads(layers, scalar) -> dict:
    """Plain autograd of `scalar` per tracked layer, in the library's (P, M+1) layout: the independent reference the
    score checks compare the capture path with."""
    params = [p for l in layers for p in l.parameters()]
    g = torch.autograd.grad(scalar, params)
    out, k = {}, 0
    for l in layers:
        n = len(l.parameters())
        out[l.name] = l.from_parameter_grads(list(g[k : k + n]))
        k += n
    return out
