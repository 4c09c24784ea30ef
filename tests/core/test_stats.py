"""Tests for ftdrift.core.stats and ftdrift.analysis.verdicts: hand-computed intervals, scipy's own
t-tests as an independent reference, a coverage simulation for the delta-method CI, the exact
permutation test against an itertools enumeration, Holm against hand numbers, and H2's verdict
rules table-driven."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ftdrift.analysis import summary as summary_mod
from ftdrift.analysis import verdicts as verdicts_mod
from ftdrift.analysis.verdicts import verdict_row, verdicts_table
from ftdrift.core.stats import (
    holm,
    mean_ci,
    paired_difference,
    permutation_test,
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
    close = verdict_h1(full, [0.899, 0.902, 0.901], tolerance=0.03)
    assert close["verdict"] == "supported"
    assert close["relative_drop"] == pytest.approx((0.905 - 0.9006666667) / 0.905, rel=1e-6)
    assert close["ci_high"] <= 0.03
    far = verdict_h1(full, [0.80, 0.81, 0.805], tolerance=0.03)
    assert far["verdict"] == "not supported" and far["ci_low"] > 0.03
    noisy = verdict_h1(full, [0.70, 0.95, 0.85], tolerance=0.03)
    assert noisy["verdict"] == "inconclusive"
    assert noisy["ci_low"] < 0.03 < noisy["ci_high"]
    single = verdict_h1([0.9], [0.9], tolerance=0.03)
    assert single["verdict"] == "inconclusive" and single["relative_drop"] == 0.0
    better = verdict_h1(full, [0.95, 0.951, 0.949], tolerance=0.03)  # LoRA better: drop < 0
    assert better["verdict"] == "supported" and better["relative_drop"] < 0


def test_verdict_h2_cases():
    full = [0.30, 0.31, 0.29]
    much_less = verdict_h2(full, [0.15, 0.16, 0.14], reduction=0.20)
    assert much_less["verdict"] == "supported"
    assert much_less["relative_reduction"] == pytest.approx(0.5)
    assert much_less["ci_low"] >= 0.20
    similar = verdict_h2(full, [0.29, 0.30, 0.28], reduction=0.20)
    assert similar["verdict"] == "not supported" and similar["ci_high"] < 0.20
    noisy = verdict_h2(full, [0.10, 0.35, 0.25], reduction=0.20)
    assert noisy["verdict"] == "inconclusive"
    assert verdict_h2([0.3], [0.1, 0.2], reduction=0.20)["verdict"] == "inconclusive"
    zero = verdict_h2([0.0, 0.0], [0.0, 0.0], reduction=0.20)
    assert zero["verdict"] == "inconclusive" and math.isnan(zero["relative_reduction"])


# --- H2's null: exact permutation test, Holm; H1's absolute mode; the verdict table ------------


def enumerated_test(full, lora):
    """The exact one-sided test written out: every choice of which pooled values are 'full'."""
    pooled = list(full) + list(lora)
    n, nf = len(pooled), len(full)
    stats_ = []
    for chosen in itertools.combinations(range(n), nf):
        rest = [i for i in range(n) if i not in chosen]
        stats_.append(sum(pooled[i] for i in chosen) / nf - sum(pooled[i] for i in rest) / (n - nf))
    observed = sum(full) / nf - sum(lora) / len(lora)
    tol = 1e-12
    p = sum(s >= observed - tol for s in stats_) / len(stats_)
    min_p = sum(s >= max(stats_) - tol for s in stats_) / len(stats_)
    return p, min_p, len(stats_)


@pytest.mark.parametrize("full, lora", [
    ([0.5, 0.6], [0.1, 0.2]),  # 2 + 2, separated: p = min p = 1/6
    ([0.5, 0.6, 0.7], [0.1, 0.2, 0.3]),  # 3 + 3: 1/20
    ([0.5, 0.2, 0.7, 0.4], [0.1, 0.3]),  # unequal arms, overlapping
    ([0.3, 0.3, 0.5], [0.3, 0.3]),  # ties
    ([0.2, 0.2], [0.2, 0.2, 0.2]),  # all tied: p = min p = 1
    ([0.1, 0.2, 0.15], [0.4, 0.5, 0.45]),  # LoRA drifts more: p near 1
])
def test_permutation_test_matches_enumeration(full, lora):
    out = permutation_test(full, lora)
    p, min_p, total = enumerated_test(full, lora)
    assert out["p_value"] == pytest.approx(p, abs=1e-12) and out["min_p"] == pytest.approx(min_p, abs=1e-12)
    assert out["n_relabellings"] == total == math.comb(len(full) + len(lora), len(full)) and out["exact"]
    assert out["statistic"] == pytest.approx(np.mean(full) - np.mean(lora))


def test_permutation_test_random_draws_and_hand_minima():
    rng = np.random.default_rng(3)
    for nf, nl in ((3, 4), (5, 3), (4, 4)):
        full, lora = rng.normal(0.5, 0.1, nf), rng.normal(0.4, 0.1, nl)
        p, min_p, _ = enumerated_test(full, lora)
        out = permutation_test(full, lora)
        assert (out["p_value"], out["min_p"]) == pytest.approx((p, min_p), abs=1e-12)
    assert permutation_test([2, 3], [0, 1])["min_p"] == pytest.approx(1 / 6)
    assert permutation_test([4, 5, 6], [0, 1, 2])["min_p"] == pytest.approx(1 / 20)
    assert permutation_test([4, 5, 6, 7], [0, 1, 2, 3])["p_value"] == pytest.approx(1 / 70)


def test_permutation_test_needs_two_finite_values_per_arm():
    for full, lora in (([0.5], [0.1, 0.2]), ([0.5, 0.6], []), ([0.5, float("nan")], [0.1, 0.2])):
        out = permutation_test(full, lora)
        assert math.isnan(out["p_value"]) and math.isnan(out["min_p"])


def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 1*0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1 and monotone: 2*0.5 = 1, max(1, 0.6) = 1
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, float("nan"), 0.01])  # NaN kept, not counted: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.04]) == pytest.approx([0.04]) and holm([]).size == 0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([0.5, 1.5])


def test_verdict_h1_absolute_mode_paired_and_welch():
    full, lora = [0.000, 0.002, -0.002], [0.001, 0.001, -0.001]  # Matthews correlations around 0
    out = verdict_h1(full, lora, paired=True, tolerance=0.03, absolute_tolerance=0.02)
    ci = st.ttest_rel(full, lora).confidence_interval(0.95)
    assert out["mode"] == "absolute" and out["threshold"] == 0.02
    assert out["difference"] == pytest.approx(np.mean(full) - np.mean(lora))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert out["verdict"] == "supported" and math.isnan(out["relative_drop"])
    far = verdict_h1([0.30, 0.31, 0.29], [0.10, 0.12, 0.08, 0.11], tolerance=0.03, absolute_tolerance=0.02)
    ci = st.ttest_ind([0.30, 0.31, 0.29], [0.10, 0.12, 0.08, 0.11], equal_var=False).confidence_interval(0.95)
    assert (far["ci_low"], far["ci_high"]) == pytest.approx((ci.low, ci.high)) and far["verdict"] == "not supported"
    wide = verdict_h1([0.1, 0.3, 0.2], [0.15, 0.1, 0.3], paired=True, tolerance=0.03, absolute_tolerance=0.02)
    assert wide["verdict"] == "inconclusive" and "straddles" in wide["reason"]
    assert verdict_h1([0.1], [0.1, 0.2], tolerance=0.03, absolute_tolerance=0.02)["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="absolute_tolerance"):
        verdict_h1(full, lora, tolerance=0.03, absolute_tolerance=0.0)


def test_verdict_h1_relative_undefined_says_to_declare_an_absolute_tolerance():
    out = verdict_h1([-0.01, 0.0, 0.01], [0.0, 0.005, -0.005], tolerance=0.03)
    assert out["mode"] == "relative" and out["verdict"] == "inconclusive"
    assert "declare h1_absolute_tolerance" in out["reason"] and "task catalog" in out["reason"]


ANALYSIS = {"confidence": 0.95, "h1_max_relative_drop": 0.03, "h2_min_drift_reduction": 0.2,
            "h2_metric": "linear_cka", "h2_pooling": "mean", "h2_alpha": 0.05, "reference_method": "full"}
SST2 = {"main_metric": "accuracy"}
COLA = {"main_metric": "matthews_corr", "h1_absolute_tolerance": 0.02}


def arms(drift_full, drift_lora, val_full=None, val_lora=None, paired=False):
    """The chosen runs of one task: seeds 1.. for full; LoRA's seeds shared when paired, else 101.."""
    val_full = val_full or [0.90 + 0.01 * i for i in range(len(drift_full))]
    val_lora = val_lora or [0.90 + 0.01 * i for i in range(len(drift_lora))]
    full = pd.DataFrame({"seed": range(1, len(drift_full) + 1), "val_main": val_full, "drift": drift_full})
    start = 1 if paired else 101
    lora = pd.DataFrame({"seed": range(start, start + len(drift_lora)), "val_main": val_lora, "drift": drift_lora})
    return full, lora


