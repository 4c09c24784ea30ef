"""Representations as arrays: conversion to float64, shape and finiteness checks, centring.

Shared by the similarity measures (ftdrift.core.similarity). A representation is a 2-D array
``[n_examples, n_features]``, a numpy array or torch tensor of any float dtype; a stack of
them is ``[layer, n, d]`` (base) or ``[snapshot, layer, n, d]`` (a run's snapshots).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# A centred representation whose norm is this small relative to the raw one is
# "constant up to rounding": centring a constant column in float64 leaves ~1e-17
# residue, which would otherwise produce a meaningless CKA from rounding noise.
DEGENERATE_RTOL = 1e-10

# Default memory budget (bytes) for one chunk of snapshots in the batched functions.
DEFAULT_CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def as_source(x: Any, name: str) -> np.ndarray | torch.Tensor:
    """Numpy array or detached torch tensor, in the *stored* dtype (no copy)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        return torch.stack([t.detach() for t in x])
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def to_numpy64(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 numpy copy/view of an array or tensor (any device, any float dtype)."""
    if isinstance(a, torch.Tensor):
        # bfloat16 has no numpy equivalent: convert inside torch first.
        return a.to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def numpy_view(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """Numpy view of ``a`` in its stored dtype where possible (no float64 copy yet)."""
    if isinstance(a, torch.Tensor):
        if a.dtype not in (torch.float16, torch.float32, torch.float64):
            a = a.float()  # bfloat16 / integer types have no direct numpy view
        return a.cpu().numpy()
    return np.asarray(a)


def check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def rep_2d(x: Any, name: str) -> np.ndarray:
    """Convert one representation to a float64 numpy array ``[n, d]``."""
    a = as_source(x, name)
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [n_examples, n_features], got shape {tuple(a.shape)}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    a = to_numpy64(a)
    check_finite(a, name)
    return a


def check_pair(x: np.ndarray, y: np.ndarray) -> int:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must have the same number of examples (rows): "
            f"got {x.shape[0]} and {y.shape[0]}"
        )
    return int(x.shape[0])


def resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------- #
# CKA core
# --------------------------------------------------------------------------- #
def center(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Column-centre ``[n, d]``; also say whether it is constant up to rounding."""
    raw = np.linalg.norm(a)
    c = a - a.mean(axis=0)
    return c, bool(np.linalg.norm(c) <= DEGENERATE_RTOL * raw)  # True if raw == 0


# --------------------------------------------------------------------------- #
# batched CKA / cosine over (snapshot, layer) pairs
# --------------------------------------------------------------------------- #
def stack_view(base: Any, snapshots: Any) -> tuple[Any, Any, int, int]:
    """Validate ``base [L, n, d]`` and ``snapshots [S, L, n, d']`` (stored dtype kept)."""
    b = as_source(base, "base")
    s = as_source(snapshots, "snapshots")
    if b.ndim != 3:
        raise ValueError(f"base must be 3-D [layers, n, d], got shape {tuple(b.shape)}")
    if s.ndim != 4:
        raise ValueError(
            f"snapshots must be 4-D [snapshots, layers, n, d], got shape {tuple(s.shape)}"
        )
    if s.shape[1] != b.shape[0] or s.shape[2] != b.shape[1]:
        raise ValueError(
            "snapshots [S, L, n, d] must match base [L, n, d] in L and n: "
            f"base {tuple(b.shape)}, snapshots {tuple(s.shape)}"
        )
    if min(b.shape) == 0 or s.shape[3] == 0:
        raise ValueError(
            f"empty representations: base {tuple(b.shape)}, snapshots {tuple(s.shape)}"
        )
    return b, s, int(s.shape[0]), int(s.shape[1])
