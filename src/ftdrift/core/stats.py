"""Across-seed statistics and the verdicts for the study's two hypotheses.

With the handful of seeds a fine-tuning study can afford (typically 3-5),
Student-t intervals are the honest choice; a bootstrap over 3 values would
produce intervals that are far too narrow. Every function returns NaN
intervals instead of raising when there are too few values (n < 2), so a
partially finished sweep can still be summarised.

H1 and H2 compare *relative* changes, ``1 - mean_lora / mean_full``. Their
intervals use the delta method for a ratio of means (first-order Taylor
expansion), with Student-t quantiles:

* unpaired (default): full and LoRA runs are independent samples,
  ``Var(R) ~= Var(mean_lora) / mean_full^2 + R^2 Var(mean_full) / mean_full^2``
  with ``R = mean_lora / mean_full``; degrees of freedom from
  Welch-Satterthwaite on the two terms;
* paired (``paired=True``, seeds matched by position): the t-interval, with
  n - 1 df, of the linearised per-seed values ``(lora_i - R full_i) / mean_full``,
  which accounts for the covariance between the two arms.

Verdict rule (``threshold`` = 3% for H1, 20% for H2): "supported" when the
whole confidence interval lies on the hypothesis' side of the threshold
(boundary included), "not supported" when it lies entirely on the other side,
"inconclusive" when it straddles the threshold, when either arm has fewer than
2 values, or when the relative change is undefined (mean_full <= 0).

H1 has an absolute mode for metrics where a relative drop means nothing (Matthews
correlation can be <= 0): the difference ``mean_full - mean_lora`` in the metric's
units, with its paired or Welch t-interval, against an absolute tolerance.

H2's interval is complemented by a null-hypothesis test over seeds
(``permutation_test``: exact one-sided permutation test of the difference of mean
drifts, Fisher/Pitman; see Good, *Permutation, Parametric, and Bootstrap Tests of
Hypotheses*, 2005) and ``holm`` (Holm 1979, "A simple sequentially rejective
multiple test procedure") adjusts its p-values across tasks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = [
    "mean_ci",
    "paired_difference",
    "welch_difference",
    "relative_change_ci",
    "verdict_h1",
    "verdict_h2",
    "permutation_test",
    "holm",
    "EXACT_LIMIT",
]

_NAN = float("nan")


def _vec(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def _check_conf(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _tq(confidence: float, df: float) -> float:
    """Two-sided Student-t quantile."""
    return float(_st.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Any, confidence: float = 0.95) -> dict[str, float | int]:
    """Mean with a Student-t confidence interval: keys mean, std, n, ci_low, ci_high.

    ``std`` uses ddof=1. n = 1: std and the interval are NaN; n = 0: everything
    NaN. A zero spread gives the degenerate interval [mean, mean].
    """
    _check_conf(confidence)
    v = _vec(values)
    n = int(v.size)
    if n == 0:
        return {"mean": _NAN, "std": _NAN, "n": 0, "ci_low": _NAN, "ci_high": _NAN}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": _NAN, "n": 1, "ci_low": _NAN, "ci_high": _NAN}
    std = float(v.std(ddof=1))
    half = _tq(confidence, n - 1) * std / np.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: Any, b: Any, confidence: float = 0.95) -> dict[str, float | int]:
    """Paired t-interval of ``a - b`` (pairs matched by position, e.g. by seed).

    Keys mean_diff, std_diff, ci_low, ci_high, n. Use ``welch_difference`` when
    the runs cannot be paired.
    """
    x, y = _vec(a), _vec(b)
    if x.size != y.size:
        raise ValueError(
            f"paired samples need equal lengths, got {x.size} and {y.size}; "
            "use welch_difference for unpaired runs"
        )
    m = mean_ci(x - y, confidence)
    return {
        "mean_diff": m["mean"], "std_diff": m["std"],
        "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"],
    }


def welch_difference(a: Any, b: Any, confidence: float = 0.95) -> dict[str, float | int]:
    """Welch (unequal variances) t-interval of ``mean(a) - mean(b)``.

    Keys mean_diff, ci_low, ci_high, df, n_a, n_b. NaN interval if either side
    has fewer than 2 values; [diff, diff] if both spreads are zero.
    """
    _check_conf(confidence)
    x, y = _vec(a), _vec(b)
    na, nb = int(x.size), int(y.size)
    diff = float(x.mean() - y.mean()) if na and nb else _NAN
    out = {"mean_diff": diff, "ci_low": _NAN, "ci_high": _NAN, "df": _NAN, "n_a": na, "n_b": nb}
    if na < 2 or nb < 2:
        return out
    va, vb = x.var(ddof=1) / na, y.var(ddof=1) / nb
    se2 = va + vb
    if se2 == 0:
        out.update(ci_low=diff, ci_high=diff)
        return out
    df = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half = _tq(confidence, df) * np.sqrt(se2)
    out.update(ci_low=diff - half, ci_high=diff + half, df=float(df))
    return out


def relative_change_ci(
    full: Any, lora: Any, confidence: float = 0.95, paired: bool = False
) -> dict[str, float | int | str]:
    """``1 - mean(lora) / mean(full)`` with a delta-method t-interval (see module doc).

    Keys: relative, ci_low, ci_high, se, df, mean_full, mean_lora, n_full,
    n_lora, method. NaN interval when either arm has < 2 values; everything
    NaN when mean(full) <= 0 (the relative change is undefined).
    """
    _check_conf(confidence)
    f, g = _vec(full), _vec(lora)
    nf, ng = int(f.size), int(g.size)
    if paired and nf != ng:
        raise ValueError(f"paired=True needs equal lengths, got {nf} and {ng}")
    mf = float(f.mean()) if nf else _NAN
    mg = float(g.mean()) if ng else _NAN
    out: dict[str, Any] = {
        "relative": _NAN, "ci_low": _NAN, "ci_high": _NAN, "se": _NAN, "df": _NAN,
        "mean_full": mf, "mean_lora": mg, "n_full": nf, "n_lora": ng,
        "method": "delta-paired" if paired else "delta-unpaired",
    }
    if not (nf and ng) or not mf > 0:
        return out
    ratio = mg / mf
    out["relative"] = 1.0 - ratio
    if nf < 2 or ng < 2:
        return out
    if paired:
        z = (g - ratio * f) / mf  # linearised ratio per seed; mean(z) == 0
        se = float(z.std(ddof=1) / np.sqrt(nf))
        df = float(nf - 1)
    else:
        v1 = g.var(ddof=1) / ng / mf**2
        v2 = ratio**2 * f.var(ddof=1) / nf / mf**2
        se = float(np.sqrt(v1 + v2))
        df = float((v1 + v2) ** 2 / (v1**2 / (ng - 1) + v2**2 / (nf - 1))) if se > 0 else _NAN
    half = _tq(confidence, df) * se if se > 0 else 0.0
    out.update(ci_low=out["relative"] - half, ci_high=out["relative"] + half, se=se, df=df)
    return out


def _verdict(
    rc: dict[str, Any], threshold: float, supported_below: bool
) -> tuple[str, str]:
    lo, hi = rc["ci_low"], rc["ci_high"]
    if rc["n_full"] < 2 or rc["n_lora"] < 2:
        return "inconclusive", "fewer than 2 seeds in an arm"
    if not np.isfinite(rc["relative"]):
        return "inconclusive", "relative change undefined (mean of full fine-tuning <= 0)"
    if supported_below:
        if hi <= threshold:
            return "supported", f"CI upper bound {hi:.4g} <= {threshold:.4g}"
        if lo > threshold:
            return "not supported", f"CI lower bound {lo:.4g} > {threshold:.4g}"
    else:
        if lo >= threshold:
            return "supported", f"CI lower bound {lo:.4g} >= {threshold:.4g}"
        if hi < threshold:
            return "not supported", f"CI upper bound {hi:.4g} < {threshold:.4g}"
    return "inconclusive", f"CI [{lo:.4g}, {hi:.4g}] straddles {threshold:.4g}"


def verdict_h1(
    full_scores: Any,
    lora_scores: Any,
    tolerance: float,  # analysis.h1_max_relative_drop: the thresholds' one default is config/schema.yaml
    confidence: float = 0.95,
    paired: bool = False,
    absolute_tolerance: float | None = None,
) -> dict[str, Any]:
    """H1: "LoRA's task score is within a tolerance of full fine-tuning's".

    Scores are per seed (paired by position when ``paired``). Two modes:

    * relative (default, ``absolute_tolerance=None``): relative_drop =
      (mean_full - mean_lora) / mean_full with a delta-method CI, judged against
      ``tolerance`` (a fraction). Undefined when mean_full <= 0: "inconclusive",
      the reason says to declare ``h1_absolute_tolerance`` in the task catalog.
    * absolute (``absolute_tolerance`` > 0, in the metric's units): difference =
      mean_full - mean_lora with its paired / Welch t-interval, judged against
      ``absolute_tolerance``.

    "supported" if ci_high <= tolerance, "not supported" if ci_low > tolerance,
    else "inconclusive" (also for n < 2 in an arm). Keys: hypothesis, mode
    ("relative"/"absolute"), relative_drop, difference (mean_full - mean_lora, both
    modes), ci_low / ci_high (of the judged quantity), threshold, verdict, reason,
    confidence, mean_full, mean_lora, n_full, n_lora, se, df, method.
    Raises ValueError for absolute_tolerance <= 0 or non-finite.
    """
    rc = relative_change_ci(full_scores, lora_scores, confidence, paired)
    mean_full, mean_lora = rc["mean_full"], rc["mean_lora"]
    out = {"hypothesis": "H1", "relative_drop": rc["relative"],
           "difference": mean_full - mean_lora if rc["n_full"] and rc["n_lora"] else _NAN,
           "confidence": confidence, **{k: rc[k] for k in ("mean_full", "mean_lora", "n_full", "n_lora")}}
    if absolute_tolerance is None:
        verdict, reason = _verdict(rc, tolerance, supported_below=True)
        if not np.isfinite(rc["relative"]) and rc["n_full"] >= 2 and rc["n_lora"] >= 2:
            reason = ("relative drop undefined (mean of full fine-tuning <= 0): declare h1_absolute_tolerance "
                      "for this task in the task catalog")
        return {**out, "mode": "relative", "ci_low": rc["ci_low"], "ci_high": rc["ci_high"], "threshold": tolerance,
                "verdict": verdict, "reason": reason, **{k: rc[k] for k in ("se", "df", "method")}}
    if not (math.isfinite(absolute_tolerance) and absolute_tolerance > 0):
        raise ValueError(f"absolute_tolerance must be a finite number > 0, got {absolute_tolerance}")
    full, lora = _vec(full_scores), _vec(lora_scores)
    if paired:
        diff = paired_difference(full, lora, confidence)
        se = diff["std_diff"] / np.sqrt(diff["n"]) if diff["n"] >= 2 else _NAN
        df, method = float(diff["n"] - 1), "paired-t"
    else:
        diff = welch_difference(full, lora, confidence)
        df, method = diff["df"], "welch-t"
        se = float(np.sqrt(full.var(ddof=1) / full.size + lora.var(ddof=1) / lora.size)) \
            if full.size >= 2 and lora.size >= 2 else _NAN
    lo, hi = diff["ci_low"], diff["ci_high"]
    if rc["n_full"] < 2 or rc["n_lora"] < 2:
        verdict, reason = "inconclusive", "fewer than 2 seeds in an arm"
    elif hi <= absolute_tolerance:
        verdict, reason = "supported", f"CI upper bound {hi:.4g} <= {absolute_tolerance:.4g} (absolute)"
    elif lo > absolute_tolerance:
        verdict, reason = "not supported", f"CI lower bound {lo:.4g} > {absolute_tolerance:.4g} (absolute)"
    else:
        verdict, reason = "inconclusive", f"CI [{lo:.4g}, {hi:.4g}] straddles {absolute_tolerance:.4g} (absolute)"
    return {**out, "mode": "absolute", "ci_low": lo, "ci_high": hi, "threshold": absolute_tolerance,
            "verdict": verdict, "reason": reason, "se": se, "df": df, "method": method}


def verdict_h2(
    full_drift: Any,
    lora_drift: Any,
    reduction: float,  # analysis.h2_min_drift_reduction
    confidence: float = 0.95,
    paired: bool = False,
) -> dict[str, Any]:
    """H2: "LoRA's representations drift at least ``reduction`` (relative) less".

    Inputs are per-seed drift values, drift = mean(1 - CKA) . relative_reduction = (full - lora) / full with a
    delta-method CI; "supported" if ci_low >= reduction, "not supported" if
    ci_high < reduction, else "inconclusive" (also for n < 2 in an arm).
    """
    rc = relative_change_ci(full_drift, lora_drift, confidence, paired)
    verdict, reason = _verdict(rc, reduction, supported_below=False)
    return {
        "hypothesis": "H2", "relative_reduction": rc["relative"],
        "ci_low": rc["ci_low"], "ci_high": rc["ci_high"], "threshold": reduction,
        "verdict": verdict, "reason": reason, "confidence": confidence,
        **{k: rc[k] for k in ("mean_full", "mean_lora", "n_full", "n_lora", "se", "df", "method")},
    }


EXACT_LIMIT = 1_000_000  # relabellings enumerated exactly; beyond, a Monte Carlo test (never reached with seeds)
_MC_RESAMPLES = 99_999


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def permutation_test(full: Any, lora: Any, seed: int = 0) -> dict[str, Any]:
    """One-sided exact permutation test over seeds: does full fine-tuning drift more than LoRA?

    H0: full and LoRA drifts are exchangeable (the method does not change drift);
    H1: full drifts more. Statistic ``mean(full) - mean(lora)``; its null distribution
    is every one of the C(n_full + n_lora, n_full) relabellings of the pooled values
    (``scipy.stats.permutation_test``, ``permutation_type="independent"``, exact with
    ``n_resamples=inf``); p = share of relabellings whose statistic is >= the observed
    one (ties counted, with scipy's relative tolerance 100 eps).

    ``full``, ``lora``: per-seed values (1-D, any units). Returns keys
    statistic, p_value, min_p, n_full, n_lora, n_relabellings, exact.
    ``min_p`` is the smallest p-value these data could give: the share of relabellings
    tied at the largest statistic (1 / C(n, n_full) without ties: 1/6 for 2 + 2 seeds,
    1/20 for 3 + 3), so ``min_p >= alpha`` means the test can never reject at alpha.
    Fewer than 2 values in an arm, or a non-finite value: p_value and min_p NaN.
    Above ``EXACT_LIMIT`` relabellings the test is Monte Carlo (99,999 draws,
    ``seed``; ``exact`` False, p = (b + 1) / (B + 1)).
    """
    f, g = _vec(full), _vec(lora)
    nf, ng = int(f.size), int(g.size)
    total = math.comb(nf + ng, nf)
    out: dict[str, Any] = {"statistic": float(f.mean() - g.mean()) if nf and ng else _NAN, "p_value": _NAN,
                           "min_p": _NAN, "n_full": nf, "n_lora": ng, "n_relabellings": total, "exact": True}
    if nf < 2 or ng < 2 or not (np.isfinite(f).all() and np.isfinite(g).all()):
        return out
    exact = total <= EXACT_LIMIT
    res = _st.permutation_test((f, g), _mean_difference, permutation_type="independent", vectorized=True,
                               n_resamples=np.inf if exact else _MC_RESAMPLES, alternative="greater",
                               rng=np.random.default_rng(seed))
    null = np.asarray(res.null_distribution, dtype=np.float64)
    top = float(null.max())
    # relabellings tied at the top (same tolerance as scipy's comparison): the best p these values allow
    ties = int(np.count_nonzero(null >= top - abs(top) * np.finfo(np.float64).eps * 100))
    min_p = ties / total if exact else 1.0 / (_MC_RESAMPLES + 1)
    out.update(p_value=float(res.pvalue), min_p=float(min_p), exact=exact)
    return out


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), same shape as ``pvalues``.

    Step-down over the m finite p-values sorted ascending, p_(1) <= ... <= p_(m):
    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) (monotone, capped at 1);
    rejecting where adjusted p < alpha controls the family-wise error rate at alpha
    under any dependence. NaN entries stay NaN and do not count in m.
    Raises ValueError for values outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    finite = np.isfinite(flat)
    if ((flat[finite] < 0) | (flat[finite] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {flat[finite].tolist()}")
    out = np.full(flat.shape, _NAN)
    values = flat[finite]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * values[order])
        adjusted = np.empty(m)
        adjusted[order] = np.maximum.accumulate(scaled)
        out[np.flatnonzero(finite)] = adjusted
    return out.reshape(p.shape)