FULL4 = [0.50, 0.52, 0.51, 0.53]
H2_CASES = [  # (full drift, LoRA drift, seed floor, verdict, reason fragment)
    (FULL4, [0.20, 0.21, 0.22, 0.19], 0.05, "supported", "< 0.05; difference"),
    (FULL4, [0.49, 0.50, 0.51, 0.52], 0.05, "not supported", "CI upper bound"),
    (FULL4, [0.20, 0.21, 0.22, 0.19], float("nan"), "inconclusive", "no seed floor"),
    ([0.50, 0.52], [0.20, 0.21], 0.05, "inconclusive", "with 2 and 2 seeds the exact test cannot reach p < 0.05: add seeds"),
    ([0.50, 0.52, 0.51], [0.20, 0.21, 0.22], 0.05, "inconclusive", "with 3 and 3 seeds"),  # min p = 1/20 = alpha
    (FULL4, [0.20, 0.21, 0.22, 0.53], 0.05, "inconclusive", "Holm-adjusted p"),  # p = 5/70 (ties at 0.53 too)
    (FULL4, [0.20, 0.21, 0.22, 0.19], 0.40, "inconclusive", "within the seed floor"),
    (FULL4, [0.40, 0.41, 0.42, 0.43], 0.01, "inconclusive", "straddles"),  # reduction 0.194, p = 1/70
    ([0.50], [0.20, 0.21, 0.22], 0.05, "inconclusive", "fewer than 2 seeds"),
]


