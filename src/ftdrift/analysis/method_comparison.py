"""The method axis at a glance: how close each method ends up to the reference method, at what cost.

* method_closeness.csv: per task x compared method x layer, the similarity between the reference's
  and the method's final representations (the pair tables of rule method_similarity, each seed at
  its last common step), mean / min / max over seeds.
* methods.csv: per task x method (the reference included), the chosen setting's trainable
  parameters, validation metric, drift from the base model and forgetting (where the forgetting
  table has values), the mean over layers of the final similarity to the reference, the rank by
  that closeness (1 = closest) and whether the method is on the task's Pareto front.

Pareto front: a method is on it when no other method of the task is at least as good on every
objective and better on one. Objectives: validation metric (higher), trainable parameters, drift
from the base model and forgetting (lower: the cost of the method and how much of the base model
it keeps). An objective unknown for some method of the task is left out of that task's front
(`pareto_objectives` names the ones used). Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: an
Illusion of Equivalence") and Biderman et al. 2024 ("LoRA Learns Less and Forgets Less") compare
methods on these axes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ftdrift.core.drift_metrics import metric_info
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS, USABLE_STATUSES

log = logging.getLogger("ftdrift.analysis.method_comparison")

CLOSENESS_COLUMNS = ["task", "reference", "method", "metric", "pooling", "layer", "layer_name", "n_seeds",
                     "value_mean", "value_min", "value_max"]
METHODS_COLUMNS = ["task", "method", "reference", "is_reference", "lr", "batch_size", "main_metric", "n_seeds",
                   "trainable_params", "trainable_fraction", "val_mean", "val_ci_low", "val_ci_high", "drift_mean",
                   "drift_ci_low", "drift_ci_high", "forgetting_probe_drop", "forgetting_out_of_task_drift",
                   "lm_perplexity_ratio", "similarity_metric", "similarity_pooling", "similarity_mean",
                   "similarity_min_layer", "closeness_rank", "pareto", "pareto_objectives"]
# (methods.csv column, higher is better): the Pareto objectives, in the order pareto_objectives lists them
OBJECTIVES = (("val_mean", True), ("trainable_params", False), ("drift_mean", False),
              ("forgetting_probe_drop", False))


def _read(path) -> pd.DataFrame | None:
    """A CSV as a frame (lr as text); None when the path is None, absent or the file empty."""
    if path is None or not Path(path).exists():
        return None
    try:
        frame = pd.read_csv(path, dtype={"lr": str})
    except pd.errors.EmptyDataError:
        return None
    return None if frame.empty else frame


def closeness_table(pair_paths, metric: str, pooling: str) -> pd.DataFrame:
    """method_closeness.csv from the pair tables (ftdrift.analysis.pairs.METHOD_PAIR_COLUMNS).

    Per task x method x layer: `metric` (a drift metric, e.g. linear_cka) under `pooling` between
    the reference's and the method's runs of one seed at their last common step, mean / min / max
    over seeds. Header-only tables (no shared seed) add nothing. Columns CLOSENESS_COLUMNS.
    """
    frames = [f for f in (_read(p) for p in pair_paths) if f is not None]
    if not frames:
        return pd.DataFrame(columns=CLOSENESS_COLUMNS)
    pairs = pd.concat(frames, ignore_index=True)
    pairs = pairs[(pairs.metric == metric) & (pairs.pooling == pooling)]
    if pairs.empty:
        log.info("the pair tables hold no %s rows with %s pooling: no closeness", metric, pooling)
        return pd.DataFrame(columns=CLOSENESS_COLUMNS)
    last = pairs.groupby(["task", "method", "seed"])["step"].transform("max")
    final = pairs[pairs.step == last]
    out = final.groupby(["task", "reference", "method", "metric", "pooling", "layer", "layer_name"], as_index=False,
                        sort=False).agg(n_seeds=("seed", "nunique"), value_mean=("value", "mean"),
                                        value_min=("value", "min"), value_max=("value", "max"))
    return out[CLOSENESS_COLUMNS]


def pareto_front(values: np.ndarray, higher_better) -> np.ndarray:
    """Which rows of ``values [n, k]`` no other row dominates (at least as good on every column and
    strictly better on one); `higher_better`: k booleans. Rows with NaN are never on the front and
    dominate nothing. Returns a bool array [n]."""
    values = np.asarray(values, dtype=float)
    sign = np.where(np.asarray(higher_better, dtype=bool), 1.0, -1.0)
    oriented = values * sign  # larger is better in every column
    ok = np.isfinite(oriented).all(axis=1)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = oriented[ok]
        dominated = (others >= oriented[i]).all(axis=1) & (others > oriented[i]).any(axis=1)
        front[i] = not dominated.any()
    return front


def closeness_ranks(mean: pd.Series, metric: str) -> pd.Series:
    """1 = closest to the reference: descending for a similarity (CKA), ascending for a distance;
    NaN stays unranked. Ties share the smallest rank."""
    return mean.rank(ascending=not metric_info(metric).similarity, method="min", na_option="keep")


def _chosen(runs: pd.DataFrame | None, best: pd.DataFrame) -> pd.DataFrame:
    """The usable runs of each task x method's chosen setting (best.csv's lr and batch size)."""
    if runs is None or runs.empty:
        return pd.DataFrame(columns=RUN_KEYS)
    runs = runs.assign(lr=runs.lr.astype(str), batch_size=runs.batch_size.astype(int))
    settings = best[SETTING_KEYS].assign(lr=best.lr.astype(str), batch_size=best.batch_size.astype(int))
    chosen = runs.merge(settings.drop_duplicates(), on=SETTING_KEYS)
    return chosen[chosen.status.isin(USABLE_STATUSES)] if "status" in chosen else chosen


def _run_means(chosen: pd.DataFrame, frame: pd.DataFrame | None, columns: dict[str, str]) -> pd.DataFrame:
    """Per task x method, the mean over the chosen runs of `frame`'s columns (renamed by `columns`)."""
    keys = ["task", "method"]
    if frame is None or chosen.empty or not set(columns) & set(frame.columns):
        return pd.DataFrame(columns=keys + list(columns.values()))
    frame = frame.assign(lr=frame.lr.astype(str), batch_size=frame.batch_size.astype(int),
                         seed=frame.seed.astype(int))
    present = [c for c in columns if c in frame]
    merged = chosen[RUN_KEYS].assign(seed=chosen.seed.astype(int)).merge(
        frame[RUN_KEYS + present], on=RUN_KEYS)
    means = merged.groupby(keys, as_index=False, sort=False)[present].mean(numeric_only=True)
    return means.rename(columns=columns)


