"""The Bregman term's divergences: each task's own `Task.bregman`, and the fused softmax KL the PBRF's chunks use.

The plain divergences live on the tasks (`influence.tasks`: ½‖h − h_s‖² for squared error, the cancellation-free
`softmax_kl` for softmax cross-entropy). `SoftmaxKL` is the same KL with its gradient formed in the forward
pass, for the Bregman rows that every evaluation of the objective revisits.
"""

from __future__ import annotations

import torch

from ..tasks import Task, softmax_kl

#: the divergences the PBRF knows (`Task.divergence`)
DIVERGENCES = ("squared_error", "softmax_kl")

__all__ = ["DIVERGENCES", "SoftmaxKL", "bregman_divergence", "softmax_kl"]


def bregman_divergence(task: Task, outputs: torch.Tensor, reference: torch.Tensor, batch: dict) -> torch.Tensor:
    """Σ over rows of D(h, h_s), `reference` = the original model's outputs h_s: the task's `bregman`."""
    return task.bregman(outputs, reference, batch)


class SoftmaxKL(torch.autograd.Function):
    """Σ_rows KL(p_s ‖ softmax(z)) with its gradient softmax(z) − p_s formed in the forward pass.

    Same cancellation-free value as `softmax_kl`, and the gradient in the same spirit: with δ centred under
    p_s, e = expm1(δ) and S = Σ p_s e, softmax(z) − p_s = p_s (e − S)/(1 + S). A handful of passes over the
    (rows, vocabulary) tensors instead of autograd's chain of them: these dominate a small LM's evaluation."""

    @staticmethod
    def forward(ctx, z, z_s, p_s):
        d = z - z_s
        d -= torch.einsum("nv,nv->n", p_s, d).unsqueeze(-1)
        e = torch.expm1(d)
        s = torch.einsum("nv,nv->n", p_s, e).unsqueeze(-1)
        kl = torch.log1p(torch.einsum("nv,nv->n", p_s, e - d)).sum()
        ctx.save_for_backward(e.sub_(s).mul_(p_s).div_(1 + s))
        return kl

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None
