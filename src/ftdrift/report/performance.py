"""Performance figures and tables: validation metric of the chosen settings, the hyperparameter
grid, and SQuAD v2's answerable / unanswerable breakdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.analysis.tables import chosen_runs, usable
from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info
from ftdrift.report.frames import (
    best_row,
    method_name,
    method_order,
    read_table,
    scale_note,
    setting_text,
    sort_key,
    status_of,
)
from ftdrift.report.html import html_page, html_table
from ftdrift.report.style import (
    CYCLE,
    empty_axes,
    empty_figure,
    fresh_dir,
    marker_kw,
    method_color,
    panel_grid,
    save,
    status_legend_handles,
)
from ftdrift.study.grid import SETTING_KEYS


def write_performance(*, runs, best, tasks: Sequence[str], qa_tasks: Sequence[str] = (), confidence: float = 0.95,
                      drift_metric: str = "linear_cka", outputs: Mapping, baselines=None) -> None:
    """Rule report_performance: validation figure, chosen-settings and grid tables, grid figures per task,
    and (when outputs has "qa") the QA breakdown per QA task."""
    runs, best, baselines = read_table(runs), read_table(best), read_table(baselines, required=False)
    plot_validation(runs, best, outputs["validation"], tasks, confidence)
    table = performance_table(runs, best)
    io.write_csv(outputs["table_csv"], table)
    io.write_text(outputs["table_html"], html_page(
        "Chosen settings", "<h1>Validation performance of the chosen settings</h1>"
        f"<p class=\"muted\">Mean, standard deviation and {int(round(100 * confidence))} % CI "
        f"over seeds; drift = mean over layers of {metric_info(drift_metric).drift_formula} at the final snapshot.</p>"
        + html_table(table)))
    io.write_csv(outputs["grid_csv"], grid_table(runs, best))
    grid_dir = fresh_dir(outputs["grid"])
    for task in tasks:
        plot_grid(runs, best, task, grid_dir / f"{task}.svg")
    if "qa" in outputs:
        qa_dir = fresh_dir(outputs["qa"])
        tables = [plot_qa_breakdown(runs, best, task, qa_dir / f"{task}.svg", baselines) for task in qa_tasks]
        io.write_csv(outputs["qa_csv"], pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


def _seed_offsets(n: int, width: float = 0.22) -> np.ndarray:
    return np.zeros(1) if n <= 1 else np.linspace(-width / 2, width / 2, n)


def plot_validation(runs: pd.DataFrame, best: pd.DataFrame, path, tasks: Sequence[str] | None = None,
                    confidence: float = 0.95) -> None:
    """Per task: validation main metric of the chosen setting, mean ± CI over seeds, one column per
    method (the report's method order: the reference first)."""
    tasks = list(tasks or (best.task.unique() if best is not None and not best.empty else []))
    if not tasks:
        return empty_figure(path, "Validation metric", "no runs have finished yet")
    chosen = chosen_runs(runs, best, usable_only=False)  # diverged seeds shown, as crosses
    methods = _methods(runs, best)
    fig, axes = panel_grid(len(tasks), 4, max(3.0, 1.3 * len(methods) + 0.6), 3.4)
    statuses = set()
    pct = int(round(confidence * 100))
    for ax, task in zip(axes, tasks):
        ticks, ticklabels, metric = [], [], ""
        for i, method in enumerate(methods):
            row = best_row(best, task, method)
            seeds = chosen[(chosen.task == task) & (chosen.method == method)] if not chosen.empty else chosen
            ticks.append(i)
            if row is None:
                ticklabels.append(f"{method_name(method)}\n(no runs)")
                continue
            metric = row.main_metric
            ticklabels.append(f"{method_name(method)}\nlr {row.lr}, bs {row.batch_size}")
            mean, lo, hi = row.val_mean, row.get("val_ci_low"), row.get("val_ci_high")
            yerr = None
            if pd.notna(lo) and pd.notna(hi):
                yerr = [[max(mean - lo, 0)], [max(hi - mean, 0)]]
            ax.errorbar([i], [mean], yerr=yerr, fmt="D", ms=8, color=method_color(method), capsize=6, lw=2,
                        zorder=3, mec="black", mew=0.6)
            offs = _seed_offsets(len(seeds)) + 0.28
            for off, (_, seed_row) in zip(offs, seeds.sort_values("seed").iterrows()):
                status = status_of(seeds).loc[seed_row.name]
                statuses.add(status)
                y = seed_row.val_main if pd.notna(seed_row.val_main) else mean
                ax.plot([i + off], [y], **marker_kw(method, status if pd.notna(seed_row.val_main) else "failed"),
                        zorder=4)
            ax.annotate(f"{mean:.3g}\nn={int(row.n_seeds)}", (i, mean), xytext=(-10, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=8)
        ax.set_xticks(ticks, ticklabels, fontsize=8)
        ax.set_xlim(-0.7, len(methods) - 0.4)
        baseline_lines(ax, best, task)
        vals = chosen[chosen.task == task].val_main if not chosen.empty else []
        ax.set_ylabel(f"validation {metric} {scale_note(vals)}".strip())
        ax.set_title(task)
    handles = [Line2D([], [], marker="D", color="#555555", mec="black", ls="-", ms=7,
                      label=f"mean ± {pct}% CI over seeds")] + status_legend_handles(statuses or {"completed"})
    handles += BASELINE_HANDLES
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle("Validation main metric of the setting chosen on dev")
    save(fig, path)


def _methods(*frames: pd.DataFrame | None) -> list[str]:
    """The methods the figures show: the configured ones (frames.method_order) and any other the tables
    hold, the reference first."""
    present = set()
    for frame in frames:
        if frame is not None and "method" in frame:
            present |= set(frame.method.dropna())
    return method_order(present | set(method_order()))


# the task's baselines (best.csv's trivial_val / probe_val, the same for every method): line styles
BASELINES = (("trivial_val", "trivial baseline (majority class; SQuAD v2: no answer)", "--"),
             ("probe_val", "linear probe on the frozen base model", ":"))
BASELINE_HANDLES = [Line2D([], [], color="#555555", ls=ls, lw=1.4, label=label) for _, label, ls in BASELINES]


def baseline_lines(ax, best: pd.DataFrame | None, task: str, split: str = "val") -> None:
    """Horizontal lines at the task's baselines on validation ('val') or dev (absent values: none drawn)."""
    if best is None or best.empty:
        return
    sub = best[best.task == task]
    for col, name, ls in BASELINES:
        col = col.replace("_val", f"_{split}")
        if col in sub and sub[col].notna().any():
            ax.axhline(float(sub[col].dropna().iloc[0]), color="#555555", ls=ls, lw=1.4, zorder=1)


def performance_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per task x method: chosen setting, seed counts by status, validation / dev / drift statistics."""
    if best is None or best.empty:
        return pd.DataFrame(columns=["task", "method"])
    chosen = chosen_runs(runs, best)
    rows = []
    for _, row in best.iterrows():
        seeds = chosen[(chosen.task == row.task) & (chosen.method == row.method)]
        status = status_of(seeds)
        out = {"task": row.task, "method": row.method, "lr": row.lr, "batch_size": row.batch_size,
               "main_metric": row.main_metric, "n_seeds": row.get("n_seeds"),
               "seeds_completed": int((status == "completed").sum()),
               "seeds_stopped_early": int((status == "stopped_early").sum())}
        out["seeds_diverged"] = row.get("n_diverged", 0)
        for col in ("val_mean", "val_std", "val_ci_low", "val_ci_high", "trivial_val", "probe_val", "beats_trivial",
                    "dev_mean", "drift_mean", "drift_ci_low", "drift_ci_high", "trainable_fraction"):
            out[col] = row.get(col)
        rows.append(out)
    return pd.DataFrame(rows)


def grid_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Every hyperparameter setting: dev / validation mean and spread over seeds, chosen flag."""
    if runs is None or runs.empty:
        return pd.DataFrame(columns=SETTING_KEYS + ["chosen"])
    frame = runs.assign(_status=status_of(runs))
    diverged = frame[frame._status == "diverged"].groupby(SETTING_KEYS, sort=False).size().rename("seeds_diverged")
    frame = usable(frame)  # means over the seeds that enter the choice of settings
    agg = frame.groupby(SETTING_KEYS, sort=False).agg(
        main_metric=("main_metric", "first"), n_seeds=("seed", "nunique"),
        seeds_stopped_early=("_status", lambda s: int((s == "stopped_early").sum())),
        dev_mean=("dev_main", "mean"), dev_std=("dev_main", "std"), dev_min=("dev_main", "min"),
        dev_max=("dev_main", "max"), val_mean=("val_main", "mean"), val_std=("val_main", "std")).reset_index()
    agg = agg.merge(diverged.reset_index(), on=SETTING_KEYS, how="left").fillna({"seeds_diverged": 0})
    keys = set(map(tuple, best[SETTING_KEYS].astype(str).to_numpy())) if best is not None and not best.empty else set()
    agg["chosen"] = [tuple(map(str, k)) in keys for k in agg[SETTING_KEYS].to_numpy()]
    return agg.sort_values(SETTING_KEYS, key=sort_key).reset_index(drop=True)


def plot_grid(runs: pd.DataFrame, best: pd.DataFrame, task: str, path) -> None:
    """Dev main metric over the lr grid, one line per batch size, per method; chosen setting ringed."""
    sub = runs[runs.task == task] if runs is not None and not runs.empty else pd.DataFrame()
    if sub.empty:
        return empty_figure(path, f"{task}: hyperparameter grid", "no finished runs for this task")
    metric = sub.main_metric.iloc[0]
    batch_sizes = sorted(sub.batch_size.unique())
    colors = {bs: CYCLE[i % len(CYCLE)] for i, bs in enumerate(batch_sizes)}
    methods = _methods(sub, best)
    fig, axes = panel_grid(len(methods), 3, 3.6 if len(methods) > 2 else 4.2, 3.6, sharey=True)
    statuses = set()
    for ax, method in zip(axes, methods):
        msub = sub[sub.method == method]
        ax.set_title(method_name(method))
        if msub.empty:
            empty_axes(ax, "no runs")
            continue
        lrs = sorted(msub.lr.unique(), key=float)
        for bs in batch_sizes:
            bsub = msub[msub.batch_size == bs]
            if bsub.empty:
                continue
            means = usable(bsub).groupby("lr")["dev_main"].mean()  # the selection's means: diverged seeds left out
            xs = [float(lr) for lr in lrs if lr in means.index]
            ax.plot(xs, [means[lr] for lr in lrs if lr in means.index], "-", color=colors[bs], lw=1.8,
                    label=f"batch {bs} (mean over seeds)")
            for _, r in bsub.iterrows():
                status = r.get("status", "completed") if pd.notna(r.dev_main) else "failed"
                statuses.add(status)
                kw = marker_kw(method, status, size=5)
                kw.update(mfc=colors[bs] if status == "completed" else "white", mec=colors[bs])
                ax.plot([float(r.lr)], [r.dev_main], **kw, alpha=0.9)
        row = best_row(best, task, method)
        if row is not None:
            bsub = usable(msub[(msub.lr == row.lr) & (msub.batch_size == row.batch_size)])
            if not bsub.empty:
                y = bsub.dev_main.mean()
                ax.plot([float(row.lr)], [y], marker="o", ms=17, mfc="none", mec="black", mew=2, ls="none", zorder=5)
                ax.annotate(f"chosen\n{setting_text(row.lr, row.batch_size)}", (float(row.lr), y), xytext=(0, 14),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks([float(lr) for lr in lrs], lrs)
        ax.minorticks_off()
        ax.set_xlabel("peak learning rate")
        if len(lrs) == 1:
            ax.set_xlim(float(lrs[0]) / 3, float(lrs[0]) * 3)
    axes[0].set_ylabel(f"dev {metric} {scale_note(sub.dev_main)}".strip())
    for ax in axes:
        baseline_lines(ax, best, task, split="dev")
    handles = [Line2D([], [], color=colors[bs], lw=1.8, marker="o", label=f"batch size {bs}") for bs in batch_sizes]
    handles += BASELINE_HANDLES
    handles.append(Line2D([], [], marker="o", ms=12, mfc="none", mec="black", mew=2, ls="none",
                          label="chosen on dev (best mean)"))
    if "stopped_early" in statuses:
        handles.append(Line2D([], [], marker="o", mfc="white", mec="#555555", ls="none", label="seed stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(f"{task}: hyperparameter grid (dev {metric}, the selection criterion; dots = seeds)")
    save(fig, path)


QA_BREAKDOWN = [("f1", "F1\nall"), ("exact", "EM\nall"), ("HasAns_f1", "F1\nHasAns"), ("HasAns_exact", "EM\nHasAns"),
                ("NoAns_f1", "F1\nNoAns"), ("NoAns_exact", "EM\nNoAns"), ("best_f1", "F1\nbest threshold"),
                ("best_exact", "EM\nbest threshold")]


def qa_breakdown_table(runs: pd.DataFrame, best: pd.DataFrame, task: str) -> pd.DataFrame:
    """Long table of a QA task's validation sub-scores (chosen settings, per seed)."""
    chosen = chosen_runs(runs, best)
    chosen = chosen[chosen.task == task] if not chosen.empty else chosen
    rows = []
    for _, r in chosen.iterrows():
        for key, label in QA_BREAKDOWN:
            col = f"val_{key}"
            if col in chosen and pd.notna(r[col]):
                rows.append({"task": task, "method": r.method, "lr": r.lr, "batch_size": r.batch_size, "seed": r.seed,
                             "status": r.get("status", "completed"), "score": key,
                             "score_name": label.replace("\n", ", "), "value": float(r[col])})
    return pd.DataFrame(rows, columns=["task", "method", "lr", "batch_size", "seed", "status", "score", "score_name",
                                       "value"])


def plot_qa_breakdown(runs: pd.DataFrame, best: pd.DataFrame, task: str, path,
                      baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """SQuAD v2: overall, answerable (HasAns) and unanswerable (NoAns) scores, one bar per method, with
    the task's baselines (baselines.csv) as grey ticks on each score."""
    table = qa_breakdown_table(runs, best, task)
    if table.empty:
        empty_figure(path, f"{task}: HasAns / NoAns breakdown", "no validation sub-scores in runs.csv")
        return table
    scores = [k for k, _ in QA_BREAKDOWN if k in set(table.score)]
    names = dict(QA_BREAKDOWN)
    methods = method_order(set(table.method))
    fig, ax = plt.subplots(figsize=(max(6.0, (0.5 + 0.4 * len(methods)) * len(scores) + 2), 3.9),
                           layout="constrained")
    width = 0.76 / len(methods)
    statuses = set()
    for j, method in enumerate(methods):
        msub = table[table.method == method]
        if msub.empty:
            continue
        means = msub.groupby("score")["value"].mean()
        xs = np.arange(len(scores)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(xs, [means.get(s, np.nan) for s in scores], width * 0.92, color=method_color(method), alpha=0.85,
               label=f"{method_name(method)} (lr {msub.lr.iloc[0]}, bs {msub.batch_size.iloc[0]}; mean over seeds)")
        for x, s in zip(xs, scores):
            vals = msub[msub.score == s]
            offs = _seed_offsets(len(vals), width * 0.6)
            for off, (_, r) in zip(offs, vals.iterrows()):
                statuses.add(r.status)
                kw = marker_kw(method, r.status, size=4)
                kw.update(mec="black")
                ax.plot([x + off], [r.value], **kw, zorder=4)
    drawn = []
    task_baselines = baselines[baselines.task == task] if baselines is not None and "task" in baselines else None
    for (col, label, ls), name in zip(BASELINES, ("trivial", "linear_probe")):
        row = task_baselines[task_baselines.baseline == name] if task_baselines is not None else pd.DataFrame()
        if row.empty:
            continue
        for x, score in enumerate(scores):
            value = row.iloc[0].get(f"val_{score}")
            if pd.notna(value):
                ax.hlines(float(value), x - 0.4, x + 0.4, colors="#555555", linestyles=ls, lw=1.6, zorder=5)
                if (col, label, ls) not in drawn:
                    drawn.append((col, label, ls))
    ax.set_xticks(np.arange(len(scores)), [names[s] for s in scores], fontsize=8.5)
    ax.set_ylabel(f"validation score {scale_note(table.value)}".strip())
    extra = [Line2D([], [], color="#555555", ls=ls, lw=1.4, label=label) for _, label, ls in drawn]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + extra + status_legend_handles(statuses), loc="upper left",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"{task}: validation scores, chosen settings (dots = seeds)\n"
                 "HasAns = answerable questions, NoAns = unanswerable, EM = exact match")
    save(fig, path)
    return table
