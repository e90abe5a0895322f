"""Pairwise influence scores: queries × training sequences, with layer-wise (Eq. 30) and token-wise (Eq. 31) views.

I(z_m) = −Σ_ℓ ⟨(G_ℓ+λ_ℓI)⁻¹ ∇_ℓ f, ∇_ℓ L(z_m)⟩ with f = the task's measurement (log p(completion|prompt)
for language models) and L the summed training loss with true labels. No 1/N factor: f(θ_ε) − f(θ) ≈ ε·I
when z_m is added with weight ε. Token t's share is −g_tᵀ Q̃_ℓ ā_t, so token-wise scores need no per-token
gradient copies, and sum exactly to the sequence score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .batching import num_rows, pad_positions
from .capture import check_finite, eval_mode, frozen_parameters, sequence_gradients
from .curvature import Curvature
from .errors import InfluenceError
from .gradients import query_gradients
from .lowrank import LowRank, low_rank_queries
from .passes import capture_batches, resolve_device

SCALE_CONVENTION = (
    "I = -grad f^T (G + lambda I)^-1 grad L(z_m), no 1/N: f(theta_eps) - f(theta) ~= eps * I "
    "for z_m added with weight eps (eps = 1/N for one copy); positive = z_m raises f"
)


@dataclass
class InfluenceScores:
    """Scores of Q queries on N training sequences (rows `indices` of the training data)."""

    scores: torch.Tensor  # (Q, N)
    indices: torch.Tensor  # (N,) training-set rows
    layer_names: list[str]
    layer_scores: torch.Tensor | None = None  # (Q, N, L), sums over L to `scores`
    token_scores: torch.Tensor | None = None  # (Q, N, L, T), sums over (L, T) to `scores`
    metadata: dict = field(default_factory=dict)

    @property
    def token_totals(self) -> torch.Tensor:
        """(Q, N, T): token-wise influence summed over layers."""
        if self.token_scores is None:
            raise InfluenceError("token-wise scores were not computed: pass per_token=True")
        return self.token_scores.sum(2)


def precondition_queries(model, task, curvature: Curvature, queries: dict) -> dict[str, torch.Tensor]:
    """(G_ℓ + λ_ℓ I)⁻¹ ∇_ℓ f for every query at once: (Q, P, M+1) per layer."""
    with eval_mode(model), frozen_parameters(model):
        grads = query_gradients(model, task, curvature.layers, queries)
    pre = curvature.ihvp(grads)
    for name, t in pre.items():
        check_finite(t, f"the preconditioned query gradient of layer {name}")
    return pre


def score_captured(pre: dict[str, torch.Tensor], a: dict, ds: dict, layer_names: list[str], per_token: bool = False):
    """Scores of one captured batch: (B, Q, L) per layer, and (B, Q, L, T) per token if asked."""
    per_layer, per_tok = [], []
    for name in layer_names:
        q = pre[name].to(a[name].dtype)
        if isinstance(q, LowRank):  # −Σ_k (Ds_t·u_k)(ā_t·v_k): never densified
            t = -(
                torch.einsum("btp,qpr->bqtr", ds[name], q.left) * torch.einsum("btm,qmr->bqtr", a[name], q.right)
            ).sum(-1)
            per_layer.append(t.sum(-1))
            if per_token:
                per_tok.append(t)
        elif per_token:
            t = -torch.einsum("qpm,btm,btp->bqt", q, a[name], ds[name])
            per_tok.append(t)
            per_layer.append(t.sum(-1))
        else:
            dw = sequence_gradients(a[name], ds[name])
            per_layer.append((dw.flatten(1) @ q.flatten(1).T).neg_())  # negate the (B, Q) result, not the (B, P·M) dw
    layer = torch.stack(per_layer, -1)
    return layer, (torch.stack(per_tok, 2) if per_token else None)


def compute_scores(
    model,
    task,
    curvature: Curvature,
    queries: dict,
    data: dict[str, torch.Tensor],
    batch_size: int = 16,
    indices: torch.Tensor | None = None,
    per_layer: bool = False,
    per_token: bool = False,
    device=None,
    progress=None,
    query_rank: int | None = None,
) -> InfluenceScores:
    """Score every query against the training rows `indices` (default: all) in one pass over them."""
    num_rows(data)
    task.check_batch(data)
    dev = resolve_device(model, device)
    pre = low_rank_queries(
        precondition_queries(model, task, curvature, {k: v.to(dev) for k, v in queries.items()}), query_rank
    )
    names = [l.name for l in curvature.layers]
    width = next(iter(data.values())).shape[1] if per_token else 0
    layer_chunks, token_chunks, rows = [], [], []
    for sel, _, a, ds in capture_batches(model, task, curvature.layers, data, batch_size, indices, dev):
        layer, tok = score_captured(pre, a, ds, names, per_token)
        check_finite(layer, f"the scores of training rows {int(sel[0])}..{int(sel[-1])}")
        layer_chunks.append(layer.cpu())
        if tok is not None:
            token_chunks.append(pad_positions(tok.cpu(), width))
        rows.append(sel)
        if progress is not None:
            progress(len(sel))
    layer_all = torch.cat(layer_chunks).permute(1, 0, 2)  # (Q, N, L)
    return InfluenceScores(
        scores=layer_all.sum(-1),
        indices=torch.cat(rows),
        layer_names=names,
        layer_scores=layer_all if per_layer or per_token else None,
        token_scores=torch.cat(token_chunks).permute(1, 0, 2, 3) if per_token else None,
        metadata={
            **curvature.describe(),
            "scale_convention": SCALE_CONVENTION,
            "query_rank": "full" if query_rank is None else str(query_rank),
        },
    )