@pytest.mark.parametrize("drift_full, drift_lora, floor, verdict, reason", H2_CASES)
def test_h2_verdict_rules(drift_full, drift_lora, floor, verdict, reason):
    full, lora = arms(drift_full, drift_lora)
    row = verdict_row("sst2", SST2, full, lora, ANALYSIS, seed_floor=floor)
    assert row["h2_verdict"] == verdict and reason in row["h2_reason"], row["h2_reason"]
    difference = np.mean(drift_full) - np.mean(drift_lora)
    assert row["h2_difference"] == pytest.approx(difference)
    if len(drift_full) >= 2:
        p, min_p, _ = enumerated_test(drift_full, drift_lora)
        assert (row["h2_p_value"], row["h2_min_p"], row["h2_p_holm"]) == pytest.approx((p, min_p, p))
    assert row["h2_exceeds_floor"] == (None if math.isnan(floor) else difference > floor)


def test_h2_reason_names_every_failing_condition():
    """2 + 2 seeds (smallest p 1/6) whose difference is also within the seed floor: both are said."""
    full, lora = arms([0.50, 0.52], [0.45, 0.46])
    row = verdict_row("sst2", SST2, full, lora, ANALYSIS, seed_floor=0.2)
    assert row["h2_verdict"] == "inconclusive"
    assert "cannot reach p < 0.05" in row["h2_reason"] and "within the seed floor 0.2" in row["h2_reason"]
    one_seed = verdict_row("sst2", SST2, *arms([0.5], [0.45, 0.46]), ANALYSIS, seed_floor=0.2)
    assert one_seed["h2_test"].startswith("no permutation test")


def test_holm_across_tasks_can_turn_a_supported_verdict_inconclusive():
    """Each task alone: p = 1/70 < 0.05, supported. Four tasks: Holm multiplies the smallest by 4."""
    pairs = {("lora", f"t{i}"): arms(FULL4, [0.20, 0.21, 0.22, 0.19]) for i in range(4)}
    floors = {key: 0.05 for key in pairs}
    two = verdicts_table(dict(list(pairs.items())[:2]), floors, {t: SST2 for _, t in pairs}, ANALYSIS)
    assert list(two.h2_verdict) == ["supported"] * 2 and two.h2_p_holm.tolist() == pytest.approx([2 / 70] * 2)
    four = verdicts_table(pairs, floors, {t: SST2 for _, t in pairs}, ANALYSIS)
    assert four.h2_p_holm.tolist() == pytest.approx([4 / 70] * 4)
    assert set(four.h2_verdict) == {"inconclusive"} and all("Holm-adjusted p" in r for r in four.h2_reason)
    assert four.h2_test.iloc[0] == ("exact permutation test over seeds (one-sided), Holm-adjusted across 4 "
                                    "comparisons (method × task)")
    assert four.h2_alpha.tolist() == [0.05] * 4 and four.h2_seed_floor.tolist() == [0.05] * 4


