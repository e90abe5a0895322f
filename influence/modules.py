"""Which layers carry influence: MLP linear layers by default, found per architecture.

A tracked layer is an affine map s = W a + b. Its gradient is kept in one canonical
layout, a (P, M+1) matrix [dW | db] with the bias as the homogeneous coordinate
(P outputs, M inputs), whatever the module stores: `nn.Linear` keeps W as (P, M),
GPT-2's `Conv1D` keeps it as (M, P) and is handled without rewriting the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InfluenceError

# MLP projections per architecture (name suffixes), checked in order.
MLP_PATTERNS: tuple[str, ...] = (
    r"mlp\.c_fc$",
    r"mlp\.c_proj$",  # GPT-2 (Conv1D)
    r"mlp\.dense_h_to_4h$",
    r"mlp\.dense_4h_to_h$",  # GPT-NeoX / Pythia
    r"mlp\.(gate_proj|up_proj|down_proj)$",  # Llama, Mistral, Qwen
    r"mlp\.(fc1|fc2|fc_in|fc_out)$",  # OPT-like, GPT-J
)
ATTENTION_PATTERNS: tuple[str, ...] = (
    r"attn\.c_attn$",
    r"attn\.c_proj$",  # GPT-2
    r"attention\.(query_key_value|dense)$",  # GPT-NeoX
    r"self_attn\.(q_proj|k_proj|v_proj|o_proj)$",  # Llama
)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' Conv1D without importing transformers at module load.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def is_affine(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


@dataclass(frozen=True)
class TrackedLayer:
    """A handle on one affine module and the canonical (P, M+1) view of its parameters."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return _is_conv1d(self.module)

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    @property
    def out_features(self) -> int:
        w = self.module.weight
        return w.shape[1] if self.transposed else w.shape[0]

    @property
    def in_features(self) -> int:
        w = self.module.weight
        return w.shape[0] if self.transposed else w.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(P, M+1) with bias, (P, M) without."""
        return self.out_features, self.in_features + int(self.has_bias)

    def parameters(self) -> list[nn.Parameter]:
        return [self.module.weight] + ([self.module.bias] if self.has_bias else [])

    def weight_matrix(self) -> torch.Tensor:
        """The parameters in canonical layout [W | b], shape (P, M+1)."""
        w = self.module.weight.t() if self.transposed else self.module.weight
        if self.has_bias:
            w = torch.cat([w, self.module.bias.unsqueeze(1)], dim=1)
        return w

    def to_parameter_grads(self, mat: torch.Tensor) -> list[torch.Tensor]:
        """Split a canonical (P, M+1) matrix back into [weight-shaped, bias-shaped] tensors."""
        m = self.in_features
        w = mat[:, :m]
        out = [w.t() if self.transposed else w]
        if self.has_bias:
            out.append(mat[:, m])
        return out

    def from_parameter_grads(self, grads: list[torch.Tensor]) -> torch.Tensor:
        w = grads[0].t() if self.transposed else grads[0]
        if self.has_bias:
            w = torch.cat([w, grads[1].unsqueeze(1)], dim=1)
        return w


def find_tracked_layers(
    model: nn.Module,
    patterns: list[str] | tuple[str, ...] | None = None,
    include_attention: bool = False,
) -> list[TrackedLayer]:
    """The affine modules whose names match `patterns` (default: the MLP projections), in model order."""
    pats = list(patterns) if patterns else list(MLP_PATTERNS)
    if include_attention:
        pats += list(ATTENTION_PATTERNS)
    try:
        compiled = [re.compile(p) for p in pats]
    except re.error as e:
        raise InfluenceError(f"bad module-name pattern in {pats}: {e}") from None
    layers = [
        TrackedLayer(name, mod)
        for name, mod in model.named_modules()
        if name and is_affine(mod) and any(c.search(name) for c in compiled)
    ]
    if not layers:
        kinds = sorted({type(m).__name__ for m in model.modules() if is_affine(m)})
        raise InfluenceError(
            f"no module of {type(model).__name__} matches {pats}: the model has no MLP linear layers we know; "
            f"pass module-name patterns (affine module types present: {kinds or 'none'})"
        )
    return layers
