"""Is the drift real? The two noise scales the tables put beside every drift value.

* The seed floor: the similarity between runs of one setting that differ only in their seed
  (rule seed_floor, ftdrift.analysis.pairs), averaged over seed pairs. A drift from the base model
  smaller than 1 - floor is within what re-running the recipe changes anyway.
* Probe sampling: the bootstrap over probe examples of each final linear CKA (rule drift,
  ftdrift.analysis.drift.drift_bootstrap). All runs of a task share the resamples, so the
  replicates of a mean over seeds or layers are the means of the runs' replicates, and the
  interval of any such mean is ``estimate -/+ z sd(replicates)`` (similarity.bootstrap_interval).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ftdrift.core.drift_metrics import to_drift
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS, USABLE_STATUSES

FLOOR_COLUMNS = SETTING_KEYS + ["step", "layer", "layer_name", "pooling", "metric", "value", "value_min", "value_max",
                                "n_pairs", "final"]


def _read(paths, columns: list[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype={"lr": str}) for p in paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def seed_floor_table(pair_paths, runs: pd.DataFrame) -> pd.DataFrame:
    """seed_floor.csv: per setting, step, layer, pooling and metric, the similarity between two
    seeds of the setting, mean / min / max over the pairs whose runs are both usable (not diverged)
    (`final` False); and per setting, layer, pooling and metric the same over each pair at its own
    last common step (`final` True, `step` = the latest of those): the floor a run's final drift is
    compared with, even when seeds stop early at different steps.

    `pair_paths`: the seed_floor job's CSVs (columns SETTING_KEYS, seed_a, seed_b, step, layer,
    layer_name, pooling, metric, value, bootstrap_se); `runs`: runs.csv's frame (RUN_KEYS, status).
    """
    pairs = _read(pair_paths, SETTING_KEYS + ["seed_a", "seed_b", "step", "layer", "layer_name", "pooling", "metric",
                                              "value"])
    if pairs.empty or runs.empty:
        return pd.DataFrame(columns=FLOOR_COLUMNS)
    usable = {tuple(str(v) for v in key) for key in
              runs.loc[runs.status.isin(USABLE_STATUSES), RUN_KEYS].itertuples(index=False)}

    def ok(row, seed) -> bool:
        return (row.task, row.method, str(row.lr), str(row.batch_size), str(seed)) in usable

    pairs = pairs[[ok(r, r.seed_a) and ok(r, r.seed_b) for r in pairs.itertuples()]]
    if pairs.empty:
        return pd.DataFrame(columns=FLOOR_COLUMNS)
    keys = ["layer", "layer_name", "pooling", "metric"]
    stats = dict(value=("value", "mean"), value_min=("value", "min"), value_max=("value", "max"),
                 n_pairs=("value", "size"))
    per_step = pairs.groupby(SETTING_KEYS + ["step"] + keys, as_index=False, sort=False).agg(**stats)
    last = pairs.groupby(SETTING_KEYS + ["seed_a", "seed_b", "pooling", "metric"])["step"].transform("max")
    final = pairs[pairs.step == last].groupby(SETTING_KEYS + keys, as_index=False, sort=False).agg(
        step=("step", "max"), **stats)
    return pd.concat([per_step.assign(final=False), final.assign(final=True)], ignore_index=True)[FLOOR_COLUMNS]


def final_floor(floor: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    """Per setting and layer, the floor over each seed pair at its own last common step."""
    if floor.empty:
        return floor
    return floor[(floor.metric == metric) & (floor.pooling == pooling) & floor.final.astype(bool)]


def setting_floor(final: pd.DataFrame, chosen: pd.DataFrame, task: str, method: str, metric: str) -> float:
    """The task x method's chosen setting's final seed floor in drift units: the mean over layers of
    the final-step drift between its seeds (`final`: final_floor rows); NaN without one."""
    setting = chosen[(chosen.task == task) & (chosen.method == method)]
    if setting.empty or final.empty:
        return math.nan
    lr, bs = str(setting.lr.iloc[0]), int(setting.batch_size.iloc[0])
    sub = final[(final.task == task) & (final.method == method) & (final.lr.astype(str) == lr)
                & (final.batch_size.astype(int) == bs)]
    return float(to_drift(metric, sub.value).mean()) if len(sub) else math.nan


def comparison_floors(floor: pd.DataFrame, chosen: pd.DataFrame, metric: str, pooling: str, reference: str,
                      methods=None) -> dict[tuple[str, str], float]:
    """H2's seed floor per (method, task) comparison with the `reference` method, in drift units: the
    larger of the two chosen settings' floors (setting_floor; NaN if either has < 2 seeds).

    `methods`: the compared methods (default: every method of `chosen` but the reference)."""
    final = final_floor(floor, metric, pooling)
    methods = [m for m in (methods if methods is not None else chosen.method.unique()) if m != reference]
    out = {}
    for task in chosen.task.unique():
        ref = setting_floor(final, chosen, task, reference, metric)
        for method in methods:
            values = [ref, setting_floor(final, chosen, task, method, metric)]
            out[(method, task)] = max(values) if all(np.isfinite(values)) else math.nan
    return out


def layer_floor(final_by_layer: pd.DataFrame, floor: pd.DataFrame, metric: str, pooling: str) -> pd.Series:
    """drift_by_layer.csv's `floor_mean`: the chosen setting's final seed floor at each layer
    (similarity units), aligned with `final_by_layer` (columns SETTING_KEYS, layer); NaN without one."""
    final = final_floor(floor, metric, pooling)
    if final.empty:
        return pd.Series(np.nan, index=final_by_layer.index)
    key = final.assign(lr=final.lr.astype(str), batch_size=final.batch_size.astype(int))[
        SETTING_KEYS + ["layer", "value"]].rename(columns={"value": "floor_mean"})
    merged = final_by_layer[SETTING_KEYS + ["layer"]].assign(
        lr=final_by_layer.lr.astype(str), batch_size=final_by_layer.batch_size.astype(int)).merge(
        key, on=SETTING_KEYS + ["layer"], how="left")
    return pd.Series(merged.floor_mean.to_numpy(), index=final_by_layer.index)


def read_bootstrap(paths) -> pd.DataFrame:
    """The drift jobs' replicate tables, concatenated (RUN_KEYS, step, layer, pooling, metric, replicate, value)."""
    return _read(paths, RUN_KEYS + ["step", "layer", "pooling", "metric", "replicate", "value"])


