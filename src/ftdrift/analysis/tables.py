"""Aggregate tables: every run, best hyperparameters on dev, seed statistics, H1/H2 verdicts."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ftdrift.analysis.summary import latex_tables, summary_markdown
from ftdrift.core import io, metrics, stats
from ftdrift.core.drift_metrics import to_drift
from ftdrift.data import qa
from ftdrift.study.config import task_kind
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS, USABLE_STATUSES

log = logging.getLogger("ftdrift.analysis.tables")


def runs_frame(metrics_paths) -> pd.DataFrame:
    """One row per run: hyperparameters, dev and validation metrics, run metadata."""
    rows = []
    for path in metrics_paths:
        result = io.read_json(path)
        meta, main = result["meta"], result["main_metric"]
        status = meta.get("status") or ("stopped_early" if meta["stopped_early"] else "completed")
        row = {**{k: meta["run"][k] for k in RUN_KEYS}, "status": status,
               "main_metric": main, "dev_main": result["dev"].get(main), "val_main": result["validation"].get(main)}
        row.update({f"dev_{k}": v for k, v in result["dev"].items()})
        row.update({f"val_{k}": v for k, v in result["validation"].items()})
        for key in ("steps", "best_step", "best_dev_loss", "trainable_params", "total_params", "trainable_fraction",
                    "train_seconds", "micro_batch", "accumulation", "precision", "attempts", "diverged_at_step",
                    "divergence_reason"):
            row[key] = meta.get(key)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else RUN_KEYS + ["status", "main_metric", "dev_main", "val_main",
                                                                   "trainable_fraction"])


def with_missing(runs: pd.DataFrame, planned: list[dict] | None) -> pd.DataFrame:
    """runs.csv's rows plus one row with status 'missing' per planned run without a result
    (only with analysis.allow_missing_runs: otherwise every planned run is an input)."""
    if not planned:
        return runs
    have = {tuple(str(v) for v in key) for key in runs[RUN_KEYS].itertuples(index=False)} if not runs.empty else set()
    missing = [{**{k: p[k] for k in RUN_KEYS}, "status": "missing"} for p in planned
               if tuple(str(p[k]) for k in RUN_KEYS) not in have]
    if not missing:
        return runs
    frame = pd.DataFrame(missing)
    frame["lr"] = frame["lr"].astype(str)
    return pd.concat([runs, frame], ignore_index=True)


def main_metric_ci(records: list[dict], saved_predictions: dict, task_def: dict, n_resamples: int,
                   confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of a run's validation main metric, resampling validation examples
    (questions for SQuAD v2, scored without the no-answer threshold, as the official raw scores)."""
    main = task_def["main_metric"]
    predictions = saved_predictions["predictions"]
    missing = [r["id"] for r in records if r["id"] not in predictions]
    if missing:  # the checkpoint validator reports the run; its interval is unknown
        log.warning("no prediction for %d validation examples (e.g. %s): no interval", len(missing), missing[:3])
        return math.nan, math.nan
    if task_kind(task_def) == "classification":
        y_true = np.array([r["label"] for r in records])
        y_pred = np.array([predictions[r["id"]] for r in records])
        return metrics.bootstrap_ci(lambda t, p: metrics.classification_metrics(t, p, [main])[main], y_true, y_pred,
                                    n_resamples=n_resamples, confidence=confidence, seed=seed)
    per_question = metrics.squad_v2_per_question(qa.records_to_squad(records), predictions)
    scores = np.array([per_question[r["id"]][1 if main == "f1" else 0] for r in records], dtype=float)
    return metrics.bootstrap_ci(lambda x: 100.0 * float(np.mean(x)), scores, n_resamples=n_resamples,
                                confidence=confidence, seed=seed)


