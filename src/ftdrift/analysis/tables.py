"""Aggregate tables: every run, best hyperparameters on dev, seed statistics, H1/H2 verdicts."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ftdrift.core import io, metrics, stats
from ftdrift.core.drift_metrics import metric_info, to_drift
from ftdrift.data import qa
from ftdrift.study.config import task_kind
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS

log = logging.getLogger("ftdrift.analysis.tables")


def runs_frame(metrics_paths) -> pd.DataFrame:
    """One row per run: hyperparameters, dev and validation metrics, run metadata."""
    rows = []
    for path in metrics_paths:
        result = io.read_json(path)
        meta, main = result["meta"], result["main_metric"]
        row = {**{k: meta["run"][k] for k in RUN_KEYS}, "status": "stopped_early" if meta["stopped_early"] else "completed",
               "main_metric": main, "dev_main": result["dev"].get(main), "val_main": result["validation"].get(main)}
        row.update({f"dev_{k}": v for k, v in result["dev"].items()})
        row.update({f"val_{k}": v for k, v in result["validation"].items()})
        for key in ("steps", "best_step", "best_dev_loss", "trainable_params", "total_params", "trainable_fraction",
                    "train_seconds", "micro_batch", "accumulation", "precision", "attempts"):
            row[key] = meta.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


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


def best_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x method, the (lr, batch size) with the best mean dev main metric over seeds."""
    dev = runs.groupby(SETTING_KEYS, as_index=False)["dev_main"].mean()
    idx = dev.groupby(["task", "method"])["dev_main"].idxmax()
    return dev.loc[idx, SETTING_KEYS].reset_index(drop=True)


def pair_by_seed(full: pd.DataFrame, lora: pd.DataFrame) -> bool:
    """Both methods ran the same seeds (>= 2): the seed fixes the data order and the head's
    initialisation for both, so the runs pair and the paired analysis applies."""
    seeds_full, seeds_lora = sorted(full.seed), sorted(lora.seed)
    return seeds_full == seeds_lora and len(seeds_full) >= 2 and len(set(seeds_full)) == len(seeds_full)


def verdict_row(task: str, task_def: dict, full: pd.DataFrame, lora: pd.DataFrame, analysis: dict) -> dict:
    """H1 and H2 for one task from its chosen full and LoRA runs (one row per seed each)."""
    confidence = analysis["confidence"]
    paired = pair_by_seed(full, lora)
    if paired:
        full, lora = full.sort_values("seed"), lora.sort_values("seed")
    h1 = stats.verdict_h1(full.val_main.to_numpy(float), lora.val_main.to_numpy(float),
                          analysis["h1_max_relative_drop"], confidence, paired=paired)
    h2 = stats.verdict_h2(full.drift.to_numpy(float), lora.drift.to_numpy(float),
                          analysis["h2_min_drift_reduction"], confidence, paired=paired)
    if paired:
        diff = stats.paired_difference(lora.val_main.to_numpy(float), full.val_main.to_numpy(float), confidence)
    else:
        diff = stats.welch_difference(lora.val_main.to_numpy(float), full.val_main.to_numpy(float), confidence)
    return {"task": task, "metric": task_def["main_metric"],
            "analysis": f"paired by seed (n = {len(full)})" if paired else
            f"unpaired (full n = {len(full)}, LoRA n = {len(lora)})",
            "lora_minus_full": diff["mean_diff"], "diff_ci_low": diff["ci_low"], "diff_ci_high": diff["ci_high"],
            "h1_relative_drop": h1["relative_drop"], "h1_ci_low": h1["ci_low"], "h1_ci_high": h1["ci_high"],
            "h1_verdict": h1["verdict"], "h1_reason": h1["reason"],
            "h2_drift_metric": analysis["h2_metric"], "h2_pooling": analysis["h2_pooling"],
            "h2_drift_reduction": h2["relative_reduction"], "h2_ci_low": h2["ci_low"], "h2_ci_high": h2["ci_high"],
            "h2_verdict": h2["verdict"], "h2_reason": h2["reason"], "confidence": confidence}


