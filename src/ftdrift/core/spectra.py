"""Weight-space diagnostics: spectra of weight updates, the rank holding a share of their energy,
intruder dimensions (at one point and over a sweep of top-k and ε).

All decompositions run in float64 (weights are often stored in half precision,
and the small singular values that drive effective rank are the first to be
lost). Functions accept numpy arrays or torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "effective_rank",
    "stable_rank",
    "intruder_dimensions",
    "intruder_cosines",
    "intruder_sweep",
    "intruder_counts",
    "energy_rank",
    "singular_values",
    "spectrum_summary",
    "singular_value_summary",
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


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def intruder_cosines(w_base: Any, w_ft: Any, k: int) -> np.ndarray:
    """For each of the top-``k`` left singular vectors of ``w_ft``, its largest absolute cosine
    similarity with any left singular vector of ``w_base`` (float64, shape ``[min(k, min(out, in))]``).

    Both matrices are ``[out, in]`` (same shape; numpy arrays or torch tensors of any float dtype),
    decomposed once each in float64 with thin SVDs: the base's ``min(out, in)`` vectors span its
    column space; the rest of a full basis is arbitrary when out > in. Singular vectors have unit
    norm, so the cosine is just ``|U_base^T u|``. An intruder at threshold ε is a value below ε
    (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").
    Raises ValueError for shapes that differ, a non-positive ``k`` or non-finite entries.
    """
    wb, wf = _matrix64(w_base, "w_base"), _matrix64(w_ft, "w_ft")
    if wb.shape != wf.shape:
        raise ValueError(f"w_base and w_ft shapes differ: {wb.shape} vs {wf.shape}")
    k = _positive_int(k, "k")
    ub = np.linalg.svd(wb, full_matrices=False)[0]
    uf = np.linalg.svd(wf, full_matrices=False)[0][:, :k]
    return np.abs(ub.T @ uf).max(axis=0)  # one value per fine-tuned vector


def intruder_dimensions(w_base: Any, w_ft: Any, k: int = 10, epsilon: float = 0.5) -> int:
    """Number of intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full
    Fine-tuning: An Illusion of Equivalence").

    Takes the top-``k`` left singular vectors of ``w_ft``; for each, its maximum
    absolute cosine similarity with all left singular vectors of ``w_base`` (thin
    SVD: the ``min(out, in)`` vectors of the column space; the rest of a full
    basis is arbitrary when out > in); counts those below ``epsilon``. Singular
    vectors have unit norm, so the cosine is just ``|U_base^T u|`` (see `intruder_cosines`).
    This is the detection step of peft's ``reduce_intruder_dimension``
    (``peft.tuners.lora.intruders``), which logs the same per-layer count but runs
    its SVDs in the weights' own precision (float32 for fp32/fp16/bf16 weights).
    """
    return int(np.sum(intruder_cosines(w_base, w_ft, k) < epsilon))


def _epsilons(epsilons: Sequence[float]) -> np.ndarray:
    eps = np.asarray(list(epsilons), dtype=np.float64)
    if eps.ndim != 1 or eps.size == 0 or not np.isfinite(eps).all():
        raise ValueError(f"epsilons must be a non-empty list of finite numbers, got {list(epsilons)!r}")
    return eps


def intruder_counts(max_cosines: Any, ks: Sequence[int], epsilons: Sequence[float]) -> np.ndarray:
    """Intruder counts for every (k, ε) from `intruder_cosines` computed for the largest k (int array
    ``[len(ks), len(epsilons)]``): entry [i, j] counts the first ``ks[i]`` values below ``epsilons[j]``
    (all of them when ``ks[i]`` exceeds their number, as `intruder_dimensions` does)."""
    ks = [_positive_int(k, "k") for k in ks]
    eps = _epsilons(epsilons)
    cos = np.asarray(max_cosines, dtype=np.float64).ravel()
    # below[j, n] = vector n is an intruder at epsilons[j]; a prefix sum gives every k at once
    below = np.concatenate([np.zeros((len(eps), 1), dtype=int), np.cumsum(cos[None, :] < eps[:, None], axis=1)],
                           axis=1)
    n = np.minimum(np.asarray(ks, dtype=int), cos.size)
    return below[:, n].T.astype(int).reshape(len(ks), len(eps))


def intruder_sweep(w_base: Any, w_ft: Any, ks: Sequence[int], epsilons: Sequence[float]) -> np.ndarray:
    """Intruder dimensions for every top-k in `ks` and threshold ε in `epsilons` (int array
    ``[len(ks), len(epsilons)]``, entry [i, j] = ``intruder_dimensions(w_base, w_ft, ks[i], epsilons[j])``).

    The two SVDs (float64) run once for the whole grid, for the largest k; counts for a smaller
    k are over its first singular vectors. A k beyond ``min(out, in)`` counts all of them.
    Shuttleworth et al. 2024 report intruders over such a sweep of ε (and k), not at one point.
    Raises ValueError for an empty `ks`, a non-positive k, or empty / non-finite `epsilons`.
    """
    ks = [_positive_int(k, "k") for k in ks]
    if not ks:
        raise ValueError("ks must hold at least one top-k value")
    return intruder_counts(intruder_cosines(w_base, w_ft, max(ks)), ks, epsilons)


def singular_values(matrix: Any) -> np.ndarray:
    """Singular values of a 2-D matrix, float64, descending."""
    return np.linalg.svd(_matrix64(matrix, "matrix"), compute_uv=False)


def energy_rank(delta_or_singular_values: Any, fraction: float = 0.9) -> int:
    """Fewest singular values whose squared sum reaches ``fraction`` of ``||ΔW||_F^2 = sum(s^2)``.

    Takes either ΔW (a 2-D matrix, decomposed in float64) or its singular values (1-D, any
    order). Between 1 and rank(ΔW); 0 for ΔW = 0 (nothing to explain). ``fraction`` in (0, 1].
    The comparison allows a relative 1e-12 of round-off so that exact shares (e.g. fraction 0.5 of
    two equal values) count as reached. The truncated-SVD energy criterion of PCA (Eckart–Young:
    the best rank-n approximation keeps exactly the top n squared singular values).
    Example: s = [3, 2, 1] → shares 9/14, 13/14, 1 → fraction 0.9 needs 2.
    """
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(delta_or_singular_values, torch.Tensor):
        a = delta_or_singular_values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        a = np.asarray(delta_or_singular_values, dtype=np.float64)
    if a.ndim == 2:
        s = singular_values(a)
    elif a.ndim == 1:
        if not np.isfinite(a).all():
            raise ValueError("singular values contain NaN or infinite values")
        if (a < 0).any():
            raise ValueError("singular values must be non-negative")
        s = np.sort(a)[::-1]
    else:
        raise ValueError(f"energy_rank takes a 2-D matrix or 1-D singular values, got shape {a.shape}")
    energy = np.cumsum(s**2)
    if energy.size == 0 or energy[-1] == 0:
        return 0
    reached = energy >= float(fraction) * energy[-1] * (1 - 1e-12)
    return int(np.argmax(reached)) + 1


def spectrum_summary(delta: Any) -> dict[str, float]:
    """Spectrum of a weight update: effective_rank, stable_rank, frobenius_norm,
    top_singular_value (all float)."""
    return singular_value_summary(singular_values(_matrix64(delta, "delta")))


def singular_value_summary(s: Any) -> dict[str, float]:
    """`spectrum_summary` from a matrix's singular values (1-D, non-negative, any order)."""
    s = np.sort(np.asarray(s, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        raise ValueError("singular values are empty")
    top = float(s[0])
    fro = float(np.sqrt(np.sum(s**2)))
    return {
        "effective_rank": effective_rank(s),
        "stable_rank": float(fro**2 / top**2) if top > 0 else 0.0,
        "frobenius_norm": fro,
        "top_singular_value": top,
    }