def test_holm_runs_over_every_method_and_task_against_the_reference():
    """Two methods x two tasks, all against full fine-tuning's runs: one Holm family of four p-values,
    adjusted as written out here (sorted p_(i) times (k - i + 1), running maximum, capped at 1)."""
    ref = arms(FULL4, FULL4)[0]
    drifts = {("lora", "sst2"): [0.20, 0.21, 0.22, 0.19], ("lora", "rte"): [0.20, 0.21, 0.22, 0.53],
              ("dora_r8", "sst2"): [0.30, 0.31, 0.50, 0.52], ("dora_r8", "rte"): [0.20, 0.21, 0.22, 0.19]}
    pairs = {key: (ref, arms(FULL4, d)[1]) for key, d in drifts.items()}
    table = verdicts_table(pairs, {key: 0.05 for key in pairs}, {"sst2": SST2, "rte": SST2}, ANALYSIS)
    assert list(zip(table.method, table.task)) == list(drifts)
    assert set(table.reference) == {"full"}
    raw = [enumerated_test(FULL4, d)[0] for d in drifts.values()]
    assert table.h2_p_value.tolist() == pytest.approx(raw)
    order = np.argsort(raw, kind="stable")
    adjusted, running = np.empty(4), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (4 - i) * raw[j]))
        adjusted[j] = running
    assert table.h2_p_holm.tolist() == pytest.approx(adjusted.tolist())
    assert all("across 4 comparisons" in t for t in table.h2_test)
    # each comparison's H1 compares its own method's runs with the reference's
    assert table.method_minus_reference.tolist() == pytest.approx([0.0] * 4)


def test_holm_family_skips_tasks_without_a_p_value_and_empty_arms():
    pairs = {("lora", "a"): arms(FULL4, [0.20, 0.21, 0.22, 0.19]), ("lora", "b"): arms([0.5], [0.2, 0.3]),
             ("lora", "c"): (arms(FULL4, FULL4)[0], arms(FULL4, FULL4)[0].iloc[:0])}
    table = verdicts_table(pairs, {("lora", "a"): 0.05}, {"a": SST2, "b": SST2, "c": SST2}, ANALYSIS)
    assert list(table.task) == ["a", "b"]  # c: no LoRA run
    assert table.h2_p_holm.iloc[0] == pytest.approx(1 / 70) and math.isnan(table.h2_p_holm.iloc[1])
    assert table.h2_verdict.tolist() == ["supported", "inconclusive"]
    assert "across 1 comparison " in table.h2_test.iloc[0]
    assert verdicts_table({}, {}, {}, ANALYSIS).empty


def test_cola_like_task_gets_a_real_h1_verdict_with_its_absolute_tolerance():
    """Matthews correlation around 0 (full fine-tuning <= 0 on average): the relative drop is
    undefined, the declared absolute tolerance judges full − LoRA instead."""
    val_full, val_lora = [0.000, 0.002, -0.004], [0.001, 0.001, -0.001]
    full, lora = arms(FULL4[:3], [0.2, 0.21, 0.22], val_full, val_lora, paired=True)
    table = verdicts_table({("lora", "cola"): (full, lora)}, {("lora", "cola"): 0.05}, {"cola": COLA}, ANALYSIS)
    row = table.iloc[0]
    ci = st.ttest_rel(val_full, val_lora).confidence_interval(0.95)
    assert row.h1_mode == "absolute" and row.h1_tolerance == 0.02 and row.metric == "matthews_corr"
    assert row.h1_difference == pytest.approx(np.mean(val_full) - np.mean(val_lora))
    assert (row.h1_ci_low, row.h1_ci_high) == pytest.approx((ci.low, ci.high))
    assert row.h1_verdict == "supported" and ci.high <= 0.02
    relative = verdicts_table({("lora", "cola"): (full, lora)}, {}, {"cola": {"main_metric": "matthews_corr"}},
                              ANALYSIS)
    assert relative.h1_mode.iloc[0] == "relative" and relative.h1_verdict.iloc[0] == "inconclusive"
    assert "declare h1_absolute_tolerance" in relative.h1_reason.iloc[0]
    assert math.isnan(relative.h1_difference.iloc[0]) and relative.h1_tolerance.iloc[0] == 0.03


