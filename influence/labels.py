"""Labels sampled from the model's own predictive distribution, keyed by (seed, sequence index).

Keying by sequence index (not by batch position or call order) makes the covariance pass,
the eigenvalue-correction pass and every process of a distributed run draw identical labels.
Sampling is by inverse CDF: one uniform number per position, no `torch.multinomial`.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _mix(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): well-spread generator seeds for neighbouring indices."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 0x632BE59BD9B4E5B5) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def keyed_uniform(indices: torch.Tensor, length: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """(B, length) uniforms in [0, 1); row b depends only on (seed, indices[b])."""
    g = torch.Generator()
    rows = []
    for i in indices.tolist():
        g.manual_seed(_mix(seed, int(i)))
        rows.append(torch.rand(length, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(dtype) if rows else torch.empty(0, length, dtype=dtype)


def keyed_normal(indices: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(B, *shape) standard normals; row b depends only on (seed, indices[b])."""
    g = torch.Generator()
    rows = []
    for i in indices.tolist():
        g.manual_seed(_mix(seed, int(i)))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float64))
    return torch.stack(rows)


def sample_categorical(logits: torch.Tensor | None, uniforms: torch.Tensor, probs: torch.Tensor | None = None):
    """Inverse-CDF sampling from softmax(logits) over the last axis (or from `probs`, already softmax(logits)),
    one uniform per row."""
    probs = torch.softmax(logits, dim=-1) if probs is None else probs
    cdf = torch.cumsum(probs, dim=-1)
    u = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]  # rescale: cdf[-1] may round below 1
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)
