"""Tests for ftdrift.core.spectra against hand-computed values and explicit loops."""

import math

import numpy as np
import pytest
import torch

from ftdrift.core.spectra import (
    effective_rank,
    intruder_dimensions,
    spectrum_summary,
    stable_rank,
)


def test_effective_rank_hand_values():
    # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335...
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(h))
    assert effective_rank([3.0, 1.0]) == pytest.approx(1.754765, rel=1e-6)
    assert effective_rank([2.0, 2.0, 2.0, 2.0]) == pytest.approx(4.0)
    assert effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0)  # zeros ignored
    assert effective_rank([1.0, 1.0, 0.0]) == pytest.approx(2.0)
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(h))
    assert effective_rank([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        effective_rank([1.0, -1.0])


def test_stable_rank_hand_values():
    # diag(3, 4): ||M||_F^2 = 25, ||M||_2^2 = 16
    assert stable_rank(np.diag([3.0, 4.0])) == pytest.approx(25 / 16)
    assert stable_rank(np.outer([1.0, 2.0], [3.0, 1.0, 1.0])) == pytest.approx(1.0)  # rank one
    assert stable_rank(np.eye(5)) == pytest.approx(5.0)
    assert stable_rank(torch.eye(3, dtype=torch.float16)) == pytest.approx(3.0)
    assert stable_rank(np.zeros((2, 3))) == 0.0


def test_intruder_dimensions_hand_examples():
    base = np.diag([2.0, 1.0])  # left singular vectors e1, e2
    c = math.cos(math.pi / 4)
    rot = np.array([[c, -c], [c, c]])
    ft = rot @ base  # left singular vectors rotated by 45 degrees: |cos| = 0.7071
    assert intruder_dimensions(base, ft, k=2, epsilon=0.5) == 0
    assert intruder_dimensions(base, ft, k=2, epsilon=0.75) == 2
    assert intruder_dimensions(base, ft, k=1, epsilon=0.75) == 1
    # 3-D: ft = Q diag(3, 2, 1) with Q's columns u1 = (1,1,1)/sqrt3, u2 = (1,-1,0)/sqrt2,
    # u3 = (1,1,-2)/sqrt6; their max |cos| with the base vectors e_i are
    # 1/sqrt3 = 0.577, 1/sqrt2 = 0.707 and 2/sqrt6 = 0.816.
    base3 = np.diag([3.0, 2.0, 1.0])
    q = np.column_stack([np.ones(3) / math.sqrt(3), np.array([1.0, -1.0, 0.0]) / math.sqrt(2),
                         np.array([1.0, 1.0, -2.0]) / math.sqrt(6)])
    ft3 = q @ base3
    assert intruder_dimensions(base3, ft3, k=1, epsilon=0.5) == 0
    assert intruder_dimensions(base3, ft3, k=1, epsilon=0.6) == 1
    assert intruder_dimensions(base3, ft3, k=3, epsilon=0.75) == 2
    assert intruder_dimensions(base3, ft3, k=3, epsilon=0.9) == 3


def naive_intruders(w_base, w_ft, k, eps):
    ub = np.linalg.svd(w_base)[0]
    uf = np.linalg.svd(w_ft)[0]
    count = 0
    for j in range(k):
        best = 0.0
        for i in range(min(w_base.shape)):
            a, b = uf[:, j], ub[:, i]
            best = max(best, abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        count += best < eps
    return count


def test_intruder_dimensions_random_rank_one_update():
    rng = np.random.default_rng(1)
    d = 64
    q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w_base = q1 @ np.diag(10 * 0.9 ** np.arange(d)) @ q2.T
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    w_ft = w_base + 50.0 * np.outer(u, v)  # a new, dominant direction
    n = intruder_dimensions(w_base, w_ft, k=5, epsilon=0.5)
    assert n == naive_intruders(w_base, w_ft, 5, 0.5)
    assert n >= 1
    assert intruder_dimensions(w_base, w_base, k=5) == 0
    assert intruder_dimensions(w_base, w_base + 1e-6 * rng.standard_normal((d, d)), k=5) == 0
    # rectangular, torch input
    wr = rng.standard_normal((20, 12))
    wr_ft = wr + 30.0 * np.outer(rng.standard_normal(20), rng.standard_normal(12)) / 15
    assert intruder_dimensions(torch.from_numpy(wr), torch.from_numpy(wr_ft), k=4) == \
        naive_intruders(wr, wr_ft, 4, 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        intruder_dimensions(wr, wr.T)


def test_spectrum_summary_hand_values():
    m = np.zeros((3, 4))
    m[0, 0], m[1, 1] = 4.0, 3.0  # singular values 4, 3, 0
    out = spectrum_summary(m)
    p = np.array([4 / 7, 3 / 7])
    assert out["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))))
    assert out["stable_rank"] == pytest.approx(25 / 16)
    assert out["frobenius_norm"] == pytest.approx(5.0)
    assert out["top_singular_value"] == pytest.approx(4.0)
    assert set(out) == {"effective_rank", "stable_rank", "frobenius_norm", "top_singular_value"}
    zero = spectrum_summary(torch.zeros(2, 2))
    assert zero == {"effective_rank": 0.0, "stable_rank": 0.0, "frobenius_norm": 0.0,
                    "top_singular_value": 0.0}
