"""An optional preconditioner of the PBRF's optimizer: (Λ + λ)^(-1/2) in a fitted Kronecker eigenbasis.

It changes only the optimizer's variables (u = M w), which makes an ill-conditioned objective near-spherical:
the objective, its minimizer and the convergence test on the unpreconditioned gradient are unchanged.
"""

from __future__ import annotations

from ..curvature import Curvature
from ..curvature.factors import eigenbasis_ihvp
from ..errors import InfluenceError
from ..modules import TrackedLayer


def eigenbasis_preconditioner(curvature: Curvature, layers: list[TrackedLayer], damping: dict[str, float]):
    """M(ts) = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ)^½] Q_Aᵀ per layer, V the layer's [W | b] block of the parameter list ts,
    from `curvature.eigendecomposition` (EK-FAC or K-FAC); `M.inverse` is M⁻¹."""
    eig = {l.name: curvature.eigendecomposition(l.name) if isinstance(curvature, Curvature) else None for l in layers}
    if any(e is None for e in eig.values()):
        raise InfluenceError("the PBRF preconditioner must be a fitted EK-FAC (or K-FAC) curvature on the same layers")
    blocks = []
    for l in layers:
        q_s, q_a, lam = eig[l.name]
        if lam.shape != l.shape:
            raise InfluenceError(
                f"the PBRF preconditioner's eigenvalues for {l.name} have shape "
                f"{tuple(lam.shape)}, not the layer's {l.shape}: use a fitted EK-FAC"
            )
        blocks.append((l, len(l.parameters()), q_s, q_a, (lam.double() + float(damping[l.name])).sqrt()))

    def apply(ts, power: float = 1.0):
        out, i = [], 0
        for l, k, q_s, q_a, root in blocks:
            mat = l.from_parameter_grads(ts[i : i + k])
            dev = mat.device
            out += l.to_parameter_grads(eigenbasis_ihvp(mat, q_s.to(dev), q_a.to(dev), root.to(dev) ** power))
            i += k
        return [t.contiguous() for t in out]

    apply.inverse = lambda ts: apply(ts, -1.0)  # M⁻¹, to start the optimizer at a given u
    return apply
