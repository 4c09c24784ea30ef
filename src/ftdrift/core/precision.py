"""The numeric precision of a study's forward passes: one resolution, one autocast.

Training runs under autocast in `training.precision`; accelerate patches the prepared model's
forward with that autocast for good, so everything the job computes afterwards (snapshots, the
final evaluation) runs in it too. Base-model representations must therefore be extracted in
the same precision, or step 0 already differs from the base model by the bf16/fp32 rounding.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' on a CUDA GPU that supports it, else 'fp32'; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """torch.autocast in `precision` ('fp32': no autocast) on the device's type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])
