"""Gauss–Newton products Jᵀ H J v through autograd: the one definition LiSSA and the exact solve share.

J is the Jacobian of the task's outputs with respect to the tracked layers' parameters (all layers jointly, so
the cross-layer blocks are kept) and H the task's exact output Hessian. Jv comes from the double-backward trick
(a vector-Jacobian product of a vector-Jacobian product), which needs twice-differentiable attention: fused SDPA
kernels are not, so the products run under the MATH kernel. Vectors are flat: the layers' canonical (P, M+1)
layouts (bias folded in) concatenated in layer order.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .capture import frozen_parameters
from .modules import TrackedLayer


def batch_products(model, task, layers: list[TrackedLayer], batch: dict, vecs: torch.Tensor) -> torch.Tensor:
    """Σ_b J_bᵀ H_b J_b v over one batch (not averaged) for the rows v of `vecs` (Q, n): one forward for all Q."""
    params = [p for l in layers for p in l.parameters()]
    out_rows = []
    with frozen_parameters(model), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        for p in params:
            p.requires_grad_(True)
        out = task.forward(model, batch)
        w = torch.zeros_like(out, requires_grad=True)
        jt_w = torch.autograd.grad(out, params, grad_outputs=w, create_graph=True)
        for v in vecs:
            v_params = [t.to(p.dtype) for t, p in zip(split_params(layers, v), params)]
            jv = torch.autograd.grad(jt_w, w, grad_outputs=v_params, retain_graph=True)[0]
            res = torch.autograd.grad(out, params, grad_outputs=task.output_hvp(out, batch, jv), retain_graph=True)
            out_rows.append(join_params(layers, res))
    return torch.stack(out_rows)


def split_params(layers: list[TrackedLayer], flat: torch.Tensor) -> list[torch.Tensor]:
    """A flat vector (canonical layouts concatenated in layer order) as parameter-shaped tensors."""
    out, k = [], 0
    for l in layers:
        size = l.shape[0] * l.shape[1]
        out += l.to_parameter_grads(flat[k : k + size].reshape(l.shape))
        k += size
    return out


def join_params(layers: list[TrackedLayer], grads) -> torch.Tensor:
    """Parameter-shaped tensors (layer order) as one flat vector of canonical layouts."""
    out, k = [], 0
    for l in layers:
        n = len(l.parameters())
        out.append(l.from_parameter_grads(list(grads[k : k + n])).reshape(-1))
        k += n
    return torch.cat(out)


def flatten(layers: list[TrackedLayer], vec: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-layer canonical tensors (P, M+1) as one flat vector, in layer order."""
    return torch.cat([vec[l.name].reshape(-1) for l in layers])


def unflatten(layers: list[TrackedLayer], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, k = {}, 0
    for l in layers:
        size = l.shape[0] * l.shape[1]
        out[l.name] = flat[k : k + size].reshape(l.shape)
        k += size
    return out


def gauss_newton_product(model, task, layers, batch, vec: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(1/B) Σ_b J_bᵀ H_b J_b v on one batch, v and the result per layer in canonical (P, M+1) layout."""
    n = next(iter(batch.values())).shape[0]
    return unflatten(layers, batch_products(model, task, layers, batch, flatten(layers, vec)[None])[0] / n)
