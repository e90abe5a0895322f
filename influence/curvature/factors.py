"""Kronecker factors A = E_tok[ā āᵀ], S = E_tok[Ds Dsᵀ], their eigenbases, and the eigenvalue correction.

Shared by EK-FAC and K-FAC. Tokens enter A and S only at positions that carry a loss term
(the last position and padding are excluded). Accumulation is in float64; per-batch products
run in the model's dtype. The eigenvalue correction Λ = E_seq[(Q_Sᵀ DW Q_A)²] reuses the
first pass's work when it fits in `gradient_cache_mb`, else it runs a
second pass with the same (index-keyed) sampled labels. What is kept per layer is the smaller
of the per-sequence gradient DW (P·(M+1)) and the captures ā, Ds (T·(P+M+1)).

Under torch.distributed each rank runs both passes over its shard of the sequences (labels are
keyed by sequence index, so the split does not change them); the sums are all-reduced, each
layer is eigendecomposed by one rank and broadcast, so every rank ends with the same factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..batching import by_length, num_rows, sample_indices
from ..capture import check_finite, sequence_gradients
from ..distributed import all_reduce_sum, broadcast, is_distributed, rank, shard, world_size
from ..errors import InfluenceError
from ..modules import TrackedLayer
from ..passes import capture_batches, resolve_device
from ..precision import autocast_dtype, warn_if_emulated_bf16
from ..threads import SMALL, single_thread
from .base import Curvature, FitConfig

FACTOR_BYTES = 8  # float64 accumulators, eigendecompositions and Λ
GRAM_STRIP = 256  # on CPU, xᵀx is formed by row strips of this many columns (see `gram`)


@dataclass
class KroneckerConfig(FitConfig):
    """Options of the Kronecker methods (EK-FAC, K-FAC)."""

    num_blocks: int = field(
        default=1,
        metadata={"help": "Keep A and S block-diagonal with this many diagonal blocks each (paper App. A); 1: dense."},
    )
    gradient_cache_mb: float = field(
        default=4096.0,
        metadata={
            "keyed_when_changed": True,
            "help": "EK-FAC keeps each sequence's captures (or gradient) between its two passes up to this many MiB "
            "in all; beyond it the eigenvalue correction runs a second pass over the data.",
        },
    )
    precision: str = field(
        default="float32",
        metadata={
            "help": "Forward/backward under autocast: float32 (none), bf16 or fp16; factors accumulate in float32 "
            "or better either way."
        },
    )

    product_precision: str = field(
        default="float32",
        metadata={
            "keyed_when_changed": True,
            "help": "Dtype of the per-batch factor products (āᵀā, DsᵀDs, and the eigenvalue correction's rotations): "
            "float32, or bf16 (2-3x faster where the CPU or GPU has bf16 matmuls; products are rounded to bf16 "
            "before their float64 sums: see bench/README.md for what it does to the scores).",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_blocks < 1:
            raise InfluenceError(f"num_blocks must be >= 1, got {self.num_blocks}")
        autocast_dtype(self.precision)  # an unknown precision fails here, naming the valid ones
        if self.product_precision not in PRODUCT_DTYPES:
            raise InfluenceError(
                f"product_precision={self.product_precision!r}: choose one of {sorted(PRODUCT_DTYPES)}"
            )

    @property
    def product_dtype(self) -> torch.dtype | None:
        """The dtype the factor products run in (None: the model's own)."""
        return PRODUCT_DTYPES[self.product_precision]


#: `product_precision` values: None keeps the captures' own dtype (float32 models, float64 models stay exact)
PRODUCT_DTYPES = {"float32": None, "bf16": torch.bfloat16}


def _blocks(dim: int, n: int) -> list[tuple[int, int]]:
    n = max(1, min(n, dim))
    edges = torch.linspace(0, dim, n + 1).round().long().tolist()
    return [(edges[i], edges[i + 1]) for i in range(n)]


def stable_eigh(mat: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 symmetric eigendecomposition; on failure add growing jitter and retry, then a clear error."""
    m = 0.5 * (mat + mat.T).double()
    check_finite(m, what)
    scale = max(float(torch.diagonal(m).abs().mean()), 1e-30)
    for attempt in range(4):
        try:
            with single_thread(m.shape[0] <= SMALL):
                vals, vecs = torch.linalg.eigh(m)
            if torch.isfinite(vals).all() and torch.isfinite(vecs).all():
                return vals.clamp_min(0.0), vecs
        except RuntimeError:
            pass
        m = m + (scale * 10.0 ** (-10 + 3 * attempt)) * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    raise InfluenceError(
        f"eigendecomposition of {what} failed even with jitter: the factor is degenerate; fit on more data"
    )


@dataclass
class Eigenbasis:
    """Per-layer Kronecker eigenbases (float64), block-diagonal when fitted with blocks."""

    q_a: dict[str, torch.Tensor] = field(default_factory=dict)
    q_s: dict[str, torch.Tensor] = field(default_factory=dict)
    lam_a: dict[str, torch.Tensor] = field(default_factory=dict)
    lam_s: dict[str, torch.Tensor] = field(default_factory=dict)


def _gram_strips(m: int, device_type: str) -> list[tuple[int, int]] | None:
    """The column strips [s, e) `gram` forms a width-m product by, or None where it takes one matmul."""
    if device_type != "cpu" or m <= GRAM_STRIP:
        return None
    return [(s, min(s + GRAM_STRIP, m)) for s in range(0, m, GRAM_STRIP)]


def gram_macs(n: int, m: int, device_type: str = "cpu") -> int:
    """Multiply-adds `gram` spends on an (n, m) input: its strips on CPU (about half of n·m²), n·m² elsewhere."""
    strips = _gram_strips(m, device_type)
    return n * m * m if strips is None else sum(n * (e - s) * (m - s) for s, e in strips)


def gram(x: torch.Tensor) -> torch.Tensor:
    """xᵀx for x of shape (tokens, width). On CPU by row strips of the upper triangle, each one matmul of
    `GRAM_STRIP` rows, mirrored below: about half the multiply-adds of the full product, in strips whose widths
    MKL runs at full speed where a bias-folded width (M + 1) does not (2048 tokens, float32, 2 threads: width
    1025 26 vs 43 ms, 4097 297 vs 613 ms, 1024 19 vs 27 ms). Elsewhere (GPU) one matmul."""
    m = x.shape[1]
    strips = _gram_strips(m, x.device.type)
    if strips is None:
        return x.T @ x
    out = x.new_empty(m, m)
    for s, e in strips:
        strip = x[:, s:e].T @ x[:, s:]
        out[s:e, s:] = strip
        out[e:, s:e] = strip[:, e - s :].T
    return out


class _Accumulator:
    """Running sums of the diagonal blocks of A and S for one layer."""

    def __init__(self, layer: TrackedLayer, num_blocks: int, device, dtype: torch.dtype | None = None):
        p, m = layer.shape
        self.dtype = dtype
        self.a_blocks = _blocks(m, num_blocks)
        self.s_blocks = _blocks(p, num_blocks)
        self.a = [torch.zeros(e - s, e - s, dtype=torch.float64, device=device) for s, e in self.a_blocks]
        self.s = [torch.zeros(e - s, e - s, dtype=torch.float64, device=device) for s, e in self.s_blocks]

    def add(self, a: torch.Tensor, ds: torch.Tensor) -> None:
        if self.dtype is not None:
            a, ds = a.to(self.dtype), ds.to(self.dtype)
        for acc, (s, e) in zip(self.a, self.a_blocks):
            acc += gram(a[:, s:e]).double()
        for acc, (s, e) in zip(self.s, self.s_blocks):
            acc += gram(ds[:, s:e]).double()

    def all_reduce(self) -> None:
        all_reduce_sum({str(i): t for i, t in enumerate(self.a + self.s)})

    def eigen(self, n_tokens: int, name: str):
        va, qa = zip(*(stable_eigh(b / n_tokens, f"factor A of {name}") for b in self.a))
        vs, qs = zip(*(stable_eigh(b / n_tokens, f"factor S of {name}") for b in self.s))
        return torch.cat(va), torch.block_diag(*qa), torch.cat(vs), torch.block_diag(*qs)


def _eigenbasis(accs: dict[str, _Accumulator], layers, n_tokens: int, dev) -> Eigenbasis:
    """Each layer's eigendecomposition, computed by one rank (layers dealt round-robin) and broadcast to all."""
    basis = Eigenbasis()
    for i, l in enumerate(layers):
        p, m = l.shape
        if i % world_size() == rank():
            va, qa, vs, qs = accs[l.name].eigen(n_tokens, l.name)
        else:
            f64 = dict(dtype=torch.float64, device=dev)
            va, qa, vs, qs = (
                torch.empty(m, **f64),
                torch.empty(m, m, **f64),
                torch.empty(p, **f64),
                torch.empty(p, p, **f64),
            )
        for t in (va, qa, vs, qs):
            broadcast(t, src=i % world_size())
        basis.lam_a[l.name], basis.q_a[l.name], basis.lam_s[l.name], basis.q_s[l.name] = va, qa, vs, qs
    return basis


def rotate_sequence_gradients(dw: torch.Tensor, q_s: torch.Tensor, q_a: torch.Tensor) -> torch.Tensor:
    """W̃_b = Q_Sᵀ DW_b Q_A for a stack of per-sequence gradients."""
    return q_s.T @ dw @ q_a


def _rotation_macs(t: int, p: int, m: int) -> dict[str, int]:
    """Multiply-adds a sequence of t tokens costs the eigenvalue correction of a (P, M+1) layer, by order:
    rotate its tokens, then sum them (t·(P² + M²) + t·P·M), or sum them to DW, then rotate (t·P·M + P²·M + P·M²)."""
    return {"tokens": t * (p * p + m * m) + t * p * m, "grads": t * p * m + p * p * m + p * m * m}


def _correction_order(t: int, p: int, m: int) -> str:
    """The cheaper order by `_rotation_macs`: "tokens" or "grads"."""
    cost = _rotation_macs(t, p, m)
    return "tokens" if cost["tokens"] < cost["grads"] else "grads"


def correction_macs(t: int, p: int, m: int) -> int:
    """Multiply-adds of one sequence's eigenvalue correction in the order `_correction_from_tokens` takes."""
    return _rotation_macs(t, p, m)[_correction_order(t, p, m)]


def _correction_from_tokens(a, ds, q_a, q_s):
    """Σ_b (Q_Sᵀ DW_b Q_A)², rotating tokens first or the summed gradients first, whichever is cheaper; in the
    dtype of `q_a` (the product dtype), squared and summed in float32 or better."""
    a, ds = a.to(q_a.dtype), ds.to(q_a.dtype)
    b, t, m = a.shape
    p = ds.shape[-1]
    if _correction_order(t, p, m) == "tokens":
        w = torch.einsum("btp,btm->bpm", ds @ q_s, a @ q_a)
    else:
        w = rotate_sequence_gradients(sequence_gradients(a, ds), q_s, q_a)
    return _squares(w)


def _squares(w: torch.Tensor) -> torch.Tensor:
    """Σ_b w_b² in float64, squared in float32 or better (bf16 rotations are widened first)."""
    w = w.float() if w.dtype == torch.bfloat16 else w
    return (w * w).sum(0).double()


def _cached_form(layer: TrackedLayer, seq_len: int) -> str:
    """Keep a layer's captures (ā, Ds) or its per-sequence gradient DW between passes, whichever is smaller."""
    p, m = layer.shape
    return "tokens" if seq_len * (p + m) < p * m else "grads"


def _cached_floats(layer: TrackedLayer, lengths: torch.Tensor) -> int:
    """Floats kept for a layer over sequences of these real lengths (batches are length-sorted, so close to exact)."""
    p, m = layer.shape
    return int(torch.clamp(lengths.long() * (p + m), max=p * m).sum())


def _cache_fits(model, data, idx: torch.Tensor, layers, config) -> bool:
    """Whether every rank's captures (or gradients) of its shard fit in `gradient_cache_mb` for the second pass."""
    if "attention_mask" in data:
        lengths = data["attention_mask"][idx].sum(1)
    else:
        first = next(iter(data.values()))
        lengths = torch.full((len(idx),), first.shape[1] if first.dim() > 2 else 1)
    # the largest shard's cache decides for every rank, so all ranks make the same choice
    need = (
        max(sum(_cached_floats(l, lengths[r :: world_size()]) for l in layers) for r in range(world_size()))
        * torch.finfo(next(model.parameters()).dtype).bits
        // 8
    )
    return need <= config.gradient_cache_mb * 2**20


def _accumulate_factors(model, task, data, layers, config, rows, dev, cache: list | None):
    """First pass: the sums of A and S over loss-bearing tokens (all-reduced), and their count; fills `cache`."""
    accs = {l.name: _Accumulator(l, config.num_blocks, dev, config.product_dtype) for l in layers}
    n_tokens = 0
    desc = "fit: A, S" + (" + Λ" if cache is not None else "")
    for _, batch, a, ds in capture_batches(
        model, task, layers, data, config.batch_size, rows, dev, config.labels, config.seed, desc=desc
    ):
        mask = task.loss_mask(batch)
        n_tokens += int(mask.sum())
        for l in layers:
            check_finite(ds[l.name], f"the output gradients of layer {l.name}")
            accs[l.name].add(a[l.name][mask], ds[l.name][mask])
        if cache is not None:
            cache.append(
                {
                    l.name: (a[l.name], ds[l.name])
                    if _cached_form(l, a[l.name].shape[1]) == "tokens"
                    else sequence_gradients(a[l.name], ds[l.name])
                    for l in layers
                }
            )
    if is_distributed():
        for acc in accs.values():
            acc.all_reduce()
        n_tokens = int(all_reduce_sum({"n": torch.tensor([n_tokens], dtype=torch.float64, device=dev)})["n"])
    if n_tokens == 0:
        raise InfluenceError("no position of the fitting data carries a loss: sequences need at least two real tokens")
    return accs, n_tokens


def _corrected_eigenvalues(
    model, task, data, layers, config, rows, dev, basis: Eigenbasis, cache: list | None, n_sequences: int
) -> dict[str, torch.Tensor]:
    """Λ = E_seq[(Q_Sᵀ DW Q_A)²] per layer, from the first pass's `cache` or else from a second pass."""
    dtype = config.product_dtype or next(model.parameters()).dtype
    lam = {l.name: torch.zeros(l.shape, dtype=torch.float64, device=dev) for l in layers}
    qs = {l.name: basis.q_s[l.name].to(dtype) for l in layers}
    qa = {l.name: basis.q_a[l.name].to(dtype) for l in layers}
    if cache is not None:
        for entry in cache:
            for l in layers:
                if isinstance(entry[l.name], tuple):
                    lam[l.name] += _correction_from_tokens(*entry[l.name], qa[l.name], qs[l.name])
                else:
                    w = rotate_sequence_gradients(entry[l.name].to(dtype), qs[l.name], qa[l.name])
                    lam[l.name] += _squares(w)
        cache.clear()
    else:
        for _, _, a, ds in capture_batches(
            model, task, layers, data, config.batch_size, rows, dev, config.labels, config.seed, desc="fit: Λ"
        ):
            for l in layers:
                lam[l.name] += _correction_from_tokens(a[l.name], ds[l.name], qa[l.name], qs[l.name])
    all_reduce_sum(lam)
    for l in layers:
        lam[l.name] /= n_sequences
        check_finite(lam[l.name], f"the corrected eigenvalues of layer {l.name}")
    return lam


def fit_kronecker(model, task, data, layers, config, device=None, eigenvalue_correction: bool = True):
    """Fit eigenbases and, if asked, the per-sequence corrected eigenvalues Λ. Returns (basis, Λ or None, stats)."""
    task.check_batch(data)
    idx = by_length(data, sample_indices(num_rows(data), config.max_sequences, config.seed))  # sums: order-free
    mine = shard(idx)  # all of them in a single process
    dev = resolve_device(model, device)
    warn_if_emulated_bf16(dev, precision=config.precision, product_precision=config.product_precision)
    cache = [] if eigenvalue_correction and _cache_fits(model, data, idx, layers, config) else None
    accs, n_tokens = _accumulate_factors(model, task, data, layers, config, mine, dev, cache)
    basis = _eigenbasis(accs, layers, n_tokens, dev)
    stats = {
        "n_sequences": len(idx),
        "n_tokens": n_tokens,
        "mean_tokens_per_sequence": n_tokens / len(idx),
        "token_positions": "loss-bearing positions only (padding and each sequence's last position excluded)",
        "correction_passes": "0"
        if not eigenvalue_correction
        else ("1 (captures kept in memory)" if cache is not None else "2"),
    }
    if not eigenvalue_correction:
        return basis, None, stats
    return basis, _corrected_eigenvalues(model, task, data, layers, config, mine, dev, basis, cache, len(idx)), stats


def eigenbasis_ihvp(v: torch.Tensor, q_s: torch.Tensor, q_a: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Q_S [(Q_Sᵀ V Q_A) ⊘ denom] Q_Aᵀ for V of shape (Q, P, M+1), in V's dtype (float64 models stay exact)."""
    dt = v.dtype
    q_s, q_a = q_s.to(dt), q_a.to(dt)
    return q_s @ ((q_s.T @ v @ q_a) / denom.to(dt)) @ q_a.T


def basis_state(basis: Eigenbasis) -> dict[str, torch.Tensor]:
    out = {}
    for name in basis.q_a:
        out[f"{name}/q_a"], out[f"{name}/q_s"] = basis.q_a[name], basis.q_s[name]
        out[f"{name}/lam_a"], out[f"{name}/lam_s"] = basis.lam_a[name], basis.lam_s[name]
    return out


def basis_from_state(tensors: dict[str, torch.Tensor], layers: list[TrackedLayer]) -> Eigenbasis:
    basis = Eigenbasis()
    for l in layers:
        try:
            basis.q_a[l.name], basis.q_s[l.name] = tensors[f"{l.name}/q_a"], tensors[f"{l.name}/q_s"]
            basis.lam_a[l.name], basis.lam_s[l.name] = tensors[f"{l.name}/lam_a"], tensors[f"{l.name}/lam_s"]
        except KeyError:
            raise InfluenceError(
                f"factor file has no factors for layer {l.name}: it was fitted on other layers; refit"
            ) from None
        p, m = l.shape
        if basis.q_a[l.name].shape != (m, m) or basis.q_s[l.name].shape != (p, p):
            raise InfluenceError(
                f"factor file's shapes for layer {l.name} do not match the model: it belongs to another model; refit"
            )
    return basis


def kronecker_memory(shape: tuple[int, int], num_blocks: int = 1) -> dict[str, int]:
    """Bytes a Kronecker method keeps for one layer of shape (P, M+1): A (in×in, block-diagonal with blocks),
    S (out×out), the eigenvector matrices Q_A and Q_S (stored dense) and Λ (out×in), all float64."""
    p, m = shape
    floats = {
        "A": sum((e - s) ** 2 for s, e in _blocks(m, num_blocks)),
        "S": sum((e - s) ** 2 for s, e in _blocks(p, num_blocks)),
        "eigenvectors": m * m + p * p,
        "lambda": p * m,
    }
    return {k: v * FACTOR_BYTES for k, v in floats.items()}


class KroneckerCurvature(Curvature):
    """What EK-FAC and K-FAC share: Kronecker factors fitted with labels, and G_ℓ in the eigenbasis Q_S ⊗ Q_A
    with eigenvalues `lam[layer]` of the layer's shape (P, M+1)."""

    config_class = KroneckerConfig
    stores_factors: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = True
    basis: Eigenbasis
    lam: dict[str, torch.Tensor]

    @classmethod
    def memory(cls, shape, num_blocks=1):
        return kronecker_memory(shape, num_blocks)

    def eigendecomposition(self, layer):
        if layer not in self.lam:
            return None
        return self.basis.q_s[layer], self.basis.q_a[layer], self.lam[layer]

    def ihvp(self, grads):
        """Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ)] Q_Aᵀ per layer."""
        b = self.basis
        return {
            l.name: eigenbasis_ihvp(
                grads[l.name],
                b.q_s[l.name],
                b.q_a[l.name],
                (self.lam[l.name] + self.damping[l.name]).to(b.q_s[l.name].device),
            )
            for l in self.layers
        }