def checks_frame(check_paths) -> pd.DataFrame:
    """One row per run from the checkpoint validator (ftdrift.analysis.checkpoints)."""
    rows = []
    for path in check_paths:
        check = io.read_json(path)
        by_name = {c["check"]: c for c in check["checks"]}
        reload = by_name.get("reloaded model") or by_name.get("base model + adapter") or {}
        merge = by_name.get("merged adapter")
        rows.append({**{k: check["run"][k] for k in RUN_KEYS}, "checkpoint_ok": bool(check["passed"]),
                     "checkpoint_failure": check.get("failure", ""),
                     "reload_prediction_mismatches": reload.get("prediction_mismatches"),
                     "merge_max_abs_logit_diff": check["merge_max_abs_logit_diff"],
                     "merge_ok": None if merge is None else bool(merge["passed"])})
    return pd.DataFrame(rows, columns=RUN_KEYS + ["checkpoint_ok", "checkpoint_failure", "reload_prediction_mismatches",
                                                  "merge_max_abs_logit_diff", "merge_ok"])


def final_drift(drift: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    """Per run and layer, the value at the run's last snapshot."""
    sub = drift[(drift.metric == metric) & (drift.pooling == pooling)]
    last = sub.groupby(RUN_KEYS)["step"].transform("max")
    return sub[sub.step == last]


def run_drift_table(drift: pd.DataFrame) -> pd.DataFrame:
    """run_drift.csv: the drift score of every run x metric x pooling, the mean over layers of the
    drift value (1 − similarity, or the distance: ftdrift.core.drift_metrics.to_drift) at the run's
    last snapshot. Columns RUN_KEYS + metric, pooling, step (that snapshot), drift; the report's
    metric-vs-drift figures read it, the verdicts use its h2_metric x h2_pooling rows."""
    columns = RUN_KEYS + ["metric", "pooling", "step", "drift"]
    if drift.empty:
        return pd.DataFrame(columns=columns)
    final = drift[drift.step == drift.groupby(RUN_KEYS + ["metric", "pooling"])["step"].transform("max")]
    scored = pd.concat([part.assign(drift=to_drift(metric, part.value)) for metric, part in final.groupby(
        "metric", sort=False)])
    return scored.groupby(columns[:-1], as_index=False, sort=False)["drift"].mean()[columns]


def usable(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose numbers enter means (not diverged, not missing); all rows of a table without statuses."""
    return runs[runs.status.isin(USABLE_STATUSES)] if "status" in runs else runs


def chosen_runs(runs: pd.DataFrame | None, best: pd.DataFrame | None = None, usable_only: bool = True) -> pd.DataFrame:
    """The runs (seeds) of each task x method's chosen setting: the one in `best` (best.csv's rows) or,
    without it, the one `best_settings` picks over the usable runs. `usable_only`: the runs entering
    the means; False: every seed of the setting (diverged and missing ones too, to be shown as such)."""
    if runs is None or runs.empty:
        return runs.iloc[0:0] if runs is not None else pd.DataFrame(columns=RUN_KEYS)
    if best is None:
        best = best_settings(usable(runs))
    if best.empty:
        return runs.iloc[0:0]
    return (usable(runs) if usable_only else runs).merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)


def write_chosen(metrics_paths, path) -> None:
    """chosen.csv (RUN_KEYS of chosen_runs) from the runs' metrics.json alone: its own rule, so that the
    comparisons with the reference method re-run when the choice changes, not whenever a table is rebuilt."""
    runs = runs_frame(metrics_paths)
    runs["lr"] = runs["lr"].astype(str)
    io.write_csv(path, chosen_runs(runs)[RUN_KEYS] if not runs.empty else pd.DataFrame(columns=RUN_KEYS))


def best_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x method, the (lr, batch size) with the best mean dev main metric over seeds."""
    dev = runs.groupby(SETTING_KEYS, as_index=False)["dev_main"].mean()
    idx = dev.groupby(["task", "method"])["dev_main"].idxmax()
    return dev.loc[idx, SETTING_KEYS].reset_index(drop=True)


USABLE = USABLE_STATUSES


def aggregate(*, metrics_paths, predictions_paths, train_log_paths, validation_paths: dict, drift_paths,
              weights_paths, check_paths, baseline_paths: dict, task_defs: dict, analysis: dict, outputs: dict,
              planned: list[dict] | None = None, bootstrap_paths=(), seed_floor_paths=(), forgetting_paths=(),
              intruder_paths=(), methods: list[str] | None = None) -> None:
    """Build every table of results/tables/ from the runs' outputs (see the README's Results).

    The per-run lists (metrics, predictions, train logs) are aligned; `validation_paths` and
    `baseline_paths`: {task: path}; `analysis`: the config's analysis section (confidence,
    bootstrap_resamples, H1/H2 thresholds, h2_metric, h2_pooling, stability); `planned`: the grid's
    runs (wildcards dicts), those without outputs are listed as missing. Diverged runs are listed
    but left out of the choice of settings, the means and the verdicts. `bootstrap_paths`: the drift
    jobs' probe-bootstrap replicates; `seed_floor_paths`: the seed_floor jobs' CSVs;
    `forgetting_paths`: the forgetting jobs' JSONs; `intruder_paths`: the intruder sweeps;
    `methods`: the configured method names in the config's order (the verdicts' row order; default:
    the order the runs list them). Every method but `analysis['reference_method']` is compared with it.
    """
    from ftdrift.analysis import uncertainty
    from ftdrift.analysis.verdicts import verdicts_table
    from ftdrift.analysis.weight_tables import aggregate_intruders, aggregate_weights

    confidence = analysis["confidence"]
    runs = runs_frame(metrics_paths)
    validation = {task: io.read_jsonl(path) for task, path in validation_paths.items()}
    intervals = [main_metric_ci(validation[row.task], _read_predictions(path), task_defs[row.task],
                                analysis["bootstrap_resamples"], confidence, int(row.seed))
                 for row, path in zip(runs.itertuples(), predictions_paths, strict=True)]
    runs["val_main_ci_low"], runs["val_main_ci_high"] = [i[0] for i in intervals], [i[1] for i in intervals]
    runs["lr"] = runs["lr"].astype(str)
    runs = with_stability(runs, train_log_paths, task_defs, analysis["stability"])
    baselines = baselines_frame(baseline_paths)
    runs = with_trivial(runs, baselines)
    checks = checks_frame(check_paths)
    checks["lr"] = checks["lr"].astype(str)
    runs = runs.merge(checks, on=RUN_KEYS, how="left")
    drift = (pd.concat([pd.read_csv(p, dtype={"lr": str}) for p in drift_paths], ignore_index=True) if drift_paths
             else pd.DataFrame(columns=RUN_KEYS + ["step", "layer", "layer_name", "pooling", "metric", "value"]))
    chosen = chosen_runs(runs)
    metric, pooling = analysis["h2_metric"], analysis["h2_pooling"]
    final = final_drift(drift, metric, pooling).merge(chosen[RUN_KEYS], on=RUN_KEYS)
    scores = run_drift_table(drift)
    chosen = chosen.merge(scores[(scores.metric == metric) & (scores.pooling == pooling)][RUN_KEYS + ["drift"]],
                          on=RUN_KEYS, how="left")
    floor = uncertainty.seed_floor_table(seed_floor_paths, runs)
    boot = uncertainty.read_bootstrap(bootstrap_paths)
    best = best_table(chosen, runs, baselines, list(task_defs), confidence)
    best = pd.concat([best, uncertainty.drift_probe_intervals(boot, chosen, best, metric, pooling, confidence)],
                     axis=1)
    reference = analysis["reference_method"]
    compared = [m for m in (methods if methods is not None else list(dict.fromkeys(runs.method)))
                if m != reference]
    pairs = comparison_arms(chosen, list(task_defs), reference, compared)
    verdicts = verdicts_table(pairs, uncertainty.comparison_floors(floor, chosen, metric, pooling, reference, compared),
                              task_defs, analysis)
    layers = layer_table(final, analysis, debiased=final_drift(drift, "debiased_cka", pooling).merge(
        chosen[RUN_KEYS], on=RUN_KEYS))
    if not layers.empty:
        layers["floor_mean"] = uncertainty.layer_floor(layers, floor, metric, pooling)
        layers = pd.concat([layers, uncertainty.layer_probe_intervals(boot, chosen, layers, metric, pooling,
                                                                      confidence)], axis=1)
    runs = with_missing(runs, planned)
    io.write_csv(outputs["runs"], runs)
    io.write_csv(outputs["drift"], drift)
    io.write_csv(outputs["run_drift"], scores)
    io.write_csv(outputs["weights"], with_status(aggregate_weights(weights_paths), runs))
    io.write_csv(outputs["best"], best)
    io.write_csv(outputs["verdicts"], verdicts)
    io.write_csv(outputs["drift_by_layer"], layers)
    io.write_csv(outputs["stability"], setting_stability(runs, confidence, analysis["stability"]))
    io.write_csv(outputs["baselines"], baselines)
    io.write_csv(outputs["seed_floor"], floor)
    for name, table in forgetting_outputs(forgetting_paths, runs, baselines, task_defs, analysis).items():
        io.write_csv(outputs[name], table)
    io.write_csv(outputs["intruders"], with_status(aggregate_intruders(intruder_paths), runs))
    io.write_text(outputs["summary"], summary_markdown(best, verdicts, layers, analysis, failed_checks(runs),
                                                       runs[~runs.status.isin(USABLE)], below_trivial(runs)))
    io.write_text(outputs["latex"], latex_tables(best, verdicts, analysis))


def comparison_arms(chosen: pd.DataFrame, tasks: list[str], reference: str,
                    compared: list[str]) -> dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]]:
    """{(method, task): (the reference's chosen runs, the method's chosen runs)} for every compared
    method x task, methods outermost (verdicts.csv's row order); an arm without runs is an empty frame."""
    def arm(task: str, method: str) -> pd.DataFrame:
        return chosen[(chosen.task == task) & (chosen.method == method)]

    return {(method, task): (arm(task, reference), arm(task, method)) for method in compared for task in tasks}


