"""Tests for ftdrift.core.stats: hand-computed intervals, scipy's own t-tests as an
independent reference, and a coverage simulation for the delta-method CI."""

import math

import numpy as np
import pytest
from scipy import stats as st

from ftdrift.core.stats import (
    mean_ci,
    paired_difference,
    relative_change_ci,
    verdict_h1,
    verdict_h2,
    welch_difference,
)

T975_DF4 = 2.7764451051977987  # Student t 97.5% quantile, 4 df (tables)
T975_DF2 = 4.302652729911275  # ... 2 df


def test_mean_ci_hand_values():
    out = mean_ci([1, 2, 3, 4, 5])
    assert out["mean"] == 3.0 and out["n"] == 5
    assert out["std"] == pytest.approx(math.sqrt(2.5))
    half = T975_DF4 * math.sqrt(2.5) / math.sqrt(5)  # 1.963243
    assert out["ci_low"] == pytest.approx(3 - half, rel=1e-12)
    assert out["ci_high"] == pytest.approx(3 + half, rel=1e-12)


def test_mean_ci_matches_scipy_ttest():
    x = np.random.default_rng(0).normal(size=7)
    ci = st.ttest_1samp(x, 0.0).confidence_interval(0.9)
    out = mean_ci(x, confidence=0.9)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_mean_ci_small_n_never_crashes():
    one = mean_ci([0.8])
    assert one["mean"] == 0.8 and one["n"] == 1
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    empty = mean_ci([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    flat = mean_ci([2.0, 2.0, 2.0])
    assert flat["std"] == 0.0 and flat["ci_low"] == flat["ci_high"] == 2.0


def test_paired_difference_hand_values_and_scipy():
    a, b = [0.90, 0.80, 0.85], [0.85, 0.78, 0.80]
    out = paired_difference(a, b)
    # d = (0.05, 0.02, 0.05): mean 0.04, sd sqrt(3e-4), se = 0.01
    assert out["mean_diff"] == pytest.approx(0.04)
    assert out["n"] == 3
    assert out["ci_low"] == pytest.approx(0.04 - T975_DF2 * 0.01, rel=1e-9)
    assert out["ci_high"] == pytest.approx(0.04 + T975_DF2 * 0.01, rel=1e-9)
    ci = st.ttest_rel(a, b).confidence_interval(0.95)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    with pytest.raises(ValueError, match="welch_difference"):
        paired_difference([1, 2, 3], [1, 2])


def test_welch_difference_hand_df_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    out = welch_difference(a, b)
    va, vb = (5 / 3) / 4, 4.0 / 3  # s^2 / n
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # 3.2347...
    assert out["mean_diff"] == pytest.approx(-1.5)
    assert out["df"] == pytest.approx(df)
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    short = welch_difference([1.0], [2.0, 3.0])
    assert short["mean_diff"] == pytest.approx(-1.5) and math.isnan(short["ci_low"])


def test_relative_change_unpaired_explicit_formula():
    full, lora = np.array([0.90, 0.92, 0.91, 0.93]), np.array([0.85, 0.88, 0.86])
    out = relative_change_ci(full, lora)
    mf, ml = full.mean(), lora.mean()
    r = ml / mf
    # delta method: Var(ml/mf) = Var(ml)/mf^2 + ml^2 Var(mf)/mf^4
    v1 = lora.var(ddof=1) / 3 / mf**2
    v2 = ml**2 * full.var(ddof=1) / 4 / mf**4
    df = (v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 3)
    half = st.t.ppf(0.975, df) * math.sqrt(v1 + v2)
    assert out["relative"] == pytest.approx(1 - r)
    assert out["se"] == pytest.approx(math.sqrt(v1 + v2))
    assert out["ci_low"] == pytest.approx(1 - r - half)
    assert out["ci_high"] == pytest.approx(1 - r + half)


def test_relative_change_paired_explicit_formula():
    full, lora = np.array([0.90, 0.92, 0.91]), np.array([0.86, 0.89, 0.86])
    out = relative_change_ci(full, lora, paired=True)
    mf, ml = full.mean(), lora.mean()
    # Var(mean(l) - R mean(f)) / mf^2 estimated from per-seed residuals
    resid = lora - (ml / mf) * full
    se = resid.std(ddof=1) / math.sqrt(3) / mf
    assert out["se"] == pytest.approx(se)
    assert out["ci_high"] - out["relative"] == pytest.approx(T975_DF2 * se)
    assert out["method"] == "delta-paired"


def test_relative_change_ci_coverage_simulation():
    # The delta-method interval should cover the true relative change ~95% of the time.
    rng = np.random.default_rng(42)
    true_full, true_lora, sd, n = 0.9, 0.85, 0.02, 8
    truth = 1 - true_lora / true_full
    hits = 0
    trials = 600
    for _ in range(trials):
        out = relative_change_ci(rng.normal(true_full, sd, n), rng.normal(true_lora, sd, n))
        hits += out["ci_low"] <= truth <= out["ci_high"]
    assert 0.92 <= hits / trials <= 0.98


def test_verdict_h1_cases():
    full = [0.90, 0.91, 0.905]
    close = verdict_h1(full, [0.899, 0.902, 0.901])
    assert close["verdict"] == "supported"
    assert close["relative_drop"] == pytest.approx((0.905 - 0.9006666667) / 0.905, rel=1e-6)
    assert close["ci_high"] <= 0.03
    far = verdict_h1(full, [0.80, 0.81, 0.805])
    assert far["verdict"] == "not supported" and far["ci_low"] > 0.03
    noisy = verdict_h1(full, [0.70, 0.95, 0.85])
    assert noisy["verdict"] == "inconclusive"
    assert noisy["ci_low"] < 0.03 < noisy["ci_high"]
    single = verdict_h1([0.9], [0.9])
    assert single["verdict"] == "inconclusive" and single["relative_drop"] == 0.0
    better = verdict_h1(full, [0.95, 0.951, 0.949])  # LoRA better: drop < 0
    assert better["verdict"] == "supported" and better["relative_drop"] < 0


def test_verdict_h2_cases():
    full = [0.30, 0.31, 0.29]
    much_less = verdict_h2(full, [0.15, 0.16, 0.14])
    assert much_less["verdict"] == "supported"
    assert much_less["relative_reduction"] == pytest.approx(0.5)
    assert much_less["ci_low"] >= 0.20
    similar = verdict_h2(full, [0.29, 0.30, 0.28])
    assert similar["verdict"] == "not supported" and similar["ci_high"] < 0.20
    noisy = verdict_h2(full, [0.10, 0.35, 0.25])
    assert noisy["verdict"] == "inconclusive"
    assert verdict_h2([0.3], [0.1, 0.2])["verdict"] == "inconclusive"
    zero = verdict_h2([0.0, 0.0], [0.0, 0.0])
    assert zero["verdict"] == "inconclusive" and math.isnan(zero["relative_reduction"])
