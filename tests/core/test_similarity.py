"""Tests for ftdrift.core.similarity against independent reference computations.

The references below follow the textbook definitions (explicit centering
matrix H, Song et al.'s unbiased HSIC written term by term on *uncentred*
Gram matrices) rather than the algebraic shortcuts used in the module.
"""

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from ftdrift.core.similarity import (
    cka_matrix,
    cosine_matrix,
    linear_cka,
    procrustes_distance,
)


# ----------------------------------------------------------------------------
# independent reference implementations
# ----------------------------------------------------------------------------
def ref_hsic(k, l):
    """Biased HSIC: tr(K H L H) / (n-1)^2 with the explicit centering matrix."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased(k, l):
    """Song et al. (2012) unbiased HSIC, term by term."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def ref_cka(x, y, debiased=False):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k, l = x @ x.T, y @ y.T  # deliberately uncentred: the estimators centre
    h = ref_hsic_unbiased if debiased else ref_hsic
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def related_pair(rng, n, d1, d2, noise=1.0):
    x = rng.standard_normal((n, d1)) + 3.0  # non-zero mean: centring matters
    y = x @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return x, y


# ----------------------------------------------------------------------------
# linear_cka
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,d1,d2", [(40, 5, 7), (12, 30, 20)])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("method", ["auto", "feature", "gram"])
def test_linear_cka_matches_reference(rng, n, d1, d2, debiased, method):
    x, y = related_pair(rng, n, d1, d2)
    expected = ref_cka(x, y, debiased)
    assert linear_cka(x, y, debiased=debiased, method=method) == pytest.approx(
        expected, rel=1e-9, abs=1e-12
    )


def test_gram_and_feature_formulas_agree(rng):
    for n, d in [(50, 10), (10, 50), (30, 30)]:
        x, y = related_pair(rng, n, d, d + 3, noise=2.0)
        for debiased in (False, True):
            a = linear_cka(x, y, debiased, method="feature")
            b = linear_cka(x, y, debiased, method="gram")
            assert a == pytest.approx(b, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(rng, debiased):
    x = rng.standard_normal((30, 8))
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    wide = rng.standard_normal((10, 40))
    assert linear_cka(wide, wide, debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariance_orthogonal_scaling_translation(rng, debiased):
    x, y = related_pair(rng, 60, 12, 9)
    base = linear_cka(x, y, debiased)
    q = random_orthogonal(12, rng)
    assert linear_cka(x @ q, y, debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 7.5 * y, debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(0.01 * x @ q + 5.0, y - 2.0, debiased) == pytest.approx(base, rel=1e-10)


def test_not_invariant_to_anisotropic_scaling(rng):
    # Sanity check that the invariance tests are not vacuous.
    x, y = related_pair(rng, 60, 4, 4)
    stretched = x * np.array([10.0, 1.0, 1.0, 0.1])
    assert abs(linear_cka(stretched, y) - linear_cka(x, y)) > 1e-3


def test_debiased_near_zero_for_independent_representations():
    rng = np.random.default_rng(7)
    n, d = 1000, 64
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    biased = linear_cka(x, y)
    debiased = linear_cka(x, y, debiased=True)
    assert abs(debiased) < 0.01
    # ...whereas the biased estimator is clearly positive at this d/n.
    assert biased > 0.03


def test_float16_and_bfloat16_inputs(rng):
    x, y = related_pair(rng, 50, 6, 6)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    # Reference on exactly the float16 values, computed in float64.
    expected = ref_cka(x16.astype(np.float64), y16.astype(np.float64))
    assert linear_cka(x16, y16) == pytest.approx(expected, rel=1e-10)
    assert linear_cka(torch.from_numpy(x16), torch.from_numpy(y16)) == pytest.approx(
        expected, rel=1e-10
    )
    xb = torch.from_numpy(x).to(torch.bfloat16)
    yb = torch.from_numpy(y).to(torch.bfloat16)
    expected_b = ref_cka(xb.double().numpy(), yb.double().numpy(), debiased=True)
    assert linear_cka(xb, yb, debiased=True) == pytest.approx(expected_b, rel=1e-10)


def test_constant_representation_gives_zero_not_nan(rng):
    const = np.full((20, 3), 0.1)
    y = rng.standard_normal((20, 4))
    for debiased in (False, True):
        assert linear_cka(const, y, debiased) == 0.0
        assert linear_cka(y, const, debiased) == 0.0


def test_debiased_never_nan_on_tiny_samples():
    rng = np.random.default_rng(3)
    vals = []
    for _ in range(300):
        n = int(rng.integers(4, 7))
        x = rng.standard_normal((n, int(rng.integers(1, 4))))
        y = rng.standard_normal((n, int(rng.integers(1, 4))))
        vals.append(linear_cka(x, y, debiased=True))
    vals = np.array(vals)
    assert np.isfinite(vals).all()


@pytest.mark.parametrize("n,d", [(4, 1), (5, 3), (9, 2), (6, 12)])
def test_debiased_zero_self_hsic_maps_to_zero(rng, n, d):
    # All rows equal but one: the unbiased HSIC(x, x) is exactly 0 in exact
    # arithmetic (check with the reference), so debiased CKA is undefined.
    x = np.full((n, d), 0.1)
    x[-1] += rng.standard_normal(d)
    assert ref_hsic_unbiased(x @ x.T, x @ x.T) == pytest.approx(0.0, abs=1e-12)
    y = rng.standard_normal((n, 3))
    for method in ("feature", "gram"):
        assert linear_cka(x, y, debiased=True, method=method) == 0.0
        assert linear_cka(y, x, debiased=True, method=method) == 0.0
    assert cka_matrix(x[None], y[None, None, :, :], debiased=True, device="cpu")[0, 0] == 0.0


def test_linear_cka_input_errors(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="same number of examples"):
        linear_cka(x, rng.standard_normal((11, 3)))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x.ravel(), x.ravel())
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[None], x[None])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, x)
    with pytest.raises(ValueError, match="method"):
        linear_cka(x, x, method="nope")


