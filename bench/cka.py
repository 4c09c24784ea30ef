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
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import best_of, load  # noqa: E402


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
        out = {
            "shape": {"layers": layers, "snapshots": snapshots, "n": n, "d": d, "stored_dtype": "float16"},
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