def aggregate(*, metrics_paths, predictions_paths, validation_paths: dict, drift_paths, weights_paths,
              check_paths, task_defs: dict, analysis: dict, outputs: dict) -> None:
    """Build every table of results/tables/ from the runs' outputs (see the README's Results).

    `validation_paths`: {task: validation.jsonl}; `analysis`: the config's analysis section
    (confidence, bootstrap_resamples, H1/H2 thresholds, h2_metric, h2_pooling).
    """
    from ftdrift.analysis.weights import aggregate_weights

    confidence = analysis["confidence"]
    runs = runs_frame(metrics_paths)
    validation = {task: io.read_jsonl(path) for task, path in validation_paths.items()}
    intervals = [main_metric_ci(validation[row.task], _read_predictions(path), task_defs[row.task],
                                analysis["bootstrap_resamples"], confidence, int(row.seed))
                 for row, path in zip(runs.itertuples(), predictions_paths, strict=True)]
    runs["val_main_ci_low"], runs["val_main_ci_high"] = [i[0] for i in intervals], [i[1] for i in intervals]
    runs["lr"] = runs["lr"].astype(str)
    checks = checks_frame(check_paths)
    checks["lr"] = checks["lr"].astype(str)
    runs = runs.merge(checks, on=RUN_KEYS, how="left")
    drift = pd.concat([pd.read_csv(p, dtype={"lr": str}) for p in drift_paths], ignore_index=True)
    best = best_settings(runs)
    chosen = runs.merge(best, on=SETTING_KEYS)
    final = final_drift(drift, analysis["h2_metric"], analysis["h2_pooling"]).merge(best, on=SETTING_KEYS)
    # a run's drift: mean over layers of its drift value (1 - similarity, or the distance) at its last snapshot
    run_drift = final.assign(drift=to_drift(analysis["h2_metric"], final.value)).groupby(
        RUN_KEYS, as_index=False)["drift"].mean()
    chosen = chosen.merge(run_drift, on=RUN_KEYS, how="left")

    best_rows, layer_rows, verdict_rows = [], [], []
    for (task, method), group in chosen.groupby(["task", "method"], sort=False):
        val = stats.mean_ci(group.val_main.to_numpy(float), confidence)
        dft = stats.mean_ci(group.drift.to_numpy(float), confidence)
        first = group.iloc[0]
        best_rows.append({"task": task, "method": method, "lr": first.lr, "batch_size": first.batch_size,
                          "main_metric": first.main_metric, "n_seeds": val["n"],
                          "val_mean": val["mean"], "val_std": val["std"], "val_ci_low": val["ci_low"],
                          "val_ci_high": val["ci_high"], "dev_mean": float(group.dev_main.mean()),
                          "drift_mean": dft["mean"], "drift_ci_low": dft["ci_low"], "drift_ci_high": dft["ci_high"],
                          "trainable_fraction": float(group.trainable_fraction.mean()),
                          # SQuAD v2's answerable / unanswerable breakdown (NaN for other tasks)
                          **{f"val_{part}_{m}": float(group[f"val_{part}_{m}"].mean())
                             if f"val_{part}_{m}" in group and group[f"val_{part}_{m}"].notna().any() else np.nan
                             for part in ("HasAns", "NoAns") for m in ("exact", "f1")}})
    for (task, method, layer, name), group in final.groupby(["task", "method", "layer", "layer_name"], sort=False):
        ci = stats.mean_ci(group.value.to_numpy(float), confidence)
        layer_rows.append({"task": task, "method": method, "layer": layer, "layer_name": name,
                           "metric": analysis["h2_metric"], "pooling": analysis["h2_pooling"],
                           "value_mean": ci["mean"], "value_ci_low": ci["ci_low"], "value_ci_high": ci["ci_high"],
                           "n_seeds": ci["n"]})
    for task in task_defs:
        full, lora = (chosen[(chosen.task == task) & (chosen.method == m)] for m in ("full", "lora"))
        if not full.empty and not lora.empty:
            verdict_rows.append(verdict_row(task, task_defs[task], full, lora, analysis))
    order = {task: i for i, task in enumerate(task_defs)}
    best_table = pd.DataFrame(best_rows).sort_values("task", key=lambda t: t.map(order), kind="stable")
    verdicts = pd.DataFrame(verdict_rows)
    layers = pd.DataFrame(layer_rows)
    io.write_csv(outputs["runs"], runs)
    io.write_csv(outputs["drift"], drift)
    io.write_csv(outputs["weights"], aggregate_weights(weights_paths))
    io.write_csv(outputs["best"], best_table)
    io.write_csv(outputs["verdicts"], verdicts)
    io.write_csv(outputs["drift_by_layer"], layers)
    io.write_text(outputs["summary"], summary_markdown(best_table, verdicts, layers, analysis, failed_checks(runs)))
    io.write_text(outputs["latex"], latex_tables(best_table, verdicts, analysis))


def _read_predictions(path) -> dict:
    """A run's predictions.json; an unreadable one has no predictions (its check says why)."""
    try:
        return io.read_json(path)
    except ValueError as err:
        log.warning("%s unreadable (%s): no interval", path, err)
        return {"predictions": {}}


