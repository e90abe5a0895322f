"""Mixed precision: forward/backward passes under torch.autocast (bf16 or fp16), everything else in float32/float64.

The model's forward is where a GPU spends its time, so only that runs in low precision; the tracked
layers' captures are widened to float32 as they are recorded (`capture.py`), so factors accumulate in
float32 or better, eigendecompositions stay float64, and scores are summed in float32. "float32" leaves
the task untouched: the default path is bit-identical to running without this module. fp16 can
underflow small activation gradients (there is no loss scaling here); prefer bf16 where the device has it.
"""

from __future__ import annotations

import logging

import torch

from .errors import InfluenceError
from .tasks import Task

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for float32, i.e. no autocast)."""
    if precision not in PRECISIONS:
        raise InfluenceError(f"unknown precision {precision!r}: use one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively: CUDA as the GPU says, CPU where oneDNN finds AVX512-BF16 or
    AMX. Elsewhere bf16 is emulated and slower than float32 (a 2048 × 1025 āᵀā on an AVX2 EPYC: 251 vs 63 ms)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: nothing to say
            return True
    return True


def warn_if_emulated_bf16(device: torch.device, **settings: str) -> None:
    """One line when a setting asks for bf16 on a device that only emulates it: slower, not faster."""
    asked = [k for k, v in settings.items() if v == "bf16"]
    if asked and not has_native_bf16(device):
        log.warning(
            "%s=bf16 on a %s without native bf16 matmuls: it runs slower than float32 here (measured 4x on an "
            "AVX2 CPU); set float32",
            " and ".join(asked),
            device.type.upper(),
        )


def widen(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors as float32; any other tensor unchanged (float64 models stay float64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class AutocastTask(Task):
    """A task whose model forward runs under autocast; outputs come back as float32, so losses,
    label sampling and the closed-form loss gradient are computed in full precision."""

    def __init__(self, task: Task, precision: str):
        self.task, self.precision, self.dtype = task, precision, autocast_dtype(precision)
        self.train_keys, self.divergence = task.train_keys, task.divergence

    def forward(self, model, batch):
        device = next(model.parameters()).device.type
        with torch.autocast(device_type=device, dtype=self.dtype):
            out = self.task.forward(model, batch)
        return widen(out)

    def loss_mask(self, batch):
        return self.task.loss_mask(batch)

    def loss(self, outputs, batch, labels=None):
        return self.task.loss(outputs, batch, labels)

    def loss_output_grad(self, outputs, batch, labels=None):
        return self.task.loss_output_grad(outputs, batch, labels)

    def sample_labels(self, outputs, batch, indices, seed):
        return self.task.sample_labels(outputs, batch, indices, seed)

    def sampled_loss_output_grad(self, outputs, batch, indices, seed):
        return self.task.sampled_loss_output_grad(outputs, batch, indices, seed)

    def measurement(self, outputs, batch):
        return self.task.measurement(outputs, batch)

    def output_hvp(self, outputs, batch, u):
        return self.task.output_hvp(outputs, batch, u)

    def bregman(self, outputs, reference, batch):
        return self.task.bregman(outputs, reference, batch)

    def bregman_positions(self, batch):
        return self.task.bregman_positions(batch)

    def trim(self, batch):
        return self.task.trim(batch)

    def check_batch(self, batch, what="training data"):
        return self.task.check_batch(batch, what)


def with_precision(task: Task, precision: str = "float32") -> Task:
    """`task` itself for float32, else the task under autocast at `precision` (bf16 or fp16)."""
    if autocast_dtype(precision) is None:
        return task
    if isinstance(task, AutocastTask):
        task = task.task
    return AutocastTask(task, precision)


def without_default_precision(settings: dict) -> dict:
    """`settings` without a `precision` that is the float32 default, for cache keys: a float32 run keys its
    factors and scans exactly as before precision existed, so caches made then stay valid."""
    return {k: v for k, v in settings.items() if not (k == "precision" and str(v) == "float32")}
