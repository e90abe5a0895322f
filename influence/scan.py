"""Searching the training set: one resumable streaming pass scores every query on every candidate.

The pass is cut into chunks of `chunk_batches` batches; each chunk's scores are written
atomically as they finish, beside a manifest of what produced them (model, curvature,
queries, candidates, rank). A scan killed at any point and restarted recomputes only the
missing chunks and ends with exactly the uninterrupted result; a directory holding another
scan is refused, naming what differs. A second, small pass over each query's top-k gives the
full-rank re-scores, layer-wise and token-wise breakdowns and the spurious-sequence flag (§5.3).

`normalize="unit"` (both passes) scores by the cosine in the preconditioned space, I / (‖∇f_q‖_M·‖∇L(z_m)‖_M)
(see `influence.scoring`), so that a few sequences of high gradient norm do not fill every top-k (TrackStar,
RelatIF); it enters the manifest, so a normalized scan never reuses a plain scan's chunks, nor the reverse.

Under torch.distributed the chunks are dealt round-robin to the ranks (each resumes its own),
rank 0 alone writes the manifest, and after a barrier every rank reads the others' chunks, so
all ranks return the ScanResult a single process returns. The top-k breakdown splits its rows
across ranks the same way and gathers them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .arguments import ScanArguments, from_options
from .batching import by_length, num_rows, pad_positions, rows_fingerprint
from .capture import check_finite
from .curvature import Curvature
from .distributed import all_gather_object, collectively, is_main, shard, world_size
from .errors import InfluenceError
from .fingerprint import config_fingerprint, model_fingerprint, tensors_fingerprint
from .lowrank import low_rank_queries
from .passes import capture_batches, length_order, resolve_device
from .precision import warn_if_emulated_bf16, without_default_precision
from .scoring import (
    SCALE_CONVENTION,
    candidate_norms,
    check_normalization,
    preconditioned_with_norms,
    query_norms,
    score_batch,
    score_captured,
    unit_scaled,
)
from .storage import CorruptFileError, atomic_write, load_tensors, remove_stale_temporaries, save_tensors, write_failure

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPURIOUS_RATIO = 2 / 3
#: manifest keys added after scans were first written, and the value a manifest without one was made with
LATER_MANIFEST_KEYS = {"normalize": "none"}


@dataclass
class ScanResult:
    scores: torch.Tensor  # (Q, N) every candidate's score, float32
    indices: torch.Tensor  # (N,) candidate rows of the training data
    query_names: list[str]
    metadata: dict = field(default_factory=dict)
    layer_scores: torch.Tensor | None = None  # (Q, L, N) the layer-wise split of `scores` (Eq. 30)

    def top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, training rows), each (Q, k'), k' = min(k, candidates of the query with fewest), by descending score."""
        k = min(k, int(torch.isfinite(self.scores).sum(1).min()))
        top = torch.topk(torch.nan_to_num(self.scores, nan=-torch.inf), k, dim=1)
        return top.values, self.indices[top.indices]

    def row(self, name: str) -> torch.Tensor:
        """(N,) the scores of the query called `name` on every candidate."""
        if name not in self.query_names:
            raise InfluenceError(f"no query named {name!r} in this scan: it has {self.query_names}")
        return self.scores[self.query_names.index(name)]

    def restricted_to(self, rows_per_query: list[torch.Tensor]) -> "ScanResult":
        """Each query keeps only its own candidate rows (e.g. its TF-IDF top k); the others become NaN."""
        keep = torch.zeros_like(self.scores, dtype=torch.bool)
        pos = {int(r): j for j, r in enumerate(self.indices)}
        for q, rows in enumerate(rows_per_query):
            keep[q, [pos[int(r)] for r in rows]] = True
        layers = None if self.layer_scores is None else torch.where(keep.unsqueeze(1), self.layer_scores, torch.nan)
        return ScanResult(
            torch.where(keep, self.scores, torch.nan), self.indices, self.query_names, dict(self.metadata), layers
        )


