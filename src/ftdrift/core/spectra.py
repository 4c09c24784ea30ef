"""Weight-space diagnostics: spectra of weight updates, intruder dimensions.

All decompositions run in float64 (weights are often stored in half precision,
and the small singular values that drive effective rank are the first to be
lost). Functions accept numpy arrays or torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "effective_rank",
    "stable_rank",
    "intruder_dimensions",
    "spectrum_summary",
]


def _matrix64(m: Any, name: str) -> np.ndarray:
    """float64 numpy copy of a 2-D array/tensor (any device, any float dtype)."""
    if isinstance(m, torch.Tensor):
        a = m.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        a = np.asarray(m, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def effective_rank(singular_values: Any) -> float:
    """Effective rank of Roy & Vetterli (2007): ``exp(H(p))``, ``p = s / sum(s)``.

    Zero singular values are ignored (0 log 0 = 0). Ranges from 1 (one
    non-zero value) to the number of non-zero values (all equal); 0.0 for an
    all-zero spectrum, which has no meaningful rank.
    """
    if isinstance(singular_values, torch.Tensor):
        s = singular_values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        s = np.asarray(singular_values, dtype=np.float64)
    s = s.ravel()
    if not np.isfinite(s).all():
        raise ValueError("singular_values contains NaN or infinite values")
    if (s < 0).any():
        raise ValueError("singular values must be non-negative")
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(matrix: Any) -> float:
    """Stable rank ``||M||_F^2 / ||M||_2^2`` (between 1 and rank(M)); 0.0 for M = 0."""
    m = _matrix64(matrix, "matrix")
    top = np.linalg.norm(m, ord=2)
    if top == 0:
        return 0.0
    return float(np.sum(m * m) / top**2)


def intruder_dimensions(w_base: Any, w_ft: Any, k: int = 10, epsilon: float = 0.5) -> int:
    """Number of intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full
    Fine-tuning: An Illusion of Equivalence").

    Takes the top-``k`` left singular vectors of ``w_ft``; for each, its maximum
    absolute cosine similarity with all left singular vectors of ``w_base`` (thin
    SVD: the ``min(out, in)`` vectors of the column space; the rest of a full
    basis is arbitrary when out > in); counts those below ``epsilon``. Singular
    vectors have unit norm, so the cosine is just ``|U_base^T u|``.
    This is the detection step of peft's ``reduce_intruder_dimension``
    (``peft.tuners.lora.intruders``), which logs the same per-layer count but runs
    its SVDs in the weights' own precision (float32 for fp32/fp16/bf16 weights).
    """
    wb, wf = _matrix64(w_base, "w_base"), _matrix64(w_ft, "w_ft")
    if wb.shape != wf.shape:
        raise ValueError(f"w_base and w_ft shapes differ: {wb.shape} vs {wf.shape}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    ub = np.linalg.svd(wb, full_matrices=False)[0]
    uf = np.linalg.svd(wf, full_matrices=False)[0][:, : int(k)]
    max_cos = np.abs(ub.T @ uf).max(axis=0)  # one value per fine-tuned vector
    return int(np.sum(max_cos < epsilon))


def spectrum_summary(delta: Any) -> dict[str, float]:
    """Spectrum of a weight update: effective_rank, stable_rank, frobenius_norm,
    top_singular_value (all float)."""
    m = _matrix64(delta, "delta")
    s = np.linalg.svd(m, compute_uv=False)
    top = float(s[0])
    fro = float(np.sqrt(np.sum(s**2)))
    return {
        "effective_rank": effective_rank(s),
        "stable_rank": float(fro**2 / top**2) if top > 0 else 0.0,
        "frobenius_norm": fro,
        "top_singular_value": top,
    }