def failed_checks(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose saved model did not reproduce their results (or whose merge check failed)."""
    bad = runs[~runs.checkpoint_ok.astype("boolean").fillna(False)]  # no check result counts as failed
    return bad[RUN_KEYS + ["checkpoint_failure"]].fillna({"checkpoint_failure": "no check result"})


def _drift_text(analysis: dict) -> str:
    info = metric_info(analysis["h2_metric"])
    return (f"Drift = mean over layers of {'1 − ' if info.similarity else ''}{info.name} against the base model "
            f"({analysis['h2_pooling']} pooling) at the last snapshot")


def latex_tables(best: pd.DataFrame, verdicts: pd.DataFrame, analysis: dict) -> str:
    """The paper's two tables: best settings with validation CIs, and the H1/H2 verdicts."""
    pct = int(round(analysis["confidence"] * 100))
    main = best[["task", "method", "lr", "batch_size", "main_metric", "n_seeds", "val_mean", "val_std",
                 "val_ci_low", "val_ci_high", "drift_mean"]].rename(columns={
        "batch_size": "batch", "main_metric": "metric", "n_seeds": "seeds", "val_mean": "mean", "val_std": "std",
        "val_ci_low": f"{pct}\\% CI low", "val_ci_high": f"{pct}\\% CI high", "drift_mean": "drift"})
    parts = [main.to_latex(index=False, float_format="%.3f", na_rep="--",
                           caption="Validation metric at the dev-selected setting (mean, std and "
                                   f"{pct}\\% CI over seeds). {_drift_text(analysis)}.".replace("−", "-"),
                           label="tab:ftdrift-performance")]
    if not verdicts.empty:
        cols = ["task", "metric", "analysis", "lora_minus_full", "diff_ci_low", "diff_ci_high", "h1_relative_drop",
                "h1_verdict", "h2_drift_reduction", "h2_verdict"]
        parts.append(verdicts[cols].to_latex(
            index=False, float_format="%.3f", na_rep="--",
            caption=f"LoRA vs full fine-tuning ({pct}\\% CIs): H1 (relative drop of the main metric within "
                    f"{analysis['h1_max_relative_drop']:g}) and H2 (relative reduction of {analysis['h2_metric']} "
                    f"drift, {analysis['h2_pooling']} pooling, at least {analysis['h2_min_drift_reduction']:g}).",
            label="tab:ftdrift-hypotheses"))
    return "\n".join(parts)


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def summary_markdown(best: pd.DataFrame, verdicts: pd.DataFrame, layers: pd.DataFrame, analysis: dict,
                     failed: pd.DataFrame) -> str:
    pct = int(round(analysis["confidence"] * 100))
    lines = ["# ftdrift summary", ""]
    if not failed.empty:
        lines += ["## 🔴 FAILED: checkpoint validation", "",
                  f"{len(failed)} run(s) whose saved model does not reproduce their predictions and metrics, or whose "
                  "merged LoRA adapter differs from the trained one (results/checks/): their numbers cannot be "
                  "trusted.", "", "| task | method | lr | batch | seed | what failed |", "|---|---|---|---|---|---|"]
        for r in failed.itertuples():
            lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.seed} | {r.checkpoint_failure} |")
        lines.append("")
    lines += [f"Best hyperparameters per task and method, chosen on dev; validation metric mean ± std over seeds "
              f"with its {pct} % CI. {_drift_text(analysis)}.", "",
              "| task | method | lr | batch | metric | seeds | validation mean ± std | CI | drift |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in best.itertuples():
        lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.main_metric} | {r.n_seeds} | "
                     f"{_fmt(r.val_mean)} ± {_fmt(r.val_std)} | [{_fmt(r.val_ci_low)}, {_fmt(r.val_ci_high)}] | "
                     f"{_fmt(r.drift_mean)} |")
    qa_rows = best[best.val_HasAns_f1.notna()] if "val_HasAns_f1" in best else best.iloc[:0]
    if not qa_rows.empty:
        lines += ["", "## SQuAD v2: answerable vs unanswerable questions (validation, mean over seeds)", "",
                  "| task | method | HasAns EM | HasAns F1 | NoAns EM | NoAns F1 |", "|---|---|---|---|---|---|"]
        for r in qa_rows.itertuples():
            lines.append(f"| {r.task} | {r.method} | {_fmt(r.val_HasAns_exact, 1)} | {_fmt(r.val_HasAns_f1, 1)} | "
                         f"{_fmt(r.val_NoAns_exact, 1)} | {_fmt(r.val_NoAns_f1, 1)} |")
    if not verdicts.empty:
        lines += ["", "## LoRA vs full fine-tuning", "",
                  f"{pct} % confidence intervals; paired over seeds where both methods ran the same seeds. H2 on "
                  f"{analysis['h2_metric']} drift, {analysis['h2_pooling']} pooling.", "",
                  "| task | metric | analysis | LoRA − full | CI | H1 (accuracy within tolerance) | H2 (drifts less) |",
                  "|---|---|---|---|---|---|---|"]
        for r in verdicts.itertuples():
            lines.append(f"| {r.task} | {r.metric} | {r.analysis} | {_fmt(r.lora_minus_full)} | [{_fmt(r.diff_ci_low)}, "
                         f"{_fmt(r.diff_ci_high)}] | {r.h1_verdict} (drop {_fmt(r.h1_relative_drop)}) | "
                         f"{r.h2_verdict} (reduction {_fmt(r.h2_drift_reduction)}) |")
    return "\n".join(lines) + "\n"
