"""Benchmark 4: linear CKA of all layers x all snapshots of a run, ftdrift vs a naive numpy loop.

* naive   -- the textbook Gram-matrix formulation of Kornblith et al. (2019) as in their reference
  notebook, per (snapshot, layer) pair with nothing shared: K = X X^T, L = Y Y^T, both
  double-centred, CKA = <Kc, Lc> / (||Kc||_F ||Lc||_F), float64.
* ftdrift -- `ftdrift.core.similarity.cka_matrix(base, snapshots)` (CPU, numpy backend), what the
  drift rule calls.

Inputs: synthetic pooled representations shaped like a MiniLM run ([L, n, d] base and
[S, L, n, d] snapshots, default L=7 layers incl. embeddings, S=10, n=1000 probe examples,
d=384), stored as float16 like ftdrift's snapshot stores, non-zero mean, low effective rank,
drifting more with depth and training step, so CKA values spread over ~0.1..1.

FLOP bound: `cka_matrix_flops` counts the FLOPs of cka_matrix's algorithm for the shape and
`peak_gemm_flops` measures the best float64 GEMM rate of this machine at the same BLAS thread
limit; bound = FLOPs / rate is the least time any float64 implementation of this algorithm can
take, and `flop_bound_ratio` = bound / measured (1.0 = at the bound). `time_by_step_s` re-enacts
the algorithm's steps with a stopwatch to show where the rest goes.

Threads: BLAS is limited to `blas_threads` (default 1) for both sides. The drift rule declares
no `threads:`, and Snakemake sets OPENBLAS_NUM_THREADS to the rule's threads (1) for script
jobs, so 1 thread is what the workflow runs with.

`sketch_float32` (investigation only, not the library): the same algorithm as cka_matrix with
float64 centring and float64 accumulation of the final sums but float32 matrix products, to
show what that change would buy (speed, and the difference to the float64 naive reference).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import best_of, load


# ----------------------------------------------------------------------------- naive baseline
def gram_linear(x: np.ndarray) -> np.ndarray:
    return x.dot(x.T)


def center_gram(gram: np.ndarray) -> np.ndarray:
    gram = gram.copy()
    means = np.mean(gram, 0, dtype=np.float64)
    means -= np.mean(means) / 2
    gram -= means[:, None]
    gram -= means[None, :]
    return gram


def cka_naive_pair(x: np.ndarray, y: np.ndarray) -> float:
    kx = center_gram(gram_linear(x))
    ky = center_gram(gram_linear(y))
    return float(kx.ravel().dot(ky.ravel()) / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def cka_naive(base: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    S, L = snapshots.shape[:2]
    out = np.zeros((S, L))
    for s in range(S):
        for l in range(L):
            out[s, l] = cka_naive_pair(base[l].astype(np.float64), snapshots[s, l].astype(np.float64))
    return out


# ----------------------------------------------------------------------------- investigation
def sketch_float32(base: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """Biased linear CKA like cka_matrix's feature-space path, with float32 products (n > d)."""
    S, L, n, d = snapshots.shape
    out = np.zeros((S, L))
    for l in range(L):
        x = base[l].astype(np.float64)
        x -= x.mean(0)
        x32 = x.astype(np.float32)
        gx = (x32.T @ x32).astype(np.float64)
        xss = np.vdot(gx, gx)
        y = np.empty((n, S, d))
        y[...] = snapshots[:, l].transpose(1, 0, 2)
        y -= y.mean(0, keepdims=True)
        y32 = y.astype(np.float32)
        prod = (x32.T @ y32.reshape(n, S * d)).reshape(d, S, d).astype(np.float64)
        cross = np.einsum("acd,acd->c", prod, prod)
        for j in range(S):
            ys = np.ascontiguousarray(y32[:, j])
            g = (ys.T @ ys).astype(np.float64)
            out[j, l] = cross[j] / np.sqrt(xss * np.vdot(g, g))
    return out


# ----------------------------------------------------------------------------- the FLOP bound
def cka_matrix_flops(layers: int, snapshots: int, n: int, d1: int, d2: int) -> dict:
    """Floating-point operations of `cka_matrix` (biased, CPU) for base [L, n, d1] and snapshots
    [S, L, n, d2], counted from its algorithm (multiply and add = 2 FLOPs).

    Feature-space path (max(d1, d2) < n), per layer: the base's X^T X once (syrk: n d1 (d1 + 1)),
    one X^T [Y_1 .. Y_S] product (gemm: 2 n d1 d2 per snapshot), each snapshot's Y^T Y (syrk:
    n d2 (d2 + 1)) and the Frobenius sums (2 d^2 each). Gram path (n <= max(d)): X X^T (syrk
    n (n + 1) d1) once, Y Y^T per snapshot (n (n + 1) d2) and two n^2 inner products. Both: the
    element-wise passes (column means, centring, row norms, the raw norm: ~8 n d per matrix).
    Returns {"matrix": products, "elementwise": the rest, "total"}.
    """
    if max(d1, d2) < n:
        base = n * d1 * (d1 + 1) + 2 * d1 * d1
        per_snap = 2 * n * d1 * d2 + n * d2 * (d2 + 1) + 2 * d1 * d2 + 2 * d2 * d2
    else:
        base = n * (n + 1) * d1 + 2 * n * n
        per_snap = n * (n + 1) * d2 + 4 * n * n
    matrix = layers * (base + snapshots * per_snap)
    elementwise = layers * (8 * n * d1 + snapshots * 8 * n * d2)
    return {"matrix": matrix, "elementwise": elementwise, "total": matrix + elementwise}