def test_verdict_row_keeps_the_old_columns():
    full, lora = arms([0.5, 0.45, 0.4], [0.3, 0.35, 0.2], [0.90, 0.85, 0.80], [0.88, 0.84, 0.79], paired=True)
    row = verdict_row("sst2", SST2, full, lora, ANALYSIS)
    old = ["task", "metric", "analysis", "method_minus_reference", "diff_ci_low", "diff_ci_high", "h1_relative_drop",
           "h1_ci_low", "h1_ci_high", "h1_verdict", "h1_reason", "h2_drift_metric", "h2_pooling",
           "h2_drift_reduction", "h2_ci_low", "h2_ci_high", "h2_verdict", "h2_reason", "confidence"]
    new = ["h1_mode", "h1_tolerance", "h1_difference", "h2_difference", "h2_p_value", "h2_p_holm", "h2_min_p",
           "h2_alpha", "h2_seed_floor", "h2_exceeds_floor", "h2_test", "method", "reference"]
    assert set(old + new) == set(row) and row["analysis"] == "paired by seed (n = 3)"
    assert (row["reference"], row["method"]) == verdicts_mod.UNNAMED
    named = verdict_row("sst2", SST2, *arms([0.5, 0.4], [0.3, 0.2]), ANALYSIS, names=("full", "dora_r8"))
    assert (named["reference"], named["method"]) == ("full", "dora_r8")
    assert named["analysis"] == "unpaired (full n = 2, dora_r8 n = 2)"
    assert row["h1_relative_drop"] == pytest.approx(1 - np.mean([0.88, 0.84, 0.79]) / 0.85)


def test_summary_and_latex_show_holm_p_seed_floor_and_h1_mode():
    pairs = {("lora", "sst2"): arms(FULL4, [0.20, 0.21, 0.22, 0.19]),
             ("lora", "cola"): arms(FULL4[:3], [0.2, 0.21, 0.22], [0.0, 0.002, -0.004], [0.001, 0.001, -0.001],
                                    paired=True)}
    verdicts = verdicts_table(pairs, {key: 0.05 for key in pairs}, {"sst2": SST2, "cola": COLA}, ANALYSIS)
    best = pd.DataFrame([{"task": "sst2", "method": "full", "lr": "1e-3", "batch_size": 4, "main_metric": "accuracy",
                          "n_seeds": 4, "val_mean": 0.9, "val_std": 0.01, "val_ci_low": 0.89, "val_ci_high": 0.91,
                          "trivial_val": 0.5, "probe_val": 0.7, "drift_mean": 0.5, "beats_trivial": True}])
    text = summary_mod.summary_markdown(best, verdicts, pd.DataFrame(), ANALYSIS, pd.DataFrame())
    assert "Holm correction across the 2 comparisons" in text and "| H2 p (Holm) | seed floor |" in text
    assert "## Each method vs the reference method (full)" in text and "| lora | sst2 | accuracy |" in text
    p_sst2 = min(1.0, 2 * (1 / 70))  # Holm over {1/70, 1/20}: 2/70 first, then max(2/70, 1/20)
    assert f"| {p_sst2:.3f} (raw {1 / 70:.3f}) | 0.050 |" in text
    assert "tolerance 0.02 absolute" in text and "tolerance 0.03 relative" in text
    assert "- lora, cola, H2: with 3 and 3 seeds the exact test cannot reach p < 0.05: add seeds" in text
    latex = summary_mod.latex_tables(best, verdicts, ANALYSIS)
    assert "H2 p (Holm)" in latex and "seed floor" in latex and "0.02 abs." in latex and "0.03 rel." in latex
    assert "Holm correction across the 2 comparisons" in latex and "reference method full" in latex


def test_summary_says_when_no_comparison_has_a_p_value():
    one_seed = pd.DataFrame({"h2_p_value": [np.nan, np.nan], "h2_alpha": [0.05, 0.05]})
    rule = summary_mod._h2_rule(one_seed, ANALYSIS)
    assert "no comparison has a p-value yet" in rule and "across the 0 comparisons" not in rule