def _replicates(boot: pd.DataFrame, chosen: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    sub = boot[(boot.metric == metric) & (boot.pooling == pooling)]
    if sub.empty:
        return sub
    sub = sub.assign(lr=sub.lr.astype(str))
    return sub.merge(chosen[RUN_KEYS].assign(lr=chosen.lr.astype(str)), on=RUN_KEYS)


def layer_probe_intervals(boot: pd.DataFrame, chosen: pd.DataFrame, layers: pd.DataFrame, metric: str, pooling: str,
                          confidence: float) -> pd.DataFrame:
    """Per task x method x layer of `layers` (drift_by_layer.csv: value_mean over the chosen seeds),
    the probe-sampling interval of that seed mean: columns probe_ci_low, probe_ci_high."""
    reps = _replicates(boot, chosen, metric, pooling)
    out = pd.DataFrame({"probe_ci_low": np.nan, "probe_ci_high": np.nan}, index=layers.index)
    if reps.empty or layers.empty:
        return out
    seed_mean = reps.groupby(["task", "method", "layer", "replicate"])["value"].mean()
    sd = seed_mean.groupby(["task", "method", "layer"]).std(ddof=1)
    for i, row in layers.iterrows():
        key = (row.task, row.method, int(row.layer))
        if key in sd.index:
            out.loc[i] = _normal(row.value_mean, sd[key], confidence)
    return out


def _normal(estimate: float, sd: float, confidence: float) -> tuple[float, float]:
    """estimate -/+ z sd: similarity.bootstrap_interval with the replicates' sd already taken."""
    from scipy.stats import norm

    half = norm.ppf(0.5 + confidence / 2.0) * sd
    return estimate - half, estimate + half


def drift_probe_intervals(boot: pd.DataFrame, chosen: pd.DataFrame, best: pd.DataFrame, metric: str, pooling: str,
                          confidence: float) -> pd.DataFrame:
    """best.csv's drift_probe_ci_low / _high: the probe-sampling interval of drift_mean (the seed
    mean of each run's mean over layers of the final drift)."""
    reps = _replicates(boot, chosen, metric, pooling)
    out = pd.DataFrame({"drift_probe_ci_low": np.nan, "drift_probe_ci_high": np.nan}, index=best.index)
    if reps.empty or best.empty:
        return out
    reps = reps.assign(drift=to_drift(metric, reps.value))
    run_mean = reps.groupby(RUN_KEYS + ["replicate"])["drift"].mean().reset_index()
    seed_mean = run_mean.groupby(["task", "method", "replicate"])["drift"].mean()
    sd = seed_mean.groupby(["task", "method"]).std(ddof=1)
    for i, row in best.iterrows():
        if (row.task, row.method) in sd.index and np.isfinite(row.drift_mean):
            out.loc[i] = _normal(row.drift_mean, sd[(row.task, row.method)], confidence)
    return out