def best_table(chosen: pd.DataFrame, runs: pd.DataFrame, baselines: pd.DataFrame, tasks: list[str],
               confidence: float) -> pd.DataFrame:
    """best.csv: per task x method, the chosen setting's seed statistics beside the task's baselines."""
    rows = []
    for (task, method), group in chosen.groupby(["task", "method"], sort=False):
        val = stats.mean_ci(group.val_main.to_numpy(float), confidence)
        dft = stats.mean_ci(group.drift.to_numpy(float), confidence)
        first = group.iloc[0]
        left_out = runs[(runs.task == task) & (runs.method == method) & (runs.lr == first.lr)
                        & (runs.batch_size == first.batch_size) & (runs.status == "diverged")]
        trivial, probe = (_baseline_value(baselines, task, name) for name in ("trivial", "linear_probe"))
        trivial_dev, probe_dev = (_baseline_value(baselines, task, name, "dev") for name in ("trivial", "linear_probe"))
        rows.append({"task": task, "method": method, "lr": first.lr, "batch_size": first.batch_size,
                     "main_metric": first.main_metric, "n_seeds": val["n"], "n_diverged": len(left_out),
                     "val_mean": val["mean"], "val_std": val["std"], "val_ci_low": val["ci_low"],
                     "val_ci_high": val["ci_high"], "dev_mean": float(group.dev_main.mean()),
                     "trivial_val": trivial, "probe_val": probe, "trivial_dev": trivial_dev, "probe_dev": probe_dev,
                     "beats_trivial": bool(val["mean"] > trivial) if np.isfinite(trivial) else None,
                     "drift_mean": dft["mean"], "drift_ci_low": dft["ci_low"], "drift_ci_high": dft["ci_high"],
                     "trainable_fraction": float(group.trainable_fraction.mean()),
                     # SQuAD v2's answerable / unanswerable breakdown (NaN for other tasks)
                     **{f"val_{part}_{m}": float(group[f"val_{part}_{m}"].mean())
                        if f"val_{part}_{m}" in group and group[f"val_{part}_{m}"].notna().any() else np.nan
                        for part in ("HasAns", "NoAns") for m in ("exact", "f1")}})
    order = {task: i for i, task in enumerate(tasks)}
    if not rows:  # no usable run yet (all missing or diverged): the columns, no rows
        return pd.DataFrame(columns=BEST_COLUMNS)
    return pd.DataFrame(rows).sort_values("task", key=lambda t: t.map(order), kind="stable")