def methods_table(best: pd.DataFrame, runs: pd.DataFrame | None, closeness: pd.DataFrame,
                  forgetting: pd.DataFrame | None, reference: str, metric: str, pooling: str,
                  methods: list[str] | None = None) -> pd.DataFrame:
    """methods.csv: one row per task x method of best.csv (module doc), tasks in best.csv's order,
    methods in `methods`' order (the config's; others after, by name).

    `runs`: runs.csv (RUN_KEYS, status, trainable_params, trainable_fraction); `closeness`:
    closeness_table's frame; `forgetting`: forgetting.csv or None (its columns NaN then);
    `metric`, `pooling`: those of `closeness` (the similarity named in the table).
    """
    if best is None or best.empty:
        return pd.DataFrame(columns=METHODS_COLUMNS)
    best = best.assign(lr=best.lr.astype(str), batch_size=best.batch_size.astype(int))
    chosen = _chosen(runs, best)
    table = best.merge(_run_means(chosen, runs, {"trainable_params": "trainable_params"}),
                       on=["task", "method"], how="left")
    table = table.merge(_run_means(chosen, forgetting, {"probe_drop": "forgetting_probe_drop",
                                                        "out_of_task_drift": "forgetting_out_of_task_drift"}),
                        on=["task", "method"], how="left")
    table = table.merge(_perplexity_ratio(chosen, forgetting), on=["task", "method"], how="left")
    if closeness is not None and not closeness.empty:
        per_method = closeness.groupby(["task", "method"], as_index=False, sort=False).agg(
            similarity_mean=("value_mean", "mean"),
            similarity_min_layer=("value_mean", "min" if metric_info(metric).similarity else "max"))
        table = table.merge(per_method, on=["task", "method"], how="left")
    table = table.assign(reference=reference, is_reference=table.method == reference, similarity_metric=metric,
                         similarity_pooling=pooling)
    for col in METHODS_COLUMNS:
        if col not in table:
            table[col] = np.nan
    order = list(methods or []) + sorted(set(table.method) - set(methods or []))
    tasks = list(dict.fromkeys(best.task))
    table = table.assign(_t=table.task.map(tasks.index), _m=table.method.map(order.index)).sort_values(
        ["_t", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)
    table["closeness_rank"] = table.groupby("task", sort=False)["similarity_mean"].transform(
        lambda mean: closeness_ranks(mean, metric))
    front, used = _fronts(table)
    table["pareto"], table["pareto_objectives"] = front, used
    return table[METHODS_COLUMNS]


def _perplexity_ratio(chosen: pd.DataFrame, forgetting: pd.DataFrame | None) -> pd.DataFrame:
    """Per task x method, the mean over chosen runs of fine-tuned / base LM perplexity (NaN without)."""
    cols = {"lm_finetuned_perplexity", "lm_base_perplexity"}
    if forgetting is None or not cols <= set(forgetting.columns):
        return pd.DataFrame(columns=["task", "method", "lm_perplexity_ratio"])
    ratio = forgetting.assign(ratio=forgetting.lm_finetuned_perplexity / forgetting.lm_base_perplexity)
    return _run_means(chosen, ratio, {"ratio": "lm_perplexity_ratio"})


def _fronts(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per task: (on the Pareto front?, the objectives used: those known for every method of the task)."""
    front = pd.Series(False, index=table.index, dtype=object)
    used = pd.Series("", index=table.index, dtype=object)
    for _, rows in table.groupby("task", sort=False):
        objectives = [(c, up) for c, up in OBJECTIVES if pd.to_numeric(rows[c], errors="coerce").notna().all()]
        if not objectives:
            front[rows.index] = None
            continue
        values = rows[[c for c, _ in objectives]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        front[rows.index] = pareto_front(values, [up for _, up in objectives]).tolist()
        used[rows.index] = ", ".join(c for c, _ in objectives)
    return front, used


def compare_methods(*, best, runs, forgetting, pair_paths, reference: str, analysis: dict, outputs: dict,
                    methods: list[str] | None = None) -> None:
    """Rule compare_methods: method_closeness.csv (outputs['closeness']) and methods.csv
    (outputs['methods']) from best.csv, runs.csv, forgetting.csv (optional) and the pair tables.
    `analysis`: the config's analysis section (h2_metric, h2_pooling: the similarity ranked)."""
    from ftdrift.core import io

    metric, pooling = analysis["h2_metric"], analysis["h2_pooling"]
    closeness = closeness_table(pair_paths, metric, pooling)
    table = methods_table(_read(best), _read(runs), closeness, _read(forgetting), reference, metric, pooling, methods)
    io.write_csv(outputs["closeness"], closeness)
    io.write_csv(outputs["methods"], table)