@dataclass
class TopBreakdown:
    """The top-k of one query, re-scored at full rank with layer and token views."""

    rows: torch.Tensor  # (k,) training rows
    scores: torch.Tensor  # (k,) full-rank scores (cosines when `normalize` is "unit")
    layer_scores: torch.Tensor  # (k, L)
    token_scores: torch.Tensor  # (k, L, T)
    # the outlier diagnostics (NaN where the curvature has no batched ihvp: LiSSA)
    loss_per_token: torch.Tensor | None = None  # (k,) each row's mean training loss per target token
    candidate_norm: torch.Tensor | None = None  # (k,) ‖∇L(z)‖_M in the curvature's metric
    query_norm: torch.Tensor | None = None  # () ‖∇f_q‖_M
    normalize: str = "none"

    @property
    def self_influence(self) -> torch.Tensor:
        """(k,) ∇L(z)ᵀ(G+λI)⁻¹∇L(z) ≥ 0: large for sequences of high gradient norm, which fill unnormalized top lists."""
        return self._diagnostic("candidate_norm").square()

    @property
    def cosine(self) -> torch.Tensor:
        """(k,) the score as a cosine in the preconditioned space, I/(‖∇f_q‖_M·‖∇L(z)‖_M), whatever the scan scored."""
        if self.normalize == "unit":
            return self.scores
        return self.scores / (self._diagnostic("query_norm") * self._diagnostic("candidate_norm"))

    @property
    def raw_scores(self) -> torch.Tensor:
        """(k,) the influence I itself, also when the scan scored cosines."""
        if self.normalize == "unit":
            return self.scores * self._diagnostic("query_norm") * self._diagnostic("candidate_norm")
        return self.scores

    def _diagnostic(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        return torch.full_like(self.scores, torch.nan) if value is None else value.to(self.scores)

    @property
    def sparsity_ratio(self) -> torch.Tensor:
        """‖a‖₂/‖a‖₁ of the token-wise influences a (summed over layers)."""
        a = self.token_scores.sum(1)
        return a.norm(dim=1) / a.abs().sum(1).clamp_min(1e-30)

    @property
    def spurious(self) -> torch.Tensor:
        """The paper's heuristic: a sequence whose influence sits on very few tokens is flagged."""
        return self.sparsity_ratio > SPURIOUS_RATIO


def _preconditioned(model, task, curvature, queries, device, normalize: str = "none"):
    """The device to work on, every query's preconditioned gradient computed there, and (normalize="unit") the
    queries' (Q,) norms ‖∇f_q‖_M, else None."""
    dev = resolve_device(model, device)
    pre, norms = preconditioned_with_norms(
        model, task, curvature, {k: v.to(dev) for k, v in queries.items()}, normalize
    )
    return dev, pre, norms


def _manifest(model, curvature, queries, names, data, indices, args: ScanArguments) -> dict:
    return {
        "model": model_fingerprint(model),
        "curvature": config_fingerprint(
            {**without_default_precision(curvature.describe()), "state": tensors_fingerprint(curvature.state())}
        ),
        "queries": tensors_fingerprint({**{k: v.cpu() for k, v in queries.items()}}) + ":" + config_fingerprint(names),
        "candidates": rows_fingerprint(data, indices),  # in blocks: a memory-mapped corpus is never copied whole
        "query_rank": "full" if args.query_rank is None else int(args.query_rank),
        "batch_size": int(args.batch_size),
        "chunk_batches": int(args.chunk_batches),
        "num_candidates": int(len(indices)),
        "query_names": list(names),
        "layer_scores": True,
        "normalize": args.normalize,
    }


def _sealed(manifest: dict) -> dict:
    """The manifest with a checksum of its fields, so a corrupt manifest is told from another scan's."""
    return {**manifest, "checksum": config_fingerprint(manifest)}


def _read_manifest(path: Path) -> dict | None:
    """The manifest at `path`, or None when its bytes are corrupt (unparseable, or not matching its checksum)."""
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(old, dict):
        return None
    if "checksum" in old and old["checksum"] != config_fingerprint({k: v for k, v in old.items() if k != "checksum"}):
        return None
    return old


def _write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps(_sealed(manifest), indent=2)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError as e:
        raise write_failure(path, e) from None


def _check_or_write_manifest(out_dir: Path, manifest: dict) -> None:
    """Start the scan of `out_dir`, or resume it if its manifest is this scan's; refuse another scan's.

    A corrupt manifest cannot vouch for the chunks beside it: they are deleted and the scan starts over."""
    path = out_dir / MANIFEST
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failure(out_dir, e) from None
    if path.exists():
        old = _read_manifest(path)
        if old is None:
            log.warning("%s is corrupt: deleting its chunks and scanning again", path)
            for chunk in out_dir.glob("chunk-*.safetensors"):
                chunk.unlink()
        else:
            differ = [k for k in manifest if old.get(k, LATER_MANIFEST_KEYS.get(k)) != manifest[k]]
            if differ:
                raise InfluenceError(
                    f"{out_dir} holds a scan with other {', '.join(differ)}: "
                    f"resume only the same scan, or use a new output directory"
                )
            remove_stale_temporaries(out_dir)  # writes cut off by a kill; a live writer's are kept
            if "checksum" in old:
                return
    _write_manifest(path, manifest)


def _load_chunk(path: Path, c: int, sel: torch.Tensor, out_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished chunk's (scores, layer_scores), verified against its checksum and checked to be chunk `c`."""
    tensors, meta = load_tensors(path, require_checksum=True, fix="it is rescanned")
    if meta.get("chunk") != str(c) or not torch.equal(tensors["indices"], sel):
        raise InfluenceError(f"{path} does not belong to this scan: delete the scan directory {out_dir}")
    if "layer_scores" not in tensors:
        raise InfluenceError(f"{path} lacks layer scores: delete the scan directory {out_dir}")
    return tensors["scores"], tensors["layer_scores"]


def _chunk_path(out_dir: Path, c: int) -> Path:
    return out_dir / f"chunk-{c:06d}.safetensors"


def _score_chunk(model, task, curvature, data, queries, sel, batch_size: int, dev, bar, c: int):
    """(scores (Q, rows), layer_scores (Q, L, rows)) of the rows `sel`, batched by length, in `sel` order.
    `queries`: (the scored query gradients, their norms or None) from `_chunk_queries`."""
    order, back = length_order(data, sel)  # similar lengths batch together; results go back in `sel` order
    pre, q_norm = queries
    parts = []
    for _, _, a, ds in capture_batches(model, task, curvature.layers, data, batch_size, order, dev):
        layer, _ = score_batch(pre, a, ds, curvature, q_norm)  # (B, Q, L)
        check_finite(layer, f"the scores of chunk {c}")
        parts.append(layer.float().cpu())
        bar.update(layer.shape[0])
    layers = torch.cat(parts)[back].permute(1, 2, 0).contiguous()
    return layers.sum(1), layers


def _chunk_queries(model, task, curvature, queries, preconditioned, dev, args: ScanArguments):
    """(query gradients as the chunks score them (rank `args.query_rank`), (Q,) norms or None): the norms of
    normalize="unit" from the full-rank preconditioned gradients, before the rank reduction."""
    if preconditioned is None:
        _, full, norms = _preconditioned(model, task, curvature, queries, dev, args.normalize)
    else:
        full = {k: v.to(dev) for k, v in preconditioned.items()}
        on_dev = {k: v.to(dev) for k, v in queries.items()}
        norms = query_norms(model, task, curvature, on_dev, full) if args.normalize == "unit" else None
    return low_rank_queries(full, args.query_rank), norms


def _scan_chunks(
    model, task, curvature, queries, data, out_dir: Path, indices, args: ScanArguments, preconditioned
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every chunk's (scores, layer_scores): this rank's computed (or read back if done), then the others' read."""
    rows_per_chunk = args.batch_size * args.chunk_batches
    selection = [
        indices[c * rows_per_chunk : (c + 1) * rows_per_chunk]
        for c in range((len(indices) + rows_per_chunk - 1) // rows_per_chunk)
    ]
    mine = shard(range(len(selection)))  # every chunk in a single process
    bar = tqdm(
        total=sum(len(selection[c]) for c in mine),
        desc="scan",
        unit="seq",
        dynamic_ncols=True,
        disable=not (args.progress and is_main()),
        mininterval=1.0,
    )
    chunks, pre, dev, rescanned = {}, None, resolve_device(model, args.device), []
    with collectively(), bar:
        for c in mine:
            path, sel = _chunk_path(out_dir, c), selection[c]
            if path.exists():
                try:
                    chunks[c] = _load_chunk(path, c, sel, out_dir)
                    bar.update(len(sel))
                    continue
                except CorruptFileError as e:  # a chunk is recomputable: rescan it
                    rescanned.append(str(e))
            if pre is None:  # only when some chunk is missing
                pre = _chunk_queries(model, task, curvature, queries, preconditioned, dev, args)
            chunks[c] = _score_chunk(model, task, curvature, data, pre, sel, args.batch_size, dev, bar, c)
            scores, layers = chunks[c]
            save_tensors(path, {"scores": scores, "layer_scores": layers, "indices": sel}, {"chunk": str(c)})
    if rescanned:
        log.warning("rescanned %d chunk(s) that could not be verified; the first: %s", len(rescanned), rescanned[0])
    for c, sel in enumerate(selection):  # the other ranks' chunks (none in a single process)
        if c not in chunks:
            chunks[c] = _load_chunk(_chunk_path(out_dir, c), c, sel, out_dir)
    return [chunks[c] for c in range(len(selection))]


def scan(
    model,
    task,
    curvature: Curvature,
    queries: dict[str, torch.Tensor],
    data: dict[str, torch.Tensor],
    out_dir: str | Path,
    args: ScanArguments | None = None,
    *,
    query_names: list[str] | None = None,
    indices: torch.Tensor | None = None,
    preconditioned: dict[str, torch.Tensor] | None = None,
    **options,
) -> ScanResult:
    """Score every query on every candidate row (default: all rows), resuming from `out_dir` if it holds this scan.

    How it batches and stores is `args`, or `ScanArguments(**options)` from keywords such as `batch_size=`,
    `query_rank=`, `chunk_batches=`, `device=`, `progress=`, `normalize=` ("none" or "unit": cosine scores, whose
    query norms come from the full-rank gradients). Each chunk keeps the layer-wise split of its scores too, so
    layer studies read the scan. `preconditioned` (full-rank (G+λI)⁻¹∇f per layer, from `precondition_queries`)
    skips recomputing them; they are computed only if some chunk is missing.
    """
    if args is not None and options:
        raise InfluenceError(f"scan takes either args or keyword options, not both (got {sorted(options)})")
    args = args if args is not None else from_options(ScanArguments, options)
    check_normalization(args.normalize, curvature)
    n = num_rows(data)
    task.check_batch(data)
    indices = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if len(indices) == 0:
        raise InfluenceError("no candidate sequences to scan")
    num_q = next(iter(queries.values())).shape[0]
    names = list(query_names) if query_names is not None else [f"query_{i}" for i in range(num_q)]
    out_dir = Path(out_dir)
    warn_if_emulated_bf16(resolve_device(model, args.device), precision=getattr(task, "precision", "float32"))
    manifest = _manifest(model, curvature, queries, names, data, indices, args)
    with collectively():  # rank 0 checks or writes the manifest before any rank writes a chunk
        if is_main():
            _check_or_write_manifest(out_dir, manifest)
    chunks = _scan_chunks(model, task, curvature, queries, data, out_dir, indices, args, preconditioned)
    return ScanResult(
        scores=torch.cat([scores for scores, _ in chunks], dim=1),
        layer_scores=torch.cat([layers for _, layers in chunks], dim=2),
        indices=indices,
        query_names=names,
        metadata={
            **curvature.describe(),
            "scale_convention": SCALE_CONVENTION,
            "query_rank": "full" if args.query_rank is None else str(args.query_rank),
            "normalize": args.normalize,
            "num_candidates": str(len(indices)),
        },
    )


def row_losses(task, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
    """(B,) each row's training loss per target token (the task's loss over its loss mask), for the diagnostics."""
    counts = task.loss_mask(batch).sum(1).clamp_min(1).to(outputs.dtype)
    sums = [task.loss(outputs[i : i + 1], {k: v[i : i + 1] for k, v in batch.items()}) for i in range(len(counts))]
    return torch.stack(sums).detach() / counts


def _breakdown_rows(model, task, curvature, pre, q_norm, data, wanted, batch_size, rows, dev, unit: bool):
    """{row: (layer scores, token scores, ‖∇L‖_M, loss per token)} per query, for the rows in `wanted[q]`."""
    names = [l.name for l in curvature.layers]
    width = next(iter(data.values())).shape[1]
    per_query: list[dict[int, tuple]] = [dict() for _ in wanted]
    for sel, batch, a, ds in capture_batches(model, task, curvature.layers, data, batch_size, rows, dev):
        m_norm = candidate_norms(curvature, a, ds) if curvature.batched_ihvp else torch.full((len(sel),), torch.nan)
        with torch.no_grad():
            loss = row_losses(task, task.forward(model, batch), batch).cpu()
        for q in range(len(wanted)):
            keep = [i for i, r in enumerate(sel.tolist()) if r in wanted[q]]
            if not keep:
                continue
            k = torch.tensor(keep, device=dev)
            layer, tok = score_captured(
                {n: pre[n][q : q + 1] for n in names},
                {n: a[n][k] for n in names},
                {n: ds[n][k] for n in names},
                names,
                per_token=True,
            )
            if unit:
                layer, tok = (unit_scaled(t, q_norm[q : q + 1], m_norm[k]) for t in (layer, tok))
            for j, i in enumerate(keep):
                found = (layer[j, 0].cpu(), pad_positions(tok[j, 0].cpu(), width), m_norm[i].cpu(), loss[i])
                per_query[q][int(sel[i])] = found
    return per_query


def top_k_breakdown(
    model,
    task,
    curvature: Curvature,
    queries: dict[str, torch.Tensor],
    data: dict[str, torch.Tensor],
    top_rows: torch.Tensor,
    batch_size: int = 16,
    device=None,
    normalize: str = "none",
) -> list[TopBreakdown]:
    """For each query q, full-rank layer- and token-wise scores of its rows `top_rows[q]` (one pass over their union),
    with each row's outlier diagnostics: its loss per token and ‖∇L‖_M, and ‖∇f_q‖_M, so that a listing can show
    the cosine beside the raw score (norms NaN for a curvature without a batched ihvp).

    `normalize`: as the scan that chose the rows ("unit": cosine scores, comparable with a unit scan's)."""
    check_normalization(normalize, curvature)
    dev, pre, q_norm = _preconditioned(model, task, curvature, queries, device, normalize)
    if q_norm is None:
        q_norm = (
            query_norms(model, task, curvature, {k: v.to(dev) for k, v in queries.items()}, pre)
            if curvature.batched_ihvp
            else torch.full((top_rows.shape[0],), torch.nan)
        )
    union = by_length(data, torch.unique(top_rows.flatten()))
    wanted = [set(r.tolist()) for r in top_rows]
    per_query = _breakdown_rows(
        model, task, curvature, pre, q_norm, data, wanted, batch_size, shard(union), dev, normalize == "unit"
    )
    if world_size() > 1:  # each rank scored its shard of the rows: gather them all on every rank
        for part in all_gather_object(per_query):
            for q, found in enumerate(part):
                per_query[q].update(found)
    out = []
    for q, rows in enumerate(top_rows):
        layers, tokens, norms, losses = (torch.stack(t) for t in zip(*(per_query[q][int(r)] for r in rows)))
        out.append(
            TopBreakdown(
                rows=rows.clone(),
                scores=layers.sum(-1),
                layer_scores=layers,
                token_scores=tokens,
                loss_per_token=losses.float(),
                candidate_norm=norms.float(),
                query_norm=q_norm[q].detach().cpu().float(),
                normalize=normalize,
            )
        )
    return out


def scores_at_ranks(
    model,
    task,
    curvature: Curvature,
    queries: dict[str, torch.Tensor],
    data: dict[str, torch.Tensor],
    ranks: list[int | None],
    indices: torch.Tensor | None = None,
    batch_size: int = 16,
    device=None,
) -> dict[int | None, torch.Tensor]:
    """Scores (Q, N) of the same candidates at several query ranks (None = full), from one capture per batch."""
    dev, pre, _ = _preconditioned(model, task, curvature, queries, device)
    reps = {r: low_rank_queries(pre, r) for r in ranks}
    names = [l.name for l in curvature.layers]
    parts: dict = {r: [] for r in ranks}
    rows = torch.arange(num_rows(data)) if indices is None else indices
    order, back = length_order(data, rows)
    for _, _, a, ds in capture_batches(model, task, curvature.layers, data, batch_size, order, dev):
        for r, rep in reps.items():
            parts[r].append(score_captured(rep, a, ds, names)[0].sum(-1).cpu())
    return {r: torch.cat(p)[back].T for r, p in parts.items()}
