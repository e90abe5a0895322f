"""Hooks that record, for each tracked layer, its input ā (with the homogeneous 1) and dScalar/ds of its output.

Everything the estimator needs is built from these two tensors: per-sequence gradients
DW = Σ_t Ds_t ā_tᵀ, the Kronecker factors, and token-wise scores. Parameter gradients are
never formed, so a capture pass costs a forward and an activation-only backward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import InfluenceError
from .modules import TrackedLayer
from .precision import widen


def homogeneous(a: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """Append the constant-1 coordinate that folds the bias into the weight matrix."""
    if not has_bias:
        return a
    return torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)


def _as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, M) inputs of non-sequence models become one-token sequences (B, 1, M)."""
    return t.unsqueeze(1) if t.dim() == 2 else t


class LayerCapture:
    """Context manager: records tracked layers' inputs on forward; `output_grads(scalar)` returns their Ds."""

    def __init__(self, layers: list[TrackedLayer]):
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, layer: TrackedLayer):
        def hook(module, args, output):
            if layer.name in self.inputs:
                raise InfluenceError(
                    f"layer {layer.name} ran twice in one forward pass: shared modules cannot be tracked"
                )
            # under autocast a layer may see bf16/fp16 inputs: captures are kept in float32 at least
            self.inputs[layer.name] = homogeneous(_as_tokens(widen(args[0].detach())), layer.has_bias)
            if not output.requires_grad:  # parameters frozen: start the graph here
                output.requires_grad_()
            self._outputs[layer.name] = output

        return hook

    def __enter__(self) -> "LayerCapture":
        self._handles = [l.module.register_forward_hook(self._hook(l)) for l in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def output_grads(
        self, scalar: torch.Tensor, retain_graph: bool = False, grad_outputs=None
    ) -> dict[str, torch.Tensor]:
        """d scalar / d s for each tracked layer's output s, shaped (B, T, P); with `grad_outputs` g, the
        vector-Jacobian product gᵀ d`scalar`/ds (`scalar` is then a tensor such as the model's outputs)."""
        names = [l.name for l in self.layers if l.name in self._outputs]
        missing = [l.name for l in self.layers if l.name not in self._outputs]
        if missing:
            raise InfluenceError(f"tracked layers {missing} did not run in the forward pass: check the module patterns")
        outs = [self._outputs[n] for n in names]
        grads = torch.autograd.grad(
            scalar, outs, grad_outputs=grad_outputs, allow_unused=True, retain_graph=retain_graph
        )
        result = {}
        for n, o, g in zip(names, outs, grads):
            result[n] = _as_tokens(widen(torch.zeros_like(o) if g is None else g))
        self._outputs.clear()
        return result


@contextlib.contextmanager
def frozen_parameters(model: nn.Module):
    """Turn off parameter gradients while capturing: autograd then skips every weight-gradient matmul."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Influence is evaluated at the trained function: dropout off, restored afterwards."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def sequence_gradients(a: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """Per-sequence gradient matrices DW_b = Σ_t Ds_bt ā_btᵀ, shape (B, P, M+1)."""
    return torch.einsum("btp,btm->bpm", ds, a)


def check_finite(t: torch.Tensor, what: str) -> None:
    """One reduction instead of an elementwise scan: a sum is finite iff every element is (barring overflow)."""
    if not torch.isfinite(t.sum()):
        raise InfluenceError(
            f"non-finite values (NaN/Inf) in {what}: check the model weights and inputs (or lower the learning rate that produced them)"
        )
