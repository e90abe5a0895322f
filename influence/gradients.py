"""One forward/backward over a batch, returning every tracked layer's ā (B,T,M+1) and Ds (B,T,P).

Three objectives share this pass: the training loss with sampled labels (fitting), with the
true tokens (training gradients to score), and the measurement f (query gradients).

`expand_answer_tokens` splits a language-model query batch's measurement f = Σ_t log p(x_t | x_<t) over its
completion tokens: one row per token t, the same input with a completion mask keeping t alone. f is linear in
the per-token terms, so each row's gradient is ∇ log p(x_t | x_<t), they sum to the query's ∇f, and their
influence scores sum to the query's (Σ_t I_t = I), whatever the curvature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import LayerCapture, check_finite
from .errors import InfluenceError
from .modules import TrackedLayer
from .tasks import Task

OBJECTIVES = ("sampled", "true", "measurement")


def capture_pass(
    model,
    task: Task,
    layers: list[TrackedLayer],
    batch: dict,
    objective: str,
    indices: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    if objective not in OBJECTIVES:
        raise InfluenceError(f"unknown objective {objective!r}: one of {OBJECTIVES}")
    with torch.enable_grad(), LayerCapture(layers) as cap:
        outputs = task.forward(model, batch)
        if objective == "measurement":
            scalar = task.measurement(outputs, batch)
        else:
            if objective == "sampled":
                labels, g = task.sampled_loss_output_grad(outputs, batch, indices, seed)
            else:
                labels, g = None, task.loss_output_grad(outputs, batch)
            if g is not None:  # closed-form loss gradient: backpropagate it from the outputs
                check_finite(g, "the training loss gradient of this batch")
                return cap.inputs, cap.output_grads(outputs, grad_outputs=g)
            scalar = task.loss(outputs, batch, labels)
        check_finite(
            scalar.detach(), f"the {'measurement' if objective == 'measurement' else 'training loss'} of this batch"
        )
        grads = cap.output_grads(scalar)
    return cap.inputs, grads


def query_gradients(model, task: Task, layers: list[TrackedLayer], queries: dict) -> dict[str, torch.Tensor]:
    """∇_θℓ f for each query (rows of `queries`), per layer, shaped (Q, P, M+1)."""
    a, ds = capture_pass(model, task, layers, queries, "measurement")
    out = {}
    for l in layers:
        g = torch.einsum("btp,btm->bpm", ds[l.name], a[l.name])
        check_finite(g, f"the query gradient of layer {l.name}")
        out[l.name] = g
    return out


@dataclass(frozen=True)
class AnswerTokens:
    """An encoded query batch's completions split into their tokens: row r measures one token of one query."""

    batch: dict[str, torch.Tensor]  # (R, T) each query's tensors repeated, completion_mask keeping one token per row
    query: torch.Tensor  # (R,) the query (row of the encoded batch) whose token row r measures
    position: torch.Tensor  # (R,) the token's index in its completion: 0 is the answer's first token
    offset: torch.Tensor  # (R,) its column in the input (log p(x_offset | x_<offset) is the row's measurement)
    token_id: torch.Tensor  # (R,) the token
    num_queries: int

    @property
    def width(self) -> int:
        """T_c: the longest completion, in tokens."""
        return int(self.position.max()) + 1

    @property
    def mask(self) -> torch.Tensor:
        """(Q, T_c) bool: True where query q has an answer token at position t."""
        return self.fold(torch.ones(len(self.query), dtype=torch.bool), False)

    @property
    def token_ids(self) -> torch.Tensor:
        """(Q, T_c) each query's answer tokens, −1 past the end of its completion."""
        return self.fold(self.token_id, -1)

    def fold(self, rows: torch.Tensor, fill=0.0) -> torch.Tensor:
        """Per-row values (R, ...) as (Q, T_c, ...), `fill` past the end of each completion (0: sums stay sums)."""
        if rows.shape[0] != len(self.query):
            raise InfluenceError(f"{rows.shape[0]} values for {len(self.query)} answer-token rows: pass one per row")
        out = rows.new_full((self.num_queries, self.width, *rows.shape[1:]), fill)
        out[self.query.to(rows.device), self.position.to(rows.device)] = rows
        return out


def expand_answer_tokens(queries: dict[str, torch.Tensor]) -> AnswerTokens:
    """One measurement row per completion token of an encoded query batch (`influence.encode_queries`).

    The tokens are those the measurement reads: columns t ≥ 1 with completion_mask and attention_mask set, so the
    rows' measurements sum to the batch's exactly. Rows come query by query, in token order."""
    missing = [k for k in ("input_ids", "attention_mask", "completion_mask") if k not in queries]
    if missing:
        raise InfluenceError(f"query batch lacks {missing}: encode queries with influence.encode_queries")
    cm, am = queries["completion_mask"].bool(), queries["attention_mask"].bool()
    measured = torch.zeros_like(cm)
    measured[:, 1:] = cm[:, 1:] & am[:, 1:]
    empty = (~measured.any(1)).nonzero().flatten().tolist()
    if empty:
        raise InfluenceError(
            f"query rows {empty} have no measured completion token (completion_mask & attention_mask after column 0): "
            "give every query a completion"
        )
    query, offset = measured.nonzero(as_tuple=True)  # row-major: query by query, tokens in order
    position = (measured.long().cumsum(1) - 1)[query, offset]
    batch = {k: v[query] for k, v in queries.items()}
    keep = torch.zeros_like(queries["completion_mask"][query])
    keep[torch.arange(len(query)), offset] = 1
    batch["completion_mask"] = keep
    ids = queries["input_ids"][query, offset]
    return AnswerTokens(batch, query, position, offset, ids, int(cm.shape[0]))