def peak_gemm_flops(size: int = 2048, repeats: int = 3) -> float:
    """Achievable float64 FLOP/s of this machine's BLAS under the current thread limit: the best of
    `repeats` products of two size x size float64 matrices (2 size^3 FLOPs each)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    a @ b  # warm-up: thread pool and page faults
    seconds, _ = best_of(lambda: a @ b, repeats)
    return 2.0 * size**3 / seconds


def profile_feature_path(base: np.ndarray, snapshots: np.ndarray, repeats: int = 2) -> dict:
    """Where cka_matrix's time goes (feature path), re-enacting its steps with a stopwatch around
    each: float16 -> float64 conversion into [n, S, d] layout, centring and row norms, the cross
    product X^T [Y_1 .. Y_S], the per-snapshot Y^T Y, the base's statistics. Seconds (best of
    `repeats`) summed over layers. An investigation of the library's algorithm, not the library."""
    import time

    S, L, n, d = snapshots.shape
    best: dict[str, float] = {}
    for _ in range(repeats):
        t = {"convert": 0.0, "centre_and_norms": 0.0, "cross_gemm": 0.0, "snapshot_syrk": 0.0, "base": 0.0}
        for l in range(L):
            t0 = time.perf_counter()
            x = base[l].astype(np.float64)
            x -= x.mean(0)
            gx = x.T @ x
            np.vdot(gx, gx)
            t1 = time.perf_counter()
            y = np.empty((n, S, d))
            y[...] = snapshots[:, l].transpose(1, 0, 2)
            t2 = time.perf_counter()
            np.sqrt(np.einsum("icd,icd->c", y, y))
            y -= y.mean(axis=0, keepdims=True)
            np.einsum("icd,icd->ci", y, y)
            t3 = time.perf_counter()
            prod = (x.T @ y.reshape(n, S * d)).reshape(-1, S, d)
            np.einsum("acd,acd->c", prod, prod)
            t4 = time.perf_counter()
            for j in range(S):
                ys = y[:, j]
                g = ys.T @ ys
                np.vdot(g, g)
            t5 = time.perf_counter()
            for key, dt in (("base", t1 - t0), ("convert", t2 - t1), ("centre_and_norms", t3 - t2),
                            ("cross_gemm", t4 - t3), ("snapshot_syrk", t5 - t4)):
                t[key] += dt
        best = t if not best else {k: min(best[k], t[k]) for k in t}
    best["total"] = sum(best.values())
    return best


# ----------------------------------------------------------------------------- inputs
def make_inputs(layers: int, snapshots: int, n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rank = min(64, d)
    base = rng.standard_normal((layers, n, rank)) @ rng.standard_normal((rank, d))
    base += 0.3 * rng.standard_normal((layers, n, d)) + 2.0
    other = rng.standard_normal((layers, n, rank)) @ rng.standard_normal((rank, d)) + 2.0
    # mixing weight grows with the snapshot index and the depth: CKA from ~1 down to ~0.1
    a = 0.8 * (np.arange(snapshots)[:, None] / max(snapshots - 1, 1)) * ((np.arange(layers)[None, :] + 1) / layers)
    a = a[:, :, None, None]
    snaps = (1 - a) * base[None] + a * other[None] + 0.1 * rng.standard_normal((snapshots, layers, n, d))
    return base.astype(np.float16), snaps.astype(np.float16)


def run(layers: int = 7, snapshots: int = 10, n: int = 1000, d: int = 384, repeats: int = 3,
        blas_threads: int = 1, sketch: bool = True) -> dict:
    from threadpoolctl import threadpool_limits

    from ftdrift.core.similarity import cka_matrix

    base, snaps = make_inputs(layers, snapshots, n, d)
    load_before = load()
    with threadpool_limits(blas_threads):
        fast_s, fast = best_of(lambda: cka_matrix(base, snaps, device="cpu"), repeats)
        naive_s, naive = best_of(lambda: cka_naive(base, snaps), 1)
        peak = peak_gemm_flops()
        flops = cka_matrix_flops(layers, snapshots, n, d, d)
        bound_s = flops["total"] / peak
        out = {
            "shape": {"layers": layers, "snapshots": snapshots, "n": n, "d": d, "stored_dtype": "float16"},
            # the float64 FLOP bound: cka_matrix's FLOPs at this machine's best float64 GEMM rate
            "flops": flops, "peak_gemm_gflops": peak / 1e9, "flop_bound_s": bound_s,
            "flop_bound_ratio": bound_s / fast_s, "achieved_gflops": flops["total"] / fast_s / 1e9,
            "time_by_step_s": profile_feature_path(base, snaps) if n > d else None,
            "pairs": layers * snapshots, "blas_threads": blas_threads,
            "naive_s": naive_s, "ftdrift_s": fast_s, "speedup": naive_s / fast_s,
            "max_abs_diff": float(np.max(np.abs(fast - naive))),
            "cka_range": [float(naive.min()), float(naive.max())],
        }
        if sketch and n > d:
            sk_s, sk = best_of(lambda: sketch_float32(base, snaps), repeats)
            out["sketch_float32"] = {"seconds": sk_s, "speedup_vs_naive": naive_s / sk_s,
                                     "speedup_vs_ftdrift": fast_s / sk_s,
                                     "max_abs_diff": float(np.max(np.abs(sk - naive)))}
    out["load_avg"] = {"before": load_before, "after": load()}
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--snapshots", type=int, default=10)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blas-threads", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(run(a.layers, a.snapshots, a.n, a.d, a.repeats, a.blas_threads), indent=2))
