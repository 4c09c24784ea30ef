"""Aggregate tables: every run, best hyperparameters on dev, seed statistics, H1/H2 verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift import io, stats

RUN_KEYS = ["task", "method", "lr", "batch_size", "seed"]
SETTING_KEYS = ["task", "method", "lr", "batch_size"]


def runs_frame(metrics_paths) -> pd.DataFrame:
    """One row per run: hyperparameters, dev and validation metrics, run metadata."""
    rows = []
    for path in metrics_paths:
        result = io.read_json(path)
        meta, main = result["meta"], result["main_metric"]
        row = {**{k: meta["run"][k] for k in RUN_KEYS}, "status": "stopped_early" if meta["stopped_early"] else "completed",
               "main_metric": main, "dev_main": result["dev"].get(main), "val_main": result["validation"].get(main),
               "val_main_ci_low": result["validation"].get(f"{main}_ci_low"),
               "val_main_ci_high": result["validation"].get(f"{main}_ci_high")}
        row.update({f"dev_{k}": v for k, v in result["dev"].items() if not k.endswith(("_ci_low", "_ci_high"))})
        row.update({f"val_{k}": v for k, v in result["validation"].items() if not k.endswith(("_ci_low", "_ci_high"))})
        for key in ("steps", "best_step", "best_dev_loss", "trainable_params", "total_params", "trainable_fraction",
                    "train_seconds", "micro_batch", "accumulation", "precision", "attempt"):
            row[key] = meta.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


def final_drift(drift: pd.DataFrame, metric: str = "linear_cka", pooling: str = "mean") -> pd.DataFrame:
    """Per run and layer, the value at the run's last snapshot."""
    sub = drift[(drift.metric == metric) & (drift.pooling == pooling)]
    last = sub.groupby(RUN_KEYS)["step"].transform("max")
    return sub[sub.step == last]