BEST_COLUMNS = ["task", "method", "lr", "batch_size", "main_metric", "n_seeds", "n_diverged", "val_mean", "val_std",
                "val_ci_low", "val_ci_high", "dev_mean", "trivial_val", "probe_val", "trivial_dev", "probe_dev",
                "beats_trivial", "drift_mean", "drift_ci_low", "drift_ci_high", "trainable_fraction"]


def layer_table(final: pd.DataFrame, analysis: dict, debiased: pd.DataFrame | None = None) -> pd.DataFrame:
    """drift_by_layer.csv: per task x method x layer, the chosen runs' final value with its CI over seeds,
    and (`debiased`: final_drift rows of debiased_cka) the debiased CKA's seed mean beside it."""
    rows = []
    for (task, method, layer, name), group in final.groupby(["task", "method", "layer", "layer_name"], sort=False):
        ci = stats.mean_ci(group.value.to_numpy(float), analysis["confidence"])
        first = group.iloc[0]
        row = {"task": task, "method": method, "lr": first.lr, "batch_size": first.batch_size, "layer": layer,
               "layer_name": name, "metric": analysis["h2_metric"], "pooling": analysis["h2_pooling"],
               "value_mean": ci["mean"], "value_ci_low": ci["ci_low"], "value_ci_high": ci["ci_high"],
               "n_seeds": ci["n"], "debiased_value_mean": np.nan}
        if debiased is not None and not debiased.empty:
            sub = debiased[(debiased.task == task) & (debiased.method == method) & (debiased.layer == layer)]
            row["debiased_value_mean"] = float(sub.value.mean()) if len(sub) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


