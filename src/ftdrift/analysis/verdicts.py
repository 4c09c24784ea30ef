"""verdicts.csv: H1 and H2 per task, from the chosen full and LoRA runs (one row per seed each).

H1 ("LoRA's validation main metric is within a tolerance of full fine-tuning's") is judged on the
delta-method interval of the relative drop, or, for a task whose catalog entry declares
``h1_absolute_tolerance`` (e.g. Matthews correlation, which can be <= 0), on the t-interval of the
absolute difference (ftdrift.core.stats.verdict_h1).

H2 ("LoRA's representations drift at least ``h2_min_drift_reduction`` relatively less") needs three
things to be "supported": the delta-method interval of the relative reduction clears the threshold,
the exact one-sided permutation test over seeds (full drifts more than LoRA) rejects at
``analysis.h2_alpha`` after Holm's correction across the table's tasks (stats.permutation_test,
stats.holm), and the difference of mean drifts exceeds the task's seed floor (how far two seeds of
one setting drift apart: a difference inside it is indistinguishable from reseeding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ftdrift.core import stats

__all__ = ["pair_by_seed", "verdict_row", "verdicts_table", "H2_TEST"]

H2_TEST = "exact permutation test over seeds (one-sided), Holm-adjusted across {k} task{s}"


def pair_by_seed(full: pd.DataFrame, lora: pd.DataFrame) -> bool:
    """Both methods ran the same seeds (>= 2): the seed fixes the data order and the head's
    initialisation for both, so the runs pair and the paired analysis applies."""
    seeds_full, seeds_lora = sorted(full.seed), sorted(lora.seed)
    return seeds_full == seeds_lora and len(seeds_full) >= 2 and len(set(seeds_full)) == len(seeds_full)


def _task_row(task: str, task_def: dict, full: pd.DataFrame, lora: pd.DataFrame, analysis: dict,
              seed_floor: float) -> dict[str, Any]:
    """Everything of a task's row except what depends on the other tasks (Holm) and the H2 verdict."""
    confidence = analysis["confidence"]
    paired = pair_by_seed(full, lora)
    if paired:
        full, lora = full.sort_values("seed"), lora.sort_values("seed")
    val_full, val_lora = full.val_main.to_numpy(float), lora.val_main.to_numpy(float)
    drift_full, drift_lora = full.drift.to_numpy(float), lora.drift.to_numpy(float)
    absolute = task_def.get("h1_absolute_tolerance")
    h1 = stats.verdict_h1(val_full, val_lora, analysis["h1_max_relative_drop"], confidence, paired=paired,
                          absolute_tolerance=absolute)
    h2 = stats.verdict_h2(drift_full, drift_lora, analysis["h2_min_drift_reduction"], confidence, paired=paired)
    test = stats.permutation_test(drift_full, drift_lora)
    if paired:
        diff = stats.paired_difference(val_lora, val_full, confidence)
    else:
        diff = stats.welch_difference(val_lora, val_full, confidence)
    floor = float(seed_floor) if seed_floor is not None else math.nan
    h2_difference = test["statistic"]
    exceeds = bool(h2_difference > floor) if np.isfinite(floor) and np.isfinite(h2_difference) else None
    return {"task": task, "metric": task_def["main_metric"],
            "analysis": f"paired by seed (n = {len(full)})" if paired else
            f"unpaired (full n = {len(full)}, LoRA n = {len(lora)})",
            "lora_minus_full": diff["mean_diff"], "diff_ci_low": diff["ci_low"], "diff_ci_high": diff["ci_high"],
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
            "_h2_ci_verdict": h2["verdict"], "_n": (test["n_full"], test["n_lora"]),
            "_finite": bool(np.isfinite(drift_full).all() and np.isfinite(drift_lora).all())}


