"""The proximal Bregman response function (PBRF, Bae et al. 2022; paper Eq. 7): the ground truth that
influence estimators approximate (spec §1.1, §5).

For a training example z_m and weight ε, θ(ε) minimizes the proximal Bregman objective

    J_ε(θ) = (1/B) Σ_i D(h(θ, x_i), h(θs, x_i)) + ε·L(z_m, θ) + Σ_ℓ λ_ℓ/2 ‖θ_ℓ − θs_ℓ‖²

over the tracked layers' weights and biases (everything else held fixed), from θs. D is the
Bregman divergence of the task's loss to the original model's outputs: ½‖h − h_s‖² for squared
error, KL(p_s ‖ p_θ) for softmax cross-entropy (summed over loss-bearing tokens for sequences).
Its Hessian at θs is the Gauss–Newton G fitted on the same rows, and λ_ℓ is the estimators' own
per-layer damping, so (G + λI)⁻¹ is the very operator the estimators approximate.

Sign and scale: the PBRF score is the central difference (f(θ(+ε)) − f(θ(−ε)))/(2ε) ≈ df/dε, with
+ε·L meaning z_m is ADDED with weight ε. Since dθ/dε = −(G+λI)⁻¹∇L (Eq. 9), df/dε = −∇fᵀ(G+λI)⁻¹∇L:
exactly the library's convention (`influence.scoring.SCALE_CONVENTION`: no 1/N, positive = adding z_m
raises f), so the PBRF and `compute_scores` agree in sign and scale and correlate positively when
they agree.

Optimization: on w = (θ − θs)/(ε‖∇L(z_m)‖) with the objective divided by (ε‖∇L(z_m)‖)², so the iterate
is O(1) whatever ε and z_m, and Adam's step size (or L-BFGS's line-search tolerances) mean the same
thing for every problem. Converged means the gradient norm
fell to `tol` × its value at θs (‖∇L(z_m)‖); Adam's step size is halved whenever the gradient norm
has not improved for `patience` steps. Not converging within `max_steps` raises InfluenceError, or with
`on_failure="record"` is recorded (`grad_norm`, `converged`) and the scores of that row are still the
central difference at the last iterate: a caller that records must check `converged` before trusting them.

The package: `divergence` (the fused softmax KL; each task's own divergence is `Task.bregman`), `objective`
(the objective of one row and the Bregman rows in chunks), `solvers` (Adam, L-BFGS), `preconditioner` (the
optional EK-FAC preconditioner) and `scores` (the driver, `pbrf_scores`, configured by `PBRFArguments`).

Cost: a solve takes hundreds to thousands of evaluations of J and its gradient, each a forward and backward
pass over the Bregman rows. Those rows are batched by length and trimmed of all-padding columns, and the
softmax KL's value and gradient come from one fused pass with the original model's p_s cached, which on a
small LM (vocabulary-wide tensors dominate) is ~3.3x cheaper in float64 than autograd through the padded
batches (`bench/bench_pbrf.py`).
"""

from __future__ import annotations

from ..arguments import OPTIMIZERS, PBRFArguments
from .divergence import bregman_divergence
from .objective import per_row_measurement, working_copy
from .scores import PBRFResult, pbrf_scores

__all__ = [
    "OPTIMIZERS",
    "PBRFArguments",
    "PBRFResult",
    "bregman_divergence",
    "pbrf_scores",
    "per_row_measurement",
    "working_copy",
]
