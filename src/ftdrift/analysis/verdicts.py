"""verdicts.csv: H1 and H2 per (method, task), each method's chosen runs against the reference
method's (``analysis.reference_method``; one row per seed each).

H1 ("the method's validation main metric is within a tolerance of the reference's") is judged on
the delta-method interval of the relative drop, or, for a task whose catalog entry declares
``h1_absolute_tolerance`` (e.g. Matthews correlation, which can be <= 0), on the t-interval of the
absolute difference (ftdrift.core.stats.verdict_h1).

H2 ("the method's representations drift at least ``h2_min_drift_reduction`` relatively less than
the reference's") needs three things to be "supported": the delta-method interval of the relative
reduction clears the threshold, the exact one-sided permutation test over seeds (the reference
drifts more) rejects at ``analysis.h2_alpha`` after Holm's correction across every (method, task)
comparison of the table (stats.permutation_test, stats.holm), and the difference of mean drifts
exceeds the comparison's seed floor (how far two seeds of one setting drift apart: a difference
inside it is indistinguishable from reseeding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ftdrift.core import stats

__all__ = ["H2_TEST", "pair_by_seed", "verdict_row", "verdicts_table"]

H2_TEST = ("exact permutation test over seeds (one-sided), Holm-adjusted across {k} comparison{s} "
           "(method × task)")
# the name of the compared arm where a caller gives none (verdict_row on its own)
UNNAMED = ("reference", "method")


def pair_by_seed(reference: pd.DataFrame, other: pd.DataFrame) -> bool:
    """Both methods ran the same seeds (>= 2): the seed fixes the data order and the head's
    initialisation for both, so the runs pair and the paired analysis applies."""
    seeds_ref, seeds_other = sorted(reference.seed), sorted(other.seed)
    return seeds_ref == seeds_other and len(seeds_ref) >= 2 and len(set(seeds_ref)) == len(seeds_ref)


def _comparison_row(task: str, task_def: dict, ref: pd.DataFrame, other: pd.DataFrame, analysis: dict,
                    seed_floor: float, names: tuple[str, str]) -> dict[str, Any]:
    """Everything of a comparison's row except what depends on the others (Holm) and the H2 verdict.
    `ref`, `other`: the reference's and the compared method's chosen runs; `names`: their method names."""
    confidence = analysis["confidence"]
    paired = pair_by_seed(ref, other)
    if paired:
        ref, other = ref.sort_values("seed"), other.sort_values("seed")
    val_ref, val_other = ref.val_main.to_numpy(float), other.val_main.to_numpy(float)
    drift_ref, drift_other = ref.drift.to_numpy(float), other.drift.to_numpy(float)
    absolute = task_def.get("h1_absolute_tolerance")
    h1 = stats.verdict_h1(val_ref, val_other, analysis["h1_max_relative_drop"], confidence, paired=paired,
                          absolute_tolerance=absolute)
    h2 = stats.verdict_h2(drift_ref, drift_other, analysis["h2_min_drift_reduction"], confidence, paired=paired)
    test = stats.permutation_test(drift_ref, drift_other)  # one-sided: the reference drifts more
    if paired:
        diff = stats.paired_difference(val_other, val_ref, confidence)
    else:
        diff = stats.welch_difference(val_other, val_ref, confidence)
    floor = float(seed_floor) if seed_floor is not None else math.nan
    h2_difference = test["statistic"]
    exceeds = bool(h2_difference > floor) if np.isfinite(floor) and np.isfinite(h2_difference) else None
    reference, method = names
    return {"task": task, "method": method, "reference": reference, "metric": task_def["main_metric"],
            "analysis": f"paired by seed (n = {len(ref)})" if paired else
            f"unpaired ({reference} n = {len(ref)}, {method} n = {len(other)})",
            "method_minus_reference": diff["mean_diff"], "diff_ci_low": diff["ci_low"],
            "diff_ci_high": diff["ci_high"],
            "h1_mode": h1["mode"], "h1_tolerance": h1["threshold"],
            "h1_relative_drop": h1["relative_drop"],
            "h1_difference": h1["difference"] if h1["mode"] == "absolute" else math.nan,
            "h1_ci_low": h1["ci_low"], "h1_ci_high": h1["ci_high"],
            "h1_verdict": h1["verdict"], "h1_reason": h1["reason"],
            "h2_drift_metric": analysis["h2_metric"], "h2_pooling": analysis["h2_pooling"],
            "h2_drift_reduction": h2["relative_reduction"], "h2_ci_low": h2["ci_low"], "h2_ci_high": h2["ci_high"],
            "h2_difference": h2_difference, "h2_p_value": test["p_value"], "h2_p_holm": math.nan,
            "h2_min_p": test["min_p"], "h2_alpha": analysis["h2_alpha"], "h2_seed_floor": floor,
            "h2_exceeds_floor": exceeds, "h2_test": "",
            "h2_verdict": h2["verdict"], "h2_reason": h2["reason"], "confidence": confidence,
            # private: the delta-method verdict and the arm sizes, read by _judge_h2
            "_h2_ci_verdict": h2["verdict"], "_n": (len(drift_ref), len(drift_other)),
            "_finite": bool(np.isfinite(drift_ref).all() and np.isfinite(drift_other).all())}


def _judge_h2(row: dict[str, Any], p_holm: float, k: int) -> dict[str, Any]:
    """The H2 verdict of a row once its Holm-adjusted p is known (k: p-values in the family)."""
    alpha, n_ref, n_other = row["h2_alpha"], *row["_n"]
    test = H2_TEST.format(k=k, s="" if k == 1 else "s") if np.isfinite(row["h2_p_value"]) else \
        "no permutation test: fewer than 2 seeds in an arm or drift missing"
    row = {**row, "h2_p_holm": p_holm, "h2_test": test}
    ci_verdict, verdict, reason = row.pop("_h2_ci_verdict"), "inconclusive", None
    row.pop("_n")
    finite = row.pop("_finite")
    if n_ref < 2 or n_other < 2:
        reason = row["h2_reason"]  # "fewer than 2 seeds in an arm"
    elif not finite:
        reason = "drift missing (not finite) for some chosen runs"
    elif ci_verdict == "not supported":
        verdict, reason = "not supported", row["h2_reason"]
    elif not np.isfinite(row["h2_drift_reduction"]):
        reason = row["h2_reason"]  # relative reduction undefined
    else:  # every condition that fails is named, not only the first
        failing = []
        if not np.isfinite(row["h2_seed_floor"]):
            failing.append("no seed floor (fewer than 2 seeds of a chosen setting): cannot tell the difference from "
                           "reseeding")
        if row["h2_min_p"] >= alpha:
            failing.append(f"with {n_ref} and {n_other} seeds the exact test cannot reach p < {alpha:g}: add seeds "
                           f"(smallest attainable p {row['h2_min_p']:.4g})")
        elif not p_holm < alpha:
            failing.append(f"Holm-adjusted p {p_holm:.4g} >= {alpha:g} (raw p {row['h2_p_value']:.4g}, "
                           f"{k} comparisons)")
        if np.isfinite(row["h2_seed_floor"]) and not row["h2_exceeds_floor"]:
            failing.append(f"drift difference {row['h2_difference']:.4g} within the seed floor "
                           f"{row['h2_seed_floor']:.4g}")
        if ci_verdict != "supported":
            failing.append(row["h2_reason"])  # the interval straddles the threshold
        if failing:
            reason = "; ".join(failing)
        else:
            verdict = "supported"
            reason = (f"{row['h2_reason']}; Holm-adjusted p {p_holm:.4g} < {alpha:g}; difference "
                      f"{row['h2_difference']:.4g} > seed floor {row['h2_seed_floor']:.4g}")
    row.update(h2_verdict=verdict, h2_reason=reason)
    return row


def verdict_row(task: str, task_def: dict, reference: pd.DataFrame, other: pd.DataFrame, analysis: dict,
                seed_floor: float = math.nan, names: tuple[str, str] = UNNAMED) -> dict[str, Any]:
    """One comparison's row of verdicts_table on its own (Holm over it alone: h2_p_holm = h2_p_value).

    ``reference``, ``other``: the reference method's and the compared method's chosen runs, columns
    seed, val_main, drift; ``analysis``: the config's analysis section (confidence,
    h1_max_relative_drop, h2_min_drift_reduction, h2_metric, h2_pooling, h2_alpha); ``names``: the
    two methods' names (reference, compared). Columns as verdicts_table.
    """
    row = _comparison_row(task, task_def, reference, other, analysis, seed_floor, names)
    return _judge_h2(row, row["h2_p_value"], int(np.isfinite(row["h2_p_value"])))


def verdicts_table(pairs: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]],
                   seed_floors: dict[tuple[str, str], float], task_defs: dict, analysis: dict) -> pd.DataFrame:
    """verdicts.csv: one row per (method, task) comparison whose two arms both have runs, in ``pairs``' order.

    ``pairs``: {(method, task): (reference runs, method runs)}, each frame one row per chosen run with
    columns seed, val_main (validation main metric) and drift (mean over layers of the h2_metric's
    drift, e.g. 1 - CKA); ``seed_floors``: {(method, task): seed floor in the same drift units}, NaN or
    absent when unknown; ``task_defs``: the task catalog entries (main_metric, optional
    h1_absolute_tolerance); ``analysis``: the config's analysis section (confidence,
    h1_max_relative_drop, h2_min_drift_reduction, h2_metric, h2_pooling, h2_alpha, reference_method:
    the name in the `reference` column).

    Columns: task, method, reference, metric, analysis, method_minus_reference (mean of the method
    minus mean of the reference, validation main metric), diff_ci_low, diff_ci_high; h1_mode
    (relative / absolute), h1_tolerance, h1_relative_drop, h1_difference (absolute mode: mean
    reference - mean method, else NaN), h1_ci_low, h1_ci_high (of the judged quantity), h1_verdict,
    h1_reason; h2_drift_metric, h2_pooling, h2_drift_reduction, h2_ci_low, h2_ci_high, h2_difference
    (mean reference drift - mean method drift), h2_p_value (exact one-sided permutation test),
    h2_p_holm (Holm across every comparison with a p-value: methods x tasks), h2_min_p, h2_alpha,
    h2_seed_floor, h2_exceeds_floor (bool, None when the floor is unknown), h2_test, h2_verdict,
    h2_reason; confidence. An empty frame (no columns) when no comparison has both arms. Raises
    KeyError naming a task missing from ``task_defs``.
    """
    reference = analysis.get("reference_method", UNNAMED[0])
    rows = []
    for (method, task), (ref, other) in pairs.items():
        if ref.empty or other.empty:
            continue
        if task not in task_defs:
            raise KeyError(f"task '{task}' has runs but no task catalog entry")
        rows.append(_comparison_row(task, task_defs[task], ref, other, analysis,
                                    seed_floors.get((method, task), math.nan), (reference, method)))
    if not rows:
        return pd.DataFrame()
    p_holm = stats.holm([row["h2_p_value"] for row in rows])
    k = int(np.isfinite(p_holm).sum())
    return pd.DataFrame([_judge_h2(row, float(p), k) for row, p in zip(rows, p_holm, strict=True)])