def _judge_h2(row: dict[str, Any], p_holm: float, k: int) -> dict[str, Any]:
    """The H2 verdict of a row once its Holm-adjusted p is known (k: p-values in the family)."""
    alpha, n_full, n_lora = row["h2_alpha"], *row["_n"]
    test = H2_TEST.format(k=k, s="" if k == 1 else "s") if np.isfinite(row["h2_p_value"]) else \
        "no permutation test: fewer than 2 seeds in an arm or drift missing"
    row = {**row, "h2_p_holm": p_holm, "h2_test": test}
    ci_verdict, verdict, reason = row.pop("_h2_ci_verdict"), "inconclusive", None
    row.pop("_n")
    finite = row.pop("_finite")
    if n_full < 2 or n_lora < 2:
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
            failing.append(f"with {n_full} and {n_lora} seeds the exact test cannot reach p < {alpha:g}: add seeds "
                           f"(smallest attainable p {row['h2_min_p']:.4g})")
        elif not p_holm < alpha:
            failing.append(f"Holm-adjusted p {p_holm:.4g} >= {alpha:g} (raw p {row['h2_p_value']:.4g}, {k} tasks)")
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


def verdict_row(task: str, task_def: dict, full: pd.DataFrame, lora: pd.DataFrame, analysis: dict,
                seed_floor: float = math.nan) -> dict[str, Any]:
    """One task's row of verdicts_table on its own (Holm over this task alone: h2_p_holm = h2_p_value).

    ``full``, ``lora``: the chosen runs, columns seed, val_main, drift; ``analysis``: the config's
    analysis section (confidence, h1_max_relative_drop, h2_min_drift_reduction, h2_metric,
    h2_pooling, h2_alpha). Columns as verdicts_table.
    """
    row = _task_row(task, task_def, full, lora, analysis, seed_floor)
    return _judge_h2(row, row["h2_p_value"], int(np.isfinite(row["h2_p_value"])))


def verdicts_table(pairs: dict[str, tuple[pd.DataFrame, pd.DataFrame]], seed_floors: dict[str, float],
                   task_defs: dict, analysis: dict) -> pd.DataFrame:
    """verdicts.csv: one row per task whose full and LoRA arms both have runs, in ``pairs``' order.

    ``pairs``: {task: (full, lora)}, each frame one row per chosen run with columns seed, val_main
    (validation main metric) and drift (mean over layers of the h2_metric's drift, e.g. 1 - CKA);
    ``seed_floors``: {task: seed floor in the same drift units}, NaN or absent when unknown;
    ``task_defs``: the task catalog entries (main_metric, optional h1_absolute_tolerance);
    ``analysis``: the config's analysis section (confidence, h1_max_relative_drop,
    h2_min_drift_reduction, h2_metric, h2_pooling, h2_alpha).

    Columns: task, metric, analysis, lora_minus_full, diff_ci_low, diff_ci_high; h1_mode
    (relative / absolute), h1_tolerance, h1_relative_drop, h1_difference (absolute mode: mean full -
    mean LoRA, else NaN), h1_ci_low, h1_ci_high (of the judged quantity), h1_verdict, h1_reason;
    h2_drift_metric, h2_pooling, h2_drift_reduction, h2_ci_low, h2_ci_high, h2_difference (mean full
    drift - mean LoRA drift), h2_p_value (exact one-sided permutation test), h2_p_holm (Holm across
    the tasks with a p-value), h2_min_p, h2_alpha, h2_seed_floor, h2_exceeds_floor (bool, None when
    the floor is unknown), h2_test, h2_verdict, h2_reason; confidence. An empty frame (no columns)
    when no task has both arms. Raises KeyError naming a task missing from ``task_defs``.
    """
    rows = []
    for task, (full, lora) in pairs.items():
        if full.empty or lora.empty:
            continue
        if task not in task_defs:
            raise KeyError(f"task '{task}' has runs but no task catalog entry")
        rows.append(_task_row(task, task_defs[task], full, lora, analysis, seed_floors.get(task, math.nan)))
    if not rows:
        return pd.DataFrame()
    p_holm = stats.holm([row["h2_p_value"] for row in rows])
    k = int(np.isfinite(p_holm).sum())
    return pd.DataFrame([_judge_h2(row, float(p), k) for row, p in zip(rows, p_holm, strict=True)])