def best_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x method, the (lr, batch size) with the best mean dev main metric over seeds."""
    dev = runs.groupby(SETTING_KEYS, as_index=False)["dev_main"].mean()
    idx = dev.groupby(["task", "method"])["dev_main"].idxmax()
    return dev.loc[idx, SETTING_KEYS].reset_index(drop=True)


def aggregate(*, metrics_paths, drift_paths, weights_paths, weight_summary_paths, task_defs: dict, analysis: dict,
              outputs: dict) -> None:
    from ftdrift.weight_analysis import aggregate_weights, weight_summaries

    confidence = analysis["confidence"]
    runs = runs_frame(metrics_paths)
    merge = weight_summaries(weight_summary_paths)
    runs = runs.merge(merge[RUN_KEYS + ["merge_max_abs_logit_diff", "merge_ok"]], on=RUN_KEYS, how="left")
    drift = pd.concat([pd.read_csv(p, dtype={"lr": str}) for p in drift_paths], ignore_index=True)
    for frame in (runs, drift):
        frame["lr"] = frame["lr"].astype(str)
    best = best_settings(runs)
    chosen = runs.merge(best, on=SETTING_KEYS)
    final = final_drift(drift).merge(best, on=SETTING_KEYS)
    # a run's drift: mean over layers of (1 - CKA) at its last snapshot
    run_drift = final.assign(drift=1 - final.value).groupby(RUN_KEYS, as_index=False)["drift"].mean()
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
                           "cka_mean": ci["mean"], "cka_ci_low": ci["ci_low"], "cka_ci_high": ci["ci_high"],
                           "n_seeds": ci["n"]})
    for task in task_defs:
        full, lora = chosen[chosen.task == task].query("method == 'full'"), chosen[chosen.task == task].query("method == 'lora'")
        if full.empty or lora.empty:
            continue
        paired = full.merge(lora, on="seed", suffixes=("_full", "_lora"))
        h1 = stats.verdict_h1(full.val_main.to_numpy(float), lora.val_main.to_numpy(float),
                              analysis["h1_max_relative_drop"])
        h2 = stats.verdict_h2(full.drift.to_numpy(float), lora.drift.to_numpy(float),
                              analysis["h2_min_drift_reduction"])
        diff = stats.paired_difference(paired.val_main_lora.to_numpy(float), paired.val_main_full.to_numpy(float),
                                       confidence) if len(paired) else {}
        verdict_rows.append({"task": task, "metric": task_defs[task]["main_metric"],
                             "lora_minus_full": diff.get("mean_diff"), "diff_ci_low": diff.get("ci_low"),
                             "diff_ci_high": diff.get("ci_high"),
                             "h1_relative_drop": h1.get("relative_drop"), "h1_verdict": h1["verdict"],
                             "h2_drift_reduction": h2.get("relative_reduction"), "h2_verdict": h2["verdict"]})
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
    io.write_text(outputs["summary"], summary_markdown(best_table, verdicts, layers, confidence))
    io.write_text(outputs["latex"], latex_tables(best_table, verdicts, confidence))


def latex_tables(best: pd.DataFrame, verdicts: pd.DataFrame, confidence: float) -> str:
    """The paper's two tables: best settings with validation CIs, and the H1/H2 verdicts."""
    pct = int(round(confidence * 100))
    main = best[["task", "method", "lr", "batch_size", "main_metric", "n_seeds", "val_mean", "val_std",
                 "val_ci_low", "val_ci_high", "drift_mean"]].rename(columns={
        "batch_size": "batch", "main_metric": "metric", "n_seeds": "seeds", "val_mean": "mean", "val_std": "std",
        "val_ci_low": f"{pct}\\% CI low", "val_ci_high": f"{pct}\\% CI high", "drift_mean": "drift"})
    parts = [main.to_latex(index=False, float_format="%.3f", na_rep="--",
                           caption="Validation metric at the dev-selected setting (mean, std and CI over seeds) "
                                   "and mean drift (1 - linear CKA over layers, last snapshot).",
                           label="tab:ftdrift-performance")]
    if not verdicts.empty:
        parts.append(verdicts.to_latex(index=False, float_format="%.3f", na_rep="--",
                                       caption="LoRA vs full fine-tuning: H1 (relative accuracy drop within "
                                               "tolerance) and H2 (relative drift reduction).",
                                       label="tab:ftdrift-hypotheses"))
    return "\n".join(parts)


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def summary_markdown(best: pd.DataFrame, verdicts: pd.DataFrame, layers: pd.DataFrame, confidence: float) -> str:
    pct = int(round(confidence * 100))
    lines = ["# ftdrift summary", "",
             f"Best hyperparameters per task and method, chosen on dev; validation metric mean ± std over seeds "
             f"with its {pct} % CI. Drift = mean over layers of 1 − linear CKA against the base model at the last snapshot.", "",
             "| task | method | lr | batch | metric | seeds | validation mean ± std | CI | drift |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in best.itertuples():
        lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.main_metric} | {r.n_seeds} | "
                     f"{_fmt(r.val_mean)} ± {_fmt(r.val_std)} | [{_fmt(r.val_ci_low)}, {_fmt(r.val_ci_high)}] | "
                     f"{_fmt(r.drift_mean)} |")
    qa = best[best.val_HasAns_f1.notna()] if "val_HasAns_f1" in best else best.iloc[:0]
    if not qa.empty:
        lines += ["", "## SQuAD v2: answerable vs unanswerable questions (validation, mean over seeds)", "",
                  "| task | method | HasAns EM | HasAns F1 | NoAns EM | NoAns F1 |", "|---|---|---|---|---|---|"]
        for r in qa.itertuples():
            lines.append(f"| {r.task} | {r.method} | {_fmt(r.val_HasAns_exact, 1)} | {_fmt(r.val_HasAns_f1, 1)} | "
                         f"{_fmt(r.val_NoAns_exact, 1)} | {_fmt(r.val_NoAns_f1, 1)} |")
    if not verdicts.empty:
        lines += ["", "## LoRA vs full fine-tuning", "",
                  "| task | metric | LoRA − full | CI | H1 (accuracy within tolerance) | H2 (drifts less) |",
                  "|---|---|---|---|---|---|"]
        for r in verdicts.itertuples():
            lines.append(f"| {r.task} | {r.metric} | {_fmt(r.lora_minus_full)} | [{_fmt(r.diff_ci_low)}, "
                         f"{_fmt(r.diff_ci_high)}] | {r.h1_verdict} (drop {_fmt(r.h1_relative_drop)}) | "
                         f"{r.h2_verdict} (reduction {_fmt(r.h2_drift_reduction)}) |")
    return "\n".join(lines) + "\n"
