"""Content fingerprints: a cached artefact is reused exactly when everything that made it is unchanged."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf


def fingerprint(*parts, length: int = 10) -> str:
    """Short stable hash of JSON-able parts (DictConfigs are resolved to plain containers)."""
    plain = [OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts]
    blob = json.dumps(plain, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
