"""Pairwise influence scores: queries × training sequences, with layer-wise (Eq. 30) and token-wise (Eq. 31) views.

I(z_m) = −Σ_ℓ ⟨(G_ℓ+λ_ℓI)⁻¹ ∇_ℓ f, ∇_ℓ L(z_m)⟩ with f = the task's measurement (log p(completion|prompt)
for language models) and L the summed training loss with true labels. No 1/N factor: f(θ_ε) − f(θ) ≈ ε·I
when z_m is added with weight ε. Token t's share is −g_tᵀ Q̃_ℓ ā_t, so token-wise scores need no per-token
gradient copies, and sum exactly to the sequence score.

`normalize="unit"` divides every score by ‖∇f_q‖_M·‖∇L(z_m)‖_M, with ‖x‖²_M = Σ_ℓ ⟨x_ℓ, (G_ℓ+λ_ℓI)⁻¹ x_ℓ⟩ from the
curvature's own `ihvp`: the cosine in the preconditioned space (TrackStar, RelatIF), in [−1, 1] with I's sign. They
find that a few sequences of high gradient norm dominate unnormalized rankings; the cosine ranks by direction.
Layer- and token-wise scores are divided by the same two totals, so they still sum to the sequence score. It needs
`ihvp` on every candidate's gradient, so only curvatures with `batched_ihvp` (not LiSSA) offer it.

`per_answer_token=True` splits each query's score over its completion tokens: f = Σ_t log p(x_t | x_<t), so
I = Σ_t I_t with I_t = −∇ log p(x_t | x_<t)ᵀ (G+λI)⁻¹ ∇L(z_m), exactly, for every curvature (the ihvp is linear).
Each token is one more measurement row (`influence.gradients.expand_answer_tokens`: the same input, the completion
mask keeping that token), preconditioned like a query (R = Σ_q T_c rows: the query pass and the stored
preconditioned gradients grow with the completions' length; the candidates are captured once for both). Under
`normalize="unit"` every I_t is divided by the FULL query's norm ‖∇f_q‖_M (and the candidate's), so the normalized
I_t still sum to the normalized I; they are shares of a cosine, not cosines of their own. Full-rank queries only:
a rank-r approximation of each token's gradient would not sum to the query's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .arguments import check_normalize
from .batching import num_rows, pad_positions
from .capture import check_finite, eval_mode, frozen_parameters, sequence_gradients
from .curvature import CURVATURES, Curvature
from .errors import InfluenceError
from .gradients import AnswerTokens, expand_answer_tokens, query_gradients
from .lowrank import LowRank, densify_for_batch, low_rank_queries
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
    answer_token_scores: torch.Tensor | None = None  # (Q, N, T_c) per completion token, sums over T_c to `scores`
    answer_tokens: AnswerTokens | None = None  # which token each T_c column is: `.token_ids`, `.mask` (Q, T_c)

    @property
    def token_totals(self) -> torch.Tensor:
        """(Q, N, T): token-wise influence summed over layers."""
        if self.token_scores is None:
            raise InfluenceError("token-wise scores were not computed: pass per_token=True")
        return self.token_scores.sum(2)


def check_normalization(normalize, curvature: Curvature) -> None:
    """Refuse a bad `normalize`, or "unit" with a curvature that cannot apply its ihvp to every candidate cheaply."""
    check_normalize(normalize)
    if normalize == "unit" and not curvature.batched_ihvp:
        cheap = sorted(n for n, c in CURVATURES.items() if c.batched_ihvp)
        raise InfluenceError(
            f"normalize='unit' needs (G+λI)⁻¹ of every candidate's gradient, and curvature {curvature.name!r} solves "
            f"one vector at a time (far too slow for a training set): use one of {cheap}, or normalize='none'"
        )


def metric_norms(pre: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """(R,) ‖x_r‖_M = sqrt(Σ_ℓ ⟨x_rℓ, (G_ℓ+λ_ℓI)⁻¹ x_rℓ⟩) per row r, from x (`grads`) and its ihvp (`pre`), in float64."""
    total = sum(torch.einsum("rk,rk->r", pre[n].flatten(1).double(), grads[n].flatten(1).double()) for n in grads)
    return total.clamp_min(0).sqrt()  # ≥ 0 for a positive definite M; the clamp absorbs rounding only


def _query_pass(model, task, curvature: Curvature, queries: dict):
    """(∇f, (G + λI)⁻¹∇f) of every query, each (Q, P, M+1) per layer."""
    with eval_mode(model), frozen_parameters(model):
        grads = query_gradients(model, task, curvature.layers, queries)
    pre = curvature.ihvp(grads)
    for name, t in pre.items():
        check_finite(t, f"the preconditioned query gradient of layer {name}")
    return grads, pre


def precondition_queries(model, task, curvature: Curvature, queries: dict) -> dict[str, torch.Tensor]:
    """(G_ℓ + λ_ℓ I)⁻¹ ∇_ℓ f for every query at once: (Q, P, M+1) per layer."""
    return _query_pass(model, task, curvature, queries)[1]


def preconditioned_with_norms(model, task, curvature: Curvature, queries: dict, normalize: str = "none"):
    """(precondition_queries' result, (Q,) ‖∇f_q‖_M for normalize="unit" else None), from one query pass."""
    grads, pre = _query_pass(model, task, curvature, queries)
    return pre, (metric_norms(pre, grads) if normalize == "unit" else None)


def query_norms(model, task, curvature: Curvature, queries: dict, pre: dict[str, torch.Tensor]) -> torch.Tensor:
    """(Q,) ‖∇f_q‖_M from the queries' full-rank preconditioned gradients `pre` (computed before, e.g. by a caller)."""
    with eval_mode(model), frozen_parameters(model):
        grads = query_gradients(model, task, curvature.layers, queries)
    return metric_norms({k: v.to(grads[k].device) for k, v in pre.items()}, grads)


def candidate_norms(curvature: Curvature, a: dict, ds: dict) -> torch.Tensor:
    """(B,) ‖∇L(z_b)‖_M of a captured batch: its per-sequence gradients (true labels) and their ihvp."""
    dw = {l.name: sequence_gradients(a[l.name], ds[l.name]) for l in curvature.layers}
    return metric_norms(curvature.ihvp(dw), dw)


def unit_scaled(scores: torch.Tensor, query_norm: torch.Tensor, candidate_norm: torch.Tensor) -> torch.Tensor:
    """Scores (B, Q, ...) divided by candidate_norm[b]·query_norm[q]; 0 where a norm is 0 (the score is 0 there)."""
    inv_m, inv_q = (torch.where(n > 0, 1 / n, 0.0).to(scores) for n in (candidate_norm, query_norm))
    shape = (1,) * (scores.dim() - 2)
    return scores * inv_m.view(-1, 1, *shape) * inv_q.view(1, -1, *shape)


def score_captured(pre: dict[str, torch.Tensor], a: dict, ds: dict, layer_names: list[str], per_token: bool = False):
    """Scores of one captured batch: (B, Q, L) per layer, and (B, Q, L, T) per token if asked."""
    per_layer, per_tok = [], []
    for name in layer_names:
        q = pre[name].to(a[name].dtype)
        if isinstance(q, LowRank) and not per_token and densify_for_batch(q, *a[name].shape[:2]):
            q = q.dense()  # this layer's queries, dense for this batch only: cheaper here than the factored form
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


def score_batch(
    pre, a: dict, ds: dict, curvature: Curvature, query_norm=None, per_token: bool = False, candidate_norm=None
):
    """`score_captured` over the curvature's layers; unit-normalized when the queries' norms (Q,) are given (by the
    batch's `candidate_norm` (B,) when given, else computed here)."""
    layer, tok = score_captured(pre, a, ds, [l.name for l in curvature.layers], per_token)
    if query_norm is None:
        return layer, tok
    m = candidate_norm if candidate_norm is not None else candidate_norms(curvature, a, ds)
    return unit_scaled(layer, query_norm, m), (None if tok is None else unit_scaled(tok, query_norm, m))


def answer_token_queries(model, task, curvature: Curvature, queries: dict, query_norm=None):
    """(AnswerTokens of `queries`, each row's (G+λI)⁻¹∇ log p(x_t | x_<t) (R, P, M+1) per layer, and (R,) the FULL
    query's ‖∇f_q‖_M per row when the queries' norms `query_norm` (Q,) are given (normalize="unit"), else None)."""
    dev = next(iter(queries.values())).device
    tokens = expand_answer_tokens({k: v.cpu() for k, v in queries.items()})
    pre = precondition_queries(model, task, curvature, {k: v.to(dev) for k, v in tokens.batch.items()})
    norm = None if query_norm is None else query_norm[tokens.query.to(query_norm.device)]
    return tokens, pre, norm


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
    normalize: str = "none",
    per_answer_token: bool = False,
) -> InfluenceScores:
    """Score every query against the training rows `indices` (default: all) in one pass over them.

    `normalize="unit"`: cosine scores I / (‖∇f_q‖_M·‖∇L(z_m)‖_M) (module docstring); the query norms come from the
    full-rank preconditioned gradients, before any `query_rank` reduction. `per_answer_token`: also
    `answer_token_scores` (Q, N, T_c), each query's score split over its completion tokens (module docstring);
    `scores` is unchanged by it."""
    check_normalization(normalize, curvature)
    if per_answer_token and query_rank is not None:
        raise InfluenceError(
            f"per_answer_token=True needs full-rank queries, not query_rank={query_rank}: a rank-r approximation "
            "of each answer token's gradient does not sum to the query's (pass query_rank=None)"
        )
    num_rows(data)
    task.check_batch(data)
    dev = resolve_device(model, device)
    queries = {k: v.to(dev) for k, v in queries.items()}
    full, q_norm = preconditioned_with_norms(model, task, curvature, queries, normalize)
    answer = answer_token_queries(model, task, curvature, queries, q_norm) if per_answer_token else None
    pre = low_rank_queries(full, query_rank)
    width = next(iter(data.values())).shape[1] if per_token else 0
    parts: dict[str, list] = {"layer": [], "token": [], "rows": [], "answer": []}
    for sel, _, a, ds in capture_batches(model, task, curvature.layers, data, batch_size, indices, dev):
        m_norm = candidate_norms(curvature, a, ds) if q_norm is not None else None
        layer, tok = score_batch(pre, a, ds, curvature, q_norm, per_token, m_norm)
        check_finite(layer, f"the scores of training rows {int(sel[0])}..{int(sel[-1])}")
        parts["layer"].append(layer.cpu())
        if tok is not None:
            parts["token"].append(pad_positions(tok.cpu(), width))
        if answer is not None:
            per_row = score_batch(answer[1], a, ds, curvature, answer[2], candidate_norm=m_norm)[0].sum(-1)
            check_finite(per_row, f"the answer-token scores of training rows {int(sel[0])}..{int(sel[-1])}")
            parts["answer"].append(per_row.cpu())
        parts["rows"].append(sel)
        if progress is not None:
            progress(len(sel))
    return _assemble(parts, curvature, answer, per_layer or per_token, per_token, query_rank, normalize)


def _assemble(parts: dict, curvature: Curvature, answer, keep_layers: bool, per_token: bool, query_rank, normalize):
    """`compute_scores`' result from its batches' parts (each batch's (B, Q, L) layer scores, ...)."""
    layer_all = torch.cat(parts["layer"]).permute(1, 0, 2)  # (Q, N, L)
    meta = {
        **curvature.describe(),
        "scale_convention": SCALE_CONVENTION,
        "query_rank": "full" if query_rank is None else str(query_rank),
        "normalize": normalize,
    }
    tokens = None if answer is None else answer[0]
    if tokens is not None:
        meta["answer_tokens"] = "I_t per completion token, summing to I" + (
            " (each divided by the full query's norm)" if normalize == "unit" else ""
        )
    return InfluenceScores(
        scores=layer_all.sum(-1),
        indices=torch.cat(parts["rows"]),
        layer_names=[l.name for l in curvature.layers],
        layer_scores=layer_all if keep_layers else None,
        token_scores=torch.cat(parts["token"]).permute(1, 0, 2, 3) if per_token else None,
        metadata=meta,
        answer_token_scores=None if tokens is None else tokens.fold(torch.cat(parts["answer"]).T).permute(0, 2, 1),
        answer_tokens=tokens,
    )