# ----------------------------------------------------------------------------
# cka_matrix
# ----------------------------------------------------------------------------
def naive_cka_matrix(base, snaps, debiased):
    S, L = snaps.shape[:2]
    out = np.empty((S, L))
    for s in range(S):
        for l in range(L):
            out[s, l] = ref_cka(base[l], snaps[s, l], debiased)
    return out


@pytest.mark.parametrize("n,d", [(30, 6), (8, 20)])  # feature and Gram regimes
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cka_matrix_matches_naive_loop(n, d, debiased, backend):
    rng = np.random.default_rng(11)
    S, L = 3, 4
    base = rng.standard_normal((L, n, d)) + 1.0
    noise = np.linspace(0.1, 2, S)[:, None, None, None]  # from similar to unrelated
    snaps = base[None] + rng.standard_normal((S, L, n, d)) * noise
    expected = naive_cka_matrix(base, snaps, debiased)
    for chunk_bytes in (1, 10**9):  # one snapshot per chunk, and everything at once
        out = cka_matrix(base, snaps, debiased=debiased, device="cpu",
                         max_chunk_bytes=chunk_bytes, backend=backend)
        assert out.shape == (S, L) and out.dtype == np.float64
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


def test_cka_matrix_torch_float16_and_different_widths():
    rng = np.random.default_rng(5)
    S, L, n = 2, 3, 25
    base = rng.standard_normal((L, n, 5)).astype(np.float16)
    snaps = rng.standard_normal((S, L, n, 9)).astype(np.float16)
    expected = naive_cka_matrix(base.astype(np.float64), snaps.astype(np.float64), False)
    out = cka_matrix(torch.from_numpy(base), torch.from_numpy(snaps), device="cpu")
    np.testing.assert_allclose(out, expected, atol=1e-9)
    out_t = cka_matrix(torch.from_numpy(base), torch.from_numpy(snaps), device="cpu",
                       backend="torch")
    np.testing.assert_allclose(out_t, expected, atol=1e-9)


def test_cka_matrix_identity_and_constant_layers():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((2, 20, 4))
    snaps = np.stack([base, base * 3.0 + 1.0])
    snaps[1, 1] = 0.5  # a constant layer: CKA undefined -> 0.0
    for backend in ("numpy", "torch"):
        out = cka_matrix(base, snaps, device="cpu", backend=backend)
        np.testing.assert_allclose(out[0], 1.0, atol=1e-12)
        assert out[1, 0] == pytest.approx(1.0, abs=1e-12)
        assert out[1, 1] == 0.0