STABILITY_COLUMNS = ["converged", "diverged", "unstable", "grad_norm_spikes", "loss_spikes", "clipped_fraction",
                     "steps_to_target", "stability_note"]


def with_stability(runs: pd.DataFrame, train_log_paths, task_defs: dict, settings: dict) -> pd.DataFrame:
    """runs.csv's stability columns (ftdrift.analysis.stability) from each run's train_log.csv."""
    from ftdrift.analysis.stability import run_stability

    rows = []
    for row, path in zip(runs.itertuples(), train_log_paths, strict=True):
        task_def = task_defs[row.task]
        dev_metric = task_def["main_metric"] if task_kind(task_def) == "classification" else None
        result = run_stability(_read_log(path), dev_metric=dev_metric, settings=settings, status=row.status)
        rows.append({key: result[key] for key in STABILITY_COLUMNS})
    return pd.concat([runs, pd.DataFrame(rows, index=runs.index, columns=STABILITY_COLUMNS)], axis=1)


def with_status(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`table` (rows keyed by run) with each run's status, so readers can leave diverged runs out."""
    if table.empty or not set(RUN_KEYS) <= set(table.columns):
        return table
    table = table.assign(lr=table.lr.astype(str))
    return table.merge(runs[RUN_KEYS + ["status"]], on=RUN_KEYS, how="left")


def _read_log(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a run stopped before its first log entry
        return pd.DataFrame()


def setting_stability(runs: pd.DataFrame, confidence: float, settings: dict) -> pd.DataFrame:
    """stability.csv: per setting (task, method, lr, batch size), how its seeds trained and how far
    their validation metrics disagree beyond their bootstrap intervals (Cochran's Q over seeds)."""
    from ftdrift.analysis.stability import seed_heterogeneity

    rows = []
    for key, group in runs[runs.status != "missing"].groupby(SETTING_KEYS, sort=False):
        usable = group[group.status.isin(USABLE)]
        het = seed_heterogeneity(usable.val_main.to_numpy(float), usable.val_main_ci_low.to_numpy(float),
                                 usable.val_main_ci_high.to_numpy(float), confidence)
        rows.append({**dict(zip(SETTING_KEYS, key)), "n_runs": len(group),
                     "n_diverged": int((group.status == "diverged").sum()),
                     "n_unstable": int(group.unstable.astype("boolean").fillna(False).sum()),
                     "n_converged": int(group.converged.astype("boolean").fillna(False).sum()),
                     "val_mean": float(usable.val_main.mean()) if len(usable) else np.nan,
                     "val_seed_std": float(usable.val_main.std(ddof=1)) if len(usable) > 1 else np.nan,
                     "val_seed_range": float(usable.val_main.max() - usable.val_main.min()) if len(usable) else np.nan,
                     "heterogeneity_q": het["q"], "heterogeneity_p": het["p_value"], "heterogeneity_i2": het["i2"],
                     "seeds_disagree": bool(het["p_value"] < settings["heterogeneity_alpha"])
                     if np.isfinite(het["p_value"]) else None})
    return pd.DataFrame(rows)


BASELINE_COLUMNS = ["task", "baseline", "name", "status", "reason", "main_metric", "dev_main", "val_main"]


def baselines_frame(baseline_paths: dict) -> pd.DataFrame:
    """baselines.csv: per task, the trivial answer's and the frozen-base linear probe's scores
    (rule baselines, ftdrift.analysis.baselines); every metric as val_<metric> / dev_<metric>."""
    rows = []
    for task, path in baseline_paths.items():
        result = io.read_json(path)
        main = result["main_metric"]
        for baseline in ("trivial", "linear_probe"):
            entry = result[baseline]
            status = entry.get("status", "ok")
            row = {"task": task, "baseline": baseline,
                   "name": entry.get("name", "linear probe on the frozen base model"), "status": status,
                   "reason": entry.get("reason", ""), "main_metric": main,
                   "dev_main": entry.get("dev", {}).get(main, np.nan),
                   "val_main": entry.get("validation", {}).get(main, np.nan)}
            row.update({f"val_{k}": v for k, v in entry.get("validation", {}).items()})
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else BASELINE_COLUMNS)


def _baseline_value(baselines: pd.DataFrame, task: str, baseline: str, split: str = "val") -> float:
    """A baseline's main metric on validation ('val') or dev; NaN when absent."""
    sub = baselines[(baselines.task == task) & (baselines.baseline == baseline)] if not baselines.empty else baselines
    column = f"{split}_main"
    return float(sub[column].iloc[0]) if len(sub) and pd.notna(sub[column].iloc[0]) else np.nan


def with_trivial(runs: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """runs.csv's `trivial_val` (the task's trivial baseline on validation) and `beats_trivial`
    (the run's validation main metric above it; None where either is unknown)."""
    trivial = runs.task.map(lambda task: _baseline_value(baselines, task, "trivial"))
    beats = [bool(v > t) if np.isfinite(v) and np.isfinite(t) else None
             for v, t in zip(runs.val_main.astype(float), trivial)]
    return runs.assign(trivial_val=trivial, beats_trivial=beats)


def below_trivial(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished, non-diverged runs whose validation main metric does not beat the trivial baseline."""
    return runs[runs.status.isin(USABLE) & runs.beats_trivial.astype("boolean").eq(False).fillna(False)]


def _read_predictions(path) -> dict:
    """A run's predictions.json; an unreadable one has no predictions (its check says why)."""
    try:
        return io.read_json(path)
    except ValueError as err:
        log.warning("%s unreadable (%s): no interval", path, err)
        return {"predictions": {}}


def failed_checks(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose saved model did not reproduce their results (or whose merge check failed)."""
    runs = runs[runs.status != "missing"]  # a missing run has nothing to check
    bad = runs[~runs.checkpoint_ok.astype("boolean").fillna(False)]  # no check result counts as failed
    return bad[RUN_KEYS + ["checkpoint_failure"]].fillna({"checkpoint_failure": "no check result"})


FORGETTING_COLUMNS = RUN_KEYS + ["status", "val_main", "in_task_gain", "out_of_task_drift", "probe_drop", "lm_status",
                                 "lm_reason", "lm_base_perplexity", "lm_finetuned_perplexity"]


def forgetting_outputs(paths, runs: pd.DataFrame, baselines: pd.DataFrame, task_defs: dict,
                       analysis: dict) -> dict[str, pd.DataFrame]:
    """forgetting.csv (one row per run: in-task gain over the frozen-base linear probe against
    out-of-task drift, the frozen probes' drop and the LM perplexities), out_of_task.csv and
    probe_transfer.csv (the forgetting jobs' rows, ftdrift.analysis.forgetting).

    `in_task_gain` and `probe_drop` are fractions of their metric's range (study.config.metric_range:
    1 for accuracy or F1, 2 for Matthews correlation, 100 for SQuAD's percentages), so that tasks
    share one axis; `probe_drop` is the mean over the other classification tasks."""
    from ftdrift.analysis.forgetting import forgetting_tables
    from ftdrift.study.config import metric_range

    raw = forgetting_tables(paths)
    out_of_task, transfer, lm = (raw[k].assign(lr=raw[k].lr.astype(str)) if not raw[k].empty else raw[k]
                                 for k in ("out_of_task", "probe_transfer", "lm"))
    metric, pooling = analysis["h2_metric"], analysis["h2_pooling"]
    rows = []
    for run in runs[runs.status != "missing"].itertuples():
        key = {k: getattr(run, k) for k in RUN_KEYS}

        def of(frame: pd.DataFrame) -> pd.DataFrame:
            if frame.empty:
                return frame
            mask = np.logical_and.reduce([frame[k].astype(str) == str(v) for k, v in key.items()])
            return frame[mask]

        ood = of(out_of_task)
        ood = ood[(ood.metric == metric) & (ood.pooling == pooling)] if not ood.empty else ood
        drops = of(transfer)
        drops = drops[drops.status == "ok"] if not drops.empty else drops
        scaled_drops = [d / metric_range(task_defs[t]) for d, t in zip(drops["drop"], drops.probe_task)] \
            if len(drops) else []
        lm_row = of(lm)
        lm_row = lm_row.iloc[0] if len(lm_row) else None
        probe = _baseline_value(baselines, run.task, "linear_probe")
        rows.append({**key, "status": run.status, "val_main": run.val_main,
                     "in_task_gain": (float(run.val_main) - probe) / metric_range(task_defs[run.task])
                     if np.isfinite(probe) and pd.notna(run.val_main) else np.nan,
                     "out_of_task_drift": float(to_drift(metric, ood.value).mean()) if len(ood) else np.nan,
                     "probe_drop": float(np.mean(scaled_drops)) if len(scaled_drops) else np.nan,
                     "lm_status": None if lm_row is None else lm_row.get("status"),
                     "lm_reason": None if lm_row is None else lm_row.get("reason"),
                     "lm_base_perplexity": np.nan if lm_row is None else lm_row.get("base_perplexity", np.nan),
                     "lm_finetuned_perplexity": np.nan if lm_row is None else lm_row.get("finetuned_perplexity",
                                                                                         np.nan)})
    return {"forgetting": pd.DataFrame(rows, columns=FORGETTING_COLUMNS), "out_of_task": out_of_task,
            "probe_transfer": transfer}
