"""Content fingerprints: a cached stage is reused only when what produced it is unchanged."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(tensors):
        h.update(k.encode())
        _update_tensor(h, tensors[k])
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, values)."""
    return tensors_fingerprint(dict(model.state_dict()))


def config_fingerprint(config: dict) -> str:
    return hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def combine(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()