def test_cka_matrix_shape_errors():
    base = np.zeros((2, 10, 3))
    with pytest.raises(ValueError, match="4-D"):
        cka_matrix(base, np.zeros((2, 10, 3)), device="cpu")
    with pytest.raises(ValueError, match="must match base"):
        cka_matrix(base, np.zeros((1, 3, 10, 3)), device="cpu")
    with pytest.raises(ValueError, match="at least 4"):
        cka_matrix(base[:, :3], np.zeros((1, 2, 3, 3)), debiased=True, device="cpu")
    bad = np.ones((1, 2, 10, 3))
    bad[0, 1, 2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        cka_matrix(np.random.default_rng(0).standard_normal((2, 10, 3)), bad, device="cpu")


# ----------------------------------------------------------------------------
# cosine_matrix
# ----------------------------------------------------------------------------
def test_cosine_matrix_matches_naive_loop():
    rng = np.random.default_rng(4)
    S, L, n, d = 3, 2, 7, 5
    base = rng.standard_normal((L, n, d))
    snaps = rng.standard_normal((S, L, n, d)).astype(np.float32)
    snaps[0, 0, 3] = 0.0  # a zero row: cosine defined as 0
    expected = np.empty((S, L))
    for s in range(S):
        for l in range(L):
            vals = []
            for i in range(n):
                a, b = base[l, i], snaps[s, l, i].astype(np.float64)
                na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
                vals.append(0.0 if na * nb == 0 else np.sum(a * b) / (na * nb))
            expected[s, l] = np.mean(vals)
    out = cosine_matrix(base, snaps, device="cpu", max_chunk_bytes=1)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(cosine_matrix(base, base[None] * 2.0, device="cpu"), 1.0, atol=1e-12)
    np.testing.assert_allclose(cosine_matrix(base, -base[None], device="cpu"), -1.0, atol=1e-12)


# ----------------------------------------------------------------------------
# ----------------------------------------------------------------------------
# ----------------------------------------------------------------------------
# Procrustes
# ----------------------------------------------------------------------------
def ref_procrustes(x, y):
    """min over orthogonal R of ||X R - Y||_F^2 via scipy, after normalisation."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    r, _ = orthogonal_procrustes(x, y)
    return np.sum((x @ r - y) ** 2)


@pytest.mark.parametrize("n,d", [(40, 6), (8, 15)])
def test_procrustes_matches_scipy(rng, n, d):
    x, y = related_pair(rng, n, d, d, noise=1.5)
    expected = ref_procrustes(x, y)
    assert procrustes_distance(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.0 <= procrustes_distance(x, y) <= 2.0


def test_procrustes_invariances_and_symmetry(rng):
    x, y = related_pair(rng, 30, 5, 5)
    q = random_orthogonal(5, rng)
    assert procrustes_distance(x, 4.0 * x @ q - 1.0) == pytest.approx(0.0, abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(procrustes_distance(y, x), rel=1e-12)
    with pytest.raises(ValueError, match="constant"):
        procrustes_distance(np.ones((30, 5)), y)


def test_bootstrap_linear_cka_equals_cka_of_each_resample(rng):
    from ftdrift.core import similarity as sim

    """Count-weighted Grams = CKA recomputed from scratch on the resampled rows (with repeats)."""
    x = rng.normal(size=(30, 5))
    y = x @ rng.normal(size=(5, 7)) + rng.normal(size=(30, 7))
    indices = sim.probe_resamples(30, 6, seed=3)
    got = sim.bootstrap_linear_cka(x, y, indices)

    def naive(a, b):  # Kornblith et al. 2019, eq. for linear CKA, by hand
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    np.testing.assert_allclose(got, [naive(x[i], y[i]) for i in indices], rtol=1e-10)
    # features with huge means (as Llama's outlier dimensions under mean pooling) lose no digits
    shift = np.zeros(5)
    shift[:2] = 3e4
    np.testing.assert_allclose(sim.bootstrap_linear_cka(x + shift, y, indices), got, rtol=1e-9)
    assert indices.shape == (6, 30) and np.array_equal(indices, sim.probe_resamples(30, 6, seed=3))


def test_bootstrap_interval_is_centred_on_the_estimate():
    from ftdrift.core import similarity as sim

    replicates = np.array([0.70, 0.72, 0.74, 0.76])
    low, high = sim.bootstrap_interval(0.6, replicates, 0.95)
    half = 1.959963984540054 * np.std(replicates, ddof=1)
    assert low == pytest.approx(0.6 - half) and high == pytest.approx(0.6 + half)
