"""One forward/backward over a batch, returning every tracked layer's ā (B,T,M+1) and Ds (B,T,P).

Three objectives share this pass: the training loss with sampled labels (fitting), with the
true tokens (training gradients to score), and the measurement f (query gradients).
"""

from __future__ import annotations

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
            labels = task.sample_labels(outputs, batch, indices, seed) if objective == "sampled" else None
            g = task.loss_output_grad(outputs, batch, labels)
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
