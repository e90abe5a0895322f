"""torch.distributed in a few helpers that are no-ops in a single process.

The library calls these unconditionally: without an initialised process group every rank-aware
code path reduces to the single-process one (rank 0 of 1, sums unchanged, no communication),
so one process behaves exactly as it did before distributed support existed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .errors import InfluenceError

_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes shared files and logs."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(items: torch.Tensor | range) -> torch.Tensor | range:
    """The items this rank owns: every world_size-th from its rank (strided, so length-sorted work stays balanced)."""
    return items[rank() :: world_size()]


def all_reduce_sum(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks, in place (every rank ends with the same values); returns the dict."""
    if is_distributed():
        for t in tensors.values():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """`src`'s tensor on every rank, in place (the others pass a buffer of the same shape and dtype)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(obj, src: int = 0):
    """`src`'s (picklable) object on every rank, e.g. a decision every rank must share."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's object, in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _portable(err: BaseException | None, who: int):
    if err is None:
        return None
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # an exception that cannot travel is sent as its message
        return RuntimeError(f"rank {who}: {type(err).__name__}: {err}")


@contextlib.contextmanager
def collectively() -> Iterator[None]:
    """Run a block on every rank, then synchronise; if it failed on any rank, raise on all of them.

    A plain barrier after a block that fails on one rank leaves the others waiting until the
    process group times out; this turns that hang into the same error everywhere.
    """
    err = None
    try:
        yield
    except Exception as e:  # noqa: BLE001  (re-raised below, on this rank and the others)
        err = e
    if not is_distributed():
        if err is not None:
            raise err
        return
    errors = all_gather_object(_portable(err, rank()))
    if err is not None:
        raise err
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def init_from_env(backend: str | None = None, device: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); False when there is none.

    `backend` defaults to nccl for a CUDA `device`, gloo otherwise.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in _ENV if not os.environ.get(k)]
    if missing:
        raise InfluenceError(
            f"WORLD_SIZE>1 but {', '.join(missing)} not set: launch with torchrun "
            "(torchrun --nproc_per_node=N -m experiments.run ...) or set them yourself"
        )
    if backend is None:
        backend = "nccl" if device is not None and str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise InfluenceError("score.device=cuda with several processes needs CUDA GPUs: none is visible here")
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
