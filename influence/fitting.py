"""Fit a curvature, or reuse a saved one whose fingerprint (model weights + data + fitting config) matches.

Under torch.distributed every rank takes part in the fit and ends with the same factors; rank 0
alone decides whether a cached fit exists and writes the file (the cache directory is shared).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from .batching import num_rows, rows_fingerprint
from .curvature import Curvature, get_curvature_class, make_config
from .distributed import broadcast_object, collectively, is_main
from .errors import InfluenceError
from .fingerprint import combine, config_fingerprint, model_fingerprint
from .modules import TrackedLayer, find_tracked_layers
from .precision import without_default_precision
from .storage import CorruptFileError, load_tensors, save_tensors

log = logging.getLogger(__name__)

FORMAT = "influence-studies/curvature/1"
#: metadata a factor file carries besides the curvature's `describe()`
FILE_KEYS = ("model_fingerprint", "fit_fingerprint", "layers", "options", "format")


def keyed_options(cls: type[Curvature], options: dict) -> dict:
    """The options a factor file is keyed by: as given, less a float32 `precision` and any option marked
    `keyed_when_changed` (one added after caches were first keyed) at its default, so those caches stay valid."""
    late = {f.name: f.default for f in dataclasses.fields(cls.config_class) if f.metadata.get("keyed_when_changed")}
    return {k: v for k, v in without_default_precision(options).items() if not (k in late and v == late[k])}


def fit_curvature(
    model,
    task,
    data: dict[str, torch.Tensor],
    method: str = "ekfac",
    layers: list[TrackedLayer] | None = None,
    cache_dir: str | Path | None = None,
    device=None,
    **options,
) -> Curvature:
    """Fit `method` on (model, training data). With `cache_dir`, reuse a matching fit or save this one."""
    cls = get_curvature_class(method)
    config = make_config(cls, options)
    layers = layers if layers is not None else find_tracked_layers(model)
    num_rows(data)
    task.check_batch(data)
    path = None
    if cache_dir is not None and cls.cacheable:
        model_fp = model_fingerprint(model)
        fit_fp = combine(
            model_fp,
            rows_fingerprint(data),  # = tensors_fingerprint(data), a block of rows at a time (shards on disk)
            config_fingerprint(
                {
                    "method": method,
                    "options": keyed_options(cls, options),
                    "layers": [l.name for l in layers],
                    "task": type(task).__name__,
                }
            ),
        )
        path = Path(cache_dir) / f"{method}-{fit_fp}.safetensors"
        if broadcast_object(path.exists()):  # rank 0's view, so that no rank fits alone
            try:
                curv = load_curvature(path, model, task=task, layers=layers, require_checksum=True)
                log.info("reused fitted %s factors %s", method, path)
                return curv
            except CorruptFileError as e:  # every rank reads the same bytes, so all refit together
                log.warning("%s: refitting", e)
    curv = cls.fit(model, task, data, layers, config, device)
    if path is not None:
        meta = {
            **curv.describe(),
            "model_fingerprint": model_fp,
            "fit_fingerprint": fit_fp,
            "layers": json.dumps([l.name for l in layers]),
            "options": json.dumps(options, default=str),
            "format": FORMAT,
        }
        with collectively():  # every rank waits for the file, and sees rank 0's failure to write it
            if is_main():
                save_tensors(path, curv.state(), meta)
                log.info("saved fitted %s factors to %s", method, path)
    return curv


def load_curvature(
    path: str | Path, model, task=None, layers: list[TrackedLayer] | None = None, require_checksum: bool = False
) -> Curvature:
    """Load saved factors, verified against their checksum, refusing a file fitted on another model."""
    tensors, meta = load_tensors(path, require_checksum=require_checksum, fix="delete it so the factors are refitted")
    if meta.get("format") != FORMAT:
        raise InfluenceError(
            f"{path} is not a curvature file written by influence-studies: delete it or point elsewhere"
        )
    if meta["model_fingerprint"] != model_fingerprint(model):
        raise InfluenceError(
            f"factor file {path} was fitted on another model (weights differ): refit, or load the model it belongs to"
        )
    cls = get_curvature_class(meta["curvature"])
    if layers is None:
        by_name = {
            l.name: l
            for l in find_tracked_layers(
                model, patterns=[f"^{n}$".replace(".", r"\.") for n in json.loads(meta["layers"])]
            )
        }
        layers = [by_name[n] for n in json.loads(meta["layers"])]
    curv = cls(layers, make_config(cls, json.loads(meta["options"])))
    curv.load_state(tensors)
    # every other key is the fit's `info`, restored whole (what `load_state` sets again stays last, as after a fit)
    own = cls.described_config_keys() | set(FILE_KEYS)
    curv.info = {**{k: meta[k] for k in sorted(meta) if k not in own and k not in curv.info}, **curv.info}
    return curv
