"""Representation similarity measures: linear CKA, cosine, Procrustes.

Conventions used throughout
---------------------------
* A representation is a 2-D array ``[n_examples, n_features]``; numpy arrays and
  torch tensors of any float dtype (float16 and bfloat16 included) are accepted.
  Everything is computed in float64 *after* the conversion, because half
  precision activations summed over thousands of examples lose most of their
  digits, and CKA differences between fine-tuning runs are often < 1e-2.
* Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network
  Representations Revisited"), with column-centred X, Y::

      CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
          = <K, L> / (||K||_F ||L||_F),   K = X X^T, L = Y Y^T

  The first (feature-space) form costs O(n d^2), the second (Gram) O(n^2 d);
  we use whichever is cheaper.
* Debiased CKA replaces each HSIC by the unbiased estimator of Song et al.
  (2012), as in Kornblith's reference notebook and Nguyen et al. (2021)::

      HSIC_1(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2))
                      - 2/(n-2) 1'K~L~1] / (n(n-3))

  where K~ is K with its diagonal zeroed. For centred features this reduces to
  ``||Y^T X||^2 - n/(n-2) r_x.r_y + s_x s_y/((n-1)(n-2))`` (times 1/(n(n-3))),
  with r the per-row squared norms and s their sums, which is what we compute.
* Undefined values: CKA is a ratio whose denominator vanishes when a
  representation has no variance (all rows equal), and, for the debiased
  estimator, the *estimates* HSIC_1(X,X) or HSIC_1(Y,Y) can be <= 0 on small
  samples. In all those cases we return **0.0** ("no measurable shared
  structure") instead of NaN/inf, so downstream averages never silently turn
  into NaN. A *negative numerator* of the debiased estimator is kept as is: a
  slightly negative debiased CKA is the honest, unbiased answer for unrelated
  representations, and clipping it to 0 would bias means upwards.
* NaN or infinite inputs raise ValueError (float16 activations overflow easily;
  a NaN similarity would otherwise poison averages far downstream).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ftdrift.core.arrays import (
    DEFAULT_CHUNK_BYTES,
    DEGENERATE_RTOL,
    center,
    check_finite,
    check_pair,
    numpy_view,
    rep_2d,
    resolve_device,
    stack_view,
    to_numpy64,
)

__all__ = [
    "linear_cka",
    "probe_resamples",
    "bootstrap_linear_cka",
    "bootstrap_interval",
    "cka_matrix",
    "cosine_matrix",
    "procrustes_distance",
]

# Debiased self-HSIC estimates below this fraction of (sum of squared row
# norms)^2 are treated as <= 0. Genuine values are ~1/effective-dimension of
# that scale (1e-2..1e-4 for real activations), rounding noise ~1e-16.
_HSIC_RTOL = 1e-12

def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got n={n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 examples, got n={n}")


def _self_terms(c: np.ndarray, gram: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """(||X^T X||_F^2, per-row squared norms, the product itself: X X^T if ``gram`` else
    X^T X) of a centred representation; the Gram form also serves the cross terms."""
    # ``a.T @ a`` / ``a @ a.T`` on the same buffer lets numpy use BLAS syrk.
    g = c @ c.T if gram else c.T @ c
    return float(np.vdot(g, g)), np.einsum("ij,ij->i", c, c), g


def _combine(
    cross: np.ndarray,
    xss: float | np.ndarray,
    yss: np.ndarray,
    rxry: np.ndarray,
    rxrx: float | np.ndarray,
    ryry: np.ndarray,
    sx: float | np.ndarray,
    sy: np.ndarray,
    degenerate: np.ndarray,
    n: int,
    debiased: bool,
) -> np.ndarray:
    """Turn HSIC ingredients into CKA values (0.0 where undefined, see module doc).

    ``cross = ||Y^T X||^2``, ``*ss = ||X^T X||^2``, ``r*r*`` dot products of the
    per-row squared norms, ``s*`` their sums; all arrays broadcast together.
    """
    cross, yss, degenerate = np.asarray(cross), np.asarray(yss), np.asarray(degenerate)
    if debiased:
        a = n / (n - 2.0)
        b = 1.0 / ((n - 1.0) * (n - 2.0))
        # The common 1/(n(n-3)) factor cancels in the ratio and is omitted.
        num = cross - a * rxry + b * sx * sy
        dx = xss - a * rxrx + b * sx * sx
        dy = yss - a * ryry + b * sy * sy
    else:
        num, dx, dy = cross, xss, yss
    dx, dy = np.broadcast_arrays(np.asarray(dx, dtype=np.float64), dy)
    if debiased:
        # An estimate that is zero in exact arithmetic (e.g. all rows equal but
        # one) comes out as +-1e-17 * s^2 after rounding; treat anything that
        # small relative to its natural scale s^2 as non-positive, otherwise
        # the ratio would be rounding noise divided by rounding noise.
        ok = (dx > _HSIC_RTOL * np.square(sx)) & (dy > _HSIC_RTOL * np.square(sy))
    else:
        ok = (dx > 0) & (dy > 0)
    valid = ok & ~degenerate
    out = np.zeros(np.broadcast(num, valid).shape, dtype=np.float64)
    num_b = np.broadcast_to(num, out.shape)
    out[valid] = num_b[valid] / np.sqrt(dx[valid] * dy[valid])
    return out


def _use_gram(method: str, n: int, d1: int, d2: int) -> bool:
    if method == "auto":
        return max(d1, d2) >= n
    if method == "gram":
        return True
    if method == "feature":
        return False
    raise ValueError(f"method must be 'auto', 'feature' or 'gram', got {method!r}")


def linear_cka(x: Any, y: Any, debiased: bool = False, method: str = "auto") -> float:
    """Centred linear CKA between ``x [n, d1]`` and ``y [n, d2]`` (float64).

    ``debiased=True`` uses the unbiased HSIC estimator (needs n >= 4).
    ``method``: 'feature' (||Y^T X||-form), 'gram' (<K, L>-form) or 'auto'
    (feature form when max(d1, d2) < n). Returns 0.0 where CKA is undefined
    (constant representation, non-positive debiased self-HSIC); see module doc.
    """
    xa, ya = rep_2d(x, "x"), rep_2d(y, "y")
    n = check_pair(xa, ya)
    _check_n(n, debiased)
    gram = _use_gram(method, n, xa.shape[1], ya.shape[1])
    xc, xdeg = center(xa)
    yc, ydeg = center(ya)
    xss, rx, gx = _self_terms(xc, gram)
    yss, ry, gy = _self_terms(yc, gram)
    if gram:
        cross = np.vdot(gx, gy)
    else:
        p = yc.T @ xc
        cross = np.vdot(p, p)
    out = _combine(
        cross, xss, yss, rx @ ry, rx @ rx, ry @ ry, rx.sum(), ry.sum(),
        np.asarray(xdeg or ydeg), n, debiased,
    )
    return float(out)


def probe_resamples(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` example indices drawn with replacement: the bootstrap over probe
    examples. A fixed seed gives every run of a task the same replicates (the probe set is the
    same), so replicate b of two runs can be averaged: intervals of seed means and layer means."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_linear_cka(x: Any, y: Any, indices: np.ndarray) -> np.ndarray:
    """Biased linear CKA of ``x [n, d1]`` and ``y [n, d2]`` on each resample of examples:
    ``indices [B, n]`` (``probe_resamples``) -> ``[B]`` float64.

    A resample is the same as weighting each example by its count c (sum n), so with the
    Grams K = X X^T, L = Y Y^T built once (O(n^2 d)) every replicate needs only
    c^T (K o L) c, c^T K c, c^T L c and sum_a c_a (Kc)_a (Lc)_a (O(n^2) each), from
    HSIC(K, L) ~ tr(KL) - 2/n 1'KL1 + (1'K1)(1'L1)/n^2 on the resampled Grams.
    Only the biased estimator: a resample repeats examples, and the debiased (U-statistic)
    estimator's removal of self-pairs no longer holds. Duplicates also raise biased CKA (fewer
    distinct examples), so use the replicates' spread, not their percentiles (``bootstrap_interval``).
    A replicate without variance in either representation is 0.0 (module doc).
    """
    xa, ya = rep_2d(x, "x"), rep_2d(y, "y")
    n = check_pair(xa, ya)
    # centre once: a shift of every row changes no resample's centred HSIC, and the formula's terms
    # would otherwise cancel catastrophically for features with large means (Llama's outlier dims)
    xa, ya = xa - xa.mean(axis=0), ya - ya.mean(axis=0)
    counts = np.zeros((len(indices), n), dtype=np.float64)
    for b, idx in enumerate(np.asarray(indices)):
        counts[b] = np.bincount(idx, minlength=n)
    k, l_ = xa @ xa.T, ya @ ya.T

    def hsic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ca, cb = counts @ a, counts @ b  # [B, n]: (K c), (L c)
        trace = np.einsum("bi,bi->b", counts @ (a * b), counts)
        return (trace - 2.0 / n * np.einsum("bi,bi,bi->b", counts, ca, cb)
                + np.einsum("bi,bi->b", ca, counts) * np.einsum("bi,bi->b", cb, counts) / n**2)

    num, dx, dy = hsic(k, l_), hsic(k, k), hsic(l_, l_)
    ok = (dx > 0) & (dy > 0)
    out = np.zeros(len(counts), dtype=np.float64)
    out[ok] = num[ok] / np.sqrt(dx[ok] * dy[ok])
    return out


def bootstrap_interval(estimate: Any, replicates: Any, confidence: float = 0.95) -> tuple[Any, Any]:
    """Normal interval ``estimate -/+ z * sd(replicates)`` (replicates on axis 0).

    The bootstrap's spread measures how much the value moves with another probe sample of the
    same size; its percentiles would not do (duplicated examples shift biased CKA upwards, e.g.
    0.72 on replicates of a pair whose CKA is 0.64), so the interval is centred on the estimate.
    """
    from scipy.stats import norm

    half = norm.ppf(0.5 + confidence / 2.0) * np.std(np.asarray(replicates, dtype=np.float64), axis=0, ddof=1)
    return estimate - half, estimate + half


def _chunk_stats_numpy(src: Any, xc: np.ndarray, kx: np.ndarray | None):
    """cross, ||Y^T Y||^2, row norms, degenerate-mask for a chunk ``[c, n, d']`` (CPU).

    numpy on CPU because its OpenBLAS uses syrk for ``A^T A`` (half the flops)
    and, on the machines we measured, beats torch's CPU float64 matmul; mixing
    both libraries' thread pools in one loop made both slower.
    """
    c, n, d2 = src.shape
    # Convert to float64 and lay out as [n, c, d'] in one pass, so that X^T Y of
    # all c snapshots is a single large matmul.
    y = np.empty((n, c, d2), dtype=np.float64)
    y[...] = numpy_view(src).transpose(1, 0, 2)
    check_finite(y, "snapshots")
    raw = np.sqrt(np.einsum("icd,icd->c", y, y))
    y -= y.mean(axis=0, keepdims=True)
    r = np.einsum("icd,icd->ci", y, y)  # [c, n]
    deg = np.sqrt(r.sum(axis=1)) <= DEGENERATE_RTOL * raw
    cross = np.empty(c)
    yss = np.empty(c)
    if kx is None:
        prod = (xc.T @ y.reshape(n, c * d2)).reshape(-1, c, d2)
        cross[:] = np.einsum("acd,acd->c", prod, prod)
        del prod
        for j in range(c):
            ys = y[:, j]
            g = ys.T @ ys
            yss[j] = np.vdot(g, g)
    else:
        for j in range(c):
            ys = y[:, j]
            ky = ys @ ys.T
            cross[j] = np.vdot(kx, ky)
            yss[j] = np.vdot(ky, ky)
    return cross, yss, r, deg


def _chunk_stats_torch(src: Any, xc: torch.Tensor, kx: torch.Tensor | None):
    """Same as ``_chunk_stats_numpy`` with torch on ``xc.device`` (GPU path)."""
    dev = xc.device
    t = src if isinstance(src, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(src))
    t = t.to(dev)  # stored dtype: smaller host->device copy; convert on the device
    c, n, d2 = t.shape
    y = torch.empty((n, c, d2), dtype=torch.float64, device=dev)
    y.copy_(t.permute(1, 0, 2))
    raw = torch.linalg.vector_norm(y, dim=(0, 2))
    y -= y.mean(dim=0, keepdim=True)
    r = torch.linalg.vector_norm(y, dim=2).square().T  # [c, n]
    deg = torch.sqrt(r.sum(dim=1)) <= DEGENERATE_RTOL * raw
    if kx is None:
        prod = (xc.T @ y.reshape(n, c * d2)).reshape(-1, c, d2)
        cross = prod.square().sum(dim=(0, 2))
        del prod
        g = y.permute(1, 2, 0) @ y.permute(1, 0, 2)  # [c, d', d']
        yss = g.square().sum(dim=(1, 2))
    else:
        yb = y.permute(1, 0, 2)
        ky = yb @ yb.transpose(1, 2)  # [c, n, n]
        cross = (ky * kx).sum(dim=(1, 2))
        yss = ky.square().sum(dim=(1, 2))
    out = [v.cpu().numpy() for v in (cross, yss, r, deg)]
    check_finite(out[0], "snapshots")  # NaN/inf in Y always reaches these sums
    check_finite(out[2], "snapshots")
    return tuple(out)


def cka_matrix(
    base: Any,
    snapshots: Any,
    debiased: bool = False,
    device: Any = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str = "auto",
) -> np.ndarray:
    """Linear CKA of every snapshot layer against the matching base layer.

    ``base`` is ``[L, n, d]``, ``snapshots`` ``[S, L, n, d']`` (numpy or torch);
    returns a float64 array ``[S, L]`` with
    ``out[s, l] = linear_cka(base[l], snapshots[s, l], debiased)``.

    Per layer, the base statistics are computed once; snapshots are processed
    in chunks of at most ~``max_chunk_bytes`` of float64 working memory (at
    least one snapshot at a time). Feature-space formula when max(d, d') < n
    (the cross terms of a chunk are then one ``X^T [Y_1 ... Y_c]`` matmul),
    Gram formula otherwise. ``device`` defaults to CUDA if available, else CPU.
    ``backend``: 'auto' (numpy/OpenBLAS on CPU, torch elsewhere), 'torch'
    (torch even on CPU) or 'numpy' (CPU only). Same 0.0-where-undefined
    convention as ``linear_cka``.
    """
    dev = resolve_device(device)
    if backend == "auto":
        backend = "numpy" if dev.type == "cpu" else "torch"
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" and dev.type != "cpu":
        raise ValueError("backend='numpy' runs on the CPU only")
    b, s, S, L = stack_view(base, snapshots)
    n, d1, d2 = int(b.shape[1]), int(b.shape[2]), int(s.shape[3])
    _check_n(n, debiased)
    out = np.zeros((S, L), dtype=np.float64)
    if S == 0:
        return out
    gram = _use_gram("auto", n, d1, d2)
    per_snap = 8 * (2 * n * d2 + (2 * n * n if gram else d1 * d2 + d2 * d2))
    chunk = max(1, int(max_chunk_bytes) // per_snap)

    for l in range(L):
        # Base statistics once per layer (the naive loop recomputes them per pair).
        xa = to_numpy64(b[l])
        check_finite(xa, f"base (layer {l})")
        xc, xdeg = center(xa)
        xss, rx, gx = _self_terms(xc, gram)
        sx = rx.sum()
        kx_np = gx if gram else None  # the base Gram matrix also serves every cross term
        if backend == "numpy":
            xk, kx = xc, kx_np
        else:
            xk = torch.from_numpy(xc).to(dev)
            kx = torch.from_numpy(kx_np).to(dev) if gram else None
        for s0 in range(0, S, chunk):
            s1 = min(s0 + chunk, S)
            stats = _chunk_stats_numpy if backend == "numpy" else _chunk_stats_torch
            cross, yss, ry, ydeg = stats(s[s0:s1, l], xk, kx)
            out[s0:s1, l] = _combine(
                cross, xss, yss, ry @ rx, rx @ rx, np.einsum("ci,ci->c", ry, ry),
                sx, ry.sum(axis=1), ydeg | xdeg, n, debiased,
            )
    return out


def cosine_matrix(
    base: Any,
    snapshots: Any,
    device: Any = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Mean over examples of the cosine similarity of matched rows, ``[S, L]``.

    ``out[s, l] = mean_i cos(base[l, i], snapshots[s, l, i])`` in float64 (torch
    on ``device``, default CUDA if available). A row with zero norm has cosine 0
    with anything: there is no direction to compare.
    """
    dev = resolve_device(device)
    b, s, S, L = stack_view(base, snapshots)
    n, d = int(b.shape[1]), int(b.shape[2])
    if s.shape[3] != d:
        raise ValueError(
            f"cosine needs equal feature sizes: base d={d}, snapshots d={s.shape[3]}"
        )
    out = np.zeros((S, L), dtype=np.float64)
    chunk = max(1, int(max_chunk_bytes) // (8 * 2 * n * d))

    def _t(a: Any) -> torch.Tensor:
        a = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        return a.to(dev).to(torch.float64)

    for l in range(L):
        x = _t(b[l])
        xnorm = torch.linalg.vector_norm(x, dim=-1)  # [n]
        for s0 in range(0, S, chunk):
            s1 = min(s0 + chunk, S)
            y = _t(s[s0:s1, l])  # [c, n, d]
            dots = (y * x).sum(-1)  # [c, n]
            norms = torch.linalg.vector_norm(y, dim=-1) * xnorm
            ok = norms > 0
            cos = torch.where(ok, dots / torch.where(ok, norms, torch.ones_like(norms)), 0.0)
            vals = cos.mean(-1).cpu().numpy()
            # NaN/inf anywhere in x or y propagates into dots or norms.
            if not (np.isfinite(vals).all() and bool(torch.isfinite(xnorm).all())):
                raise ValueError(f"base or snapshots (layer {l}) contain NaN or infinite values")
            out[s0:s1, l] = vals
    return out


# --------------------------------------------------------------------------- #
# Procrustes
# --------------------------------------------------------------------------- #
def procrustes_distance(x: Any, y: Any) -> float:
    """Orthogonal Procrustes distance between two representations, in [0, 2].

    Both are column-centred and scaled to unit Frobenius norm; then
    ``min_Q ||X Q - Y||_F^2 = 2 - 2 ||X^T Y||_*`` over orthogonal Q (nuclear
    norm ``||.||_*``; for d1 != d2, Q is a partial isometry). This is the
    *squared* Procrustes residual (0: identical up to rotation, translation and
    isotropic scale). Raises ValueError if a representation is constant, since
    it cannot be scaled to unit norm.
    """
    xa, ya = rep_2d(x, "x"), rep_2d(y, "y")
    n = check_pair(xa, ya)
    xc, xdeg = center(xa)
    yc, ydeg = center(ya)
    if xdeg or ydeg:
        raise ValueError("Procrustes distance is undefined for a constant representation")
    xc /= np.linalg.norm(xc)
    yc /= np.linalg.norm(yc)
    if max(xc.shape[1], yc.shape[1]) <= n:
        sv = np.linalg.svd(xc.T @ yc, compute_uv=False)
    else:
        # Wide case: X^T Y = Vx Sx Ux^T Uy Sy Vy^T has the singular values of the
        # small matrix (Ux Sx)^T (Uy Sy), at O(n^2 d) instead of O(d1 d2 min(d)).
        ux, sx, _ = np.linalg.svd(xc, full_matrices=False)
        uy, sy, _ = np.linalg.svd(yc, full_matrices=False)
        sv = np.linalg.svd((ux * sx).T @ (uy * sy), compute_uv=False)
    dist = 2.0 - 2.0 * float(sv.sum())
    # Rounding can push an exact match a hair outside [0, 2].
    return float(min(max(dist, 0.0), 2.0))
