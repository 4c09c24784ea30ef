"""Training figures of one task: each run's health (loss, dev metrics, gradients, schedule,
throughput, memory) and every run's curves on one figure."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.core import io
from ftdrift.report.frames import (
    STATUS_NAME,
    lr_text,
    method_name,
    method_order,
    read_table,
    run_key,
    scale_note,
    status_lookup,
)
from ftdrift.report.html import html_page, html_table
from ftdrift.report.style import (
    CYCLE,
    OKABE_ITO,
    empty_axes,
    fresh_dir,
    method_color,
    method_handles,
    save,
)
from ftdrift.study.grid import RUN_KEYS, RUN_NAME


def write_training(*, runs, logs, task: str, planned: Sequence[Mapping], main_metric: str | None,
                   outputs: Mapping, stability=None) -> None:
    """Rule report_training: one diagnostics page per planned run of the task (its train log in
    `logs`, same order as `planned`; an absent log still gets a page), all runs on one figure, and
    the task's stability table (outputs["stability"], from runs.csv and stability.csv)."""
    runs = read_table(runs)
    if "stability" in outputs:
        io.write_text(outputs["stability"], stability_page(runs, read_table(stability, required=False), task))
    info = {}
    if runs is not None and not runs.empty:
        for _, r in runs[runs.task == task].iterrows():
            info[run_key(r)] = r.to_dict()
    out_dir = fresh_dir(outputs["runs"])
    curves = {}
    log_paths = [logs] if isinstance(logs, (str, os.PathLike)) else list(logs)
    for run, log_path in zip(planned, log_paths):
        run = {**run, "lr": lr_text(run["lr"]), "batch_size": int(run["batch_size"]), "seed": int(run["seed"])}
        key = tuple(run[k] for k in RUN_KEYS)
        log = read_train_log(log_path)
        curves[key] = log
        (out_dir / run["method"]).mkdir(exist_ok=True)
        plot_run_diagnostics(log, run, info.get(key, {"status": "missing"}),
                             out_dir / run["method"] / f"{RUN_NAME.format(**run)}.svg", main_metric)
    plot_task_training(curves, runs, task, outputs["all_runs"], main_metric)


STABILITY_RUN_COLUMNS = ["status", "converged", "unstable", "grad_norm_spikes", "loss_spikes", "clipped_fraction",
                         "steps_to_target", "diverged_at_step", "stability_note"]
STABILITY_SETTING_COLUMNS = ["n_runs", "n_diverged", "n_unstable", "n_converged", "val_mean", "val_seed_std",
                             "val_seed_range", "heterogeneity_q", "heterogeneity_p", "heterogeneity_i2", "seeds_disagree"]


def stability_page(runs: pd.DataFrame | None, stability: pd.DataFrame | None, task: str) -> str:
    """HTML: per run, convergence and instability (ftdrift.analysis.stability); per setting, the
    seed spread and Cochran's Q test of the seeds' agreement."""
    body = [f"<h1>{task}: training stability and convergence</h1>",
            '<p class="muted">converged = dev loss of the last evaluations within the plateau tolerance; unstable = '
            "diverged, a gradient-norm or loss spike (robust z-score over the run), or more steps clipped than "
            "analysis.stability.unstable_clipped_fraction (default: never; the share is shown); "
            "steps_to_target = first evaluation at which the run had made the target fraction of its dev-metric "
            "improvement since the first evaluation. Seeds disagree = Cochran's Q over the seeds' validation "
            "metrics, with standard errors from their bootstrap intervals, rejects agreement; it treats the seeds "
            "as independent although they share the validation examples, so it is conservative.</p>"]
    sub = runs[runs.task == task] if runs is not None and not runs.empty else None
    if sub is None or sub.empty:
        body.append("<p>No runs of this task have finished.</p>")
    else:
        cols = RUN_KEYS + [c for c in STABILITY_RUN_COLUMNS if c in sub]
        body += ["<h2>Runs</h2>", html_table(sub[cols], badges=("status",))]
    if stability is not None and not stability.empty:
        ssub = stability[stability.task == task]
        cols = ["method", "lr", "batch_size"] + [c for c in STABILITY_SETTING_COLUMNS if c in ssub]
        body += ["<h2>Settings: agreement of seeds</h2>", html_table(ssub[cols])]
    return html_page(f"{task}: training stability", "\n".join(body))


EVAL_SKIP = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time"}
MEMORY_COL = re.compile(r"^(cpu_rss_mb|gpu\d+_.*_mb)$")


def read_train_log(path) -> pd.DataFrame:
    """Trainer log history as CSV; empty frame for an absent or empty file."""
    if path is None or not Path(path).exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _train_rows(log: pd.DataFrame) -> pd.DataFrame:
    if log.empty or "loss" not in log or "step" not in log:
        return pd.DataFrame()
    return log[log["loss"].notna()].sort_values("step")


def _eval_rows(log: pd.DataFrame) -> pd.DataFrame:
    if log.empty or "eval_loss" not in log or "step" not in log:
        return pd.DataFrame()
    return log[log["eval_loss"].notna()].sort_values("step")


def _run_title(run: Mapping, info: Mapping | None) -> tuple[str, str, str]:
    """(title, status line, status colour)."""
    title = (f"{run['task']} · {method_name(run['method'])} · lr {run['lr']} · batch {run['batch_size']} · "
             f"seed {run['seed']}")
    status = (info or {}).get("status", "missing") or "failed"
    line = STATUS_NAME.get(status, status)
    steps = (info or {}).get("steps")
    if status == "stopped_early" and steps is not None and pd.notna(steps):
        line = f"STOPPED EARLY after {int(steps)} steps"
    elif status in ("failed", "missing"):
        line = line.upper()
    color = {"completed": "#333333", "stopped_early": OKABE_ITO["vermillion"]}.get(status, OKABE_ITO["vermillion"])
    return title, line, color


def _mark_steps(ax, info: Mapping | None) -> None:
    info = info or {}
    best = info.get("best_step")
    if best is not None and pd.notna(best):
        ax.axvline(float(best), color=OKABE_ITO["bluish_green"], ls=":", lw=1.3)
    if info.get("status") == "stopped_early" and info.get("steps") is not None and pd.notna(info.get("steps")):
        ax.axvline(float(info["steps"]), color=OKABE_ITO["vermillion"], ls="--", lw=1.3)


def _finish_run_figure(fig, run, info, extra_handles=()) -> None:
    title, line, color = _run_title(run, info)
    fig.suptitle(f"{title}\n{line}", color=color if line != "completed" else "black")
    handles = list(extra_handles)
    if info and info.get("best_step") is not None and pd.notna(info.get("best_step")):
        handles.append(Line2D([], [], color=OKABE_ITO["bluish_green"], ls=":", label="best checkpoint (lowest dev loss)"))
    if info and info.get("status") == "stopped_early":
        handles.append(Line2D([], [], color=OKABE_ITO["vermillion"], ls="--", label="stopped early here"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)


def _panel_loss(ax, train: pd.DataFrame, evals: pd.DataFrame, info) -> None:
    ax.set_title("loss")
    if train.empty and evals.empty:
        return empty_axes(ax, "no training log")
    if not train.empty:
        ax.plot(train.step, train["loss"], color=OKABE_ITO["black"], lw=1.4, label="train loss")
    if not evals.empty:
        ax.plot(evals.step, evals["eval_loss"], "o-", color=OKABE_ITO["orange"], lw=1.4, ms=4, label="dev loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.legend(frameon=False, fontsize=8)
    _mark_steps(ax, info)


def _panel_dev_metrics(ax, evals: pd.DataFrame, main_metric: str | None, info) -> None:
    ax.set_title("dev metrics")
    cols = [c for c in evals.columns if c.startswith("eval_") and c not in EVAL_SKIP and evals[c].notna().any()
            and pd.api.types.is_numeric_dtype(evals[c])] if not evals.empty else []
    if not cols:
        return empty_axes(ax, "no dev metrics logged")
    main_col = f"eval_{main_metric}" if main_metric else None
    for i, col in enumerate(sorted(cols, key=lambda c: c != main_col)):
        is_main = col == main_col
        ax.plot(evals.step, evals[col], "o-", ms=4, lw=2.2 if is_main else 1.2, color=CYCLE[i % len(CYCLE)],
                label=col[5:] + (" (main)" if is_main else ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"dev score {scale_note(evals[cols].to_numpy().ravel())}".strip())
    ax.legend(frameon=False, fontsize=8)
    _mark_steps(ax, info)


def _panel_grad_norm(ax, train: pd.DataFrame, info) -> None:
    ax.set_title("gradient norm")
    if train.empty or "grad_norm" not in train or not train.grad_norm.notna().any():
        return empty_axes(ax, "no gradient norms logged")
    ax.plot(train.step, train.grad_norm, color=OKABE_ITO["black"], lw=1.6, label="global L2 norm")
    if {"grad_norm_param_min", "grad_norm_param_max"} <= set(train.columns):
        ax.fill_between(train.step, train.grad_norm_param_min, train.grad_norm_param_max, color=OKABE_ITO["sky_blue"],
                        alpha=0.35, lw=0, label="per-parameter min–max")
    if "grad_norm_param_mean" in train:
        ax.plot(train.step, train.grad_norm_param_mean, color=OKABE_ITO["blue"], lw=1.2, label="per-parameter mean")
    positive = pd.concat([train[c] for c in ("grad_norm", "grad_norm_param_min") if c in train]).dropna()
    if not positive.empty and (positive > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient L2 norm (before clipping)")
    ax.legend(frameon=False, fontsize=8)
    _mark_steps(ax, info)


def _panel_schedule(ax, train: pd.DataFrame) -> None:
    ax.set_title("learning rate and clipping")
    has_lr = "learning_rate" in train and train.learning_rate.notna().any() if not train.empty else False
    has_clip = "grad_clipped_fraction" in train and train.grad_clipped_fraction.notna().any() if not train.empty \
        else False
    if not (has_lr or has_clip):
        return empty_axes(ax, "no learning rate or clipping logged")
    if has_lr:
        ax.plot(train.step, train.learning_rate, color=OKABE_ITO["bluish_green"], lw=1.6)
        ax.set_ylabel("learning rate", color=OKABE_ITO["bluish_green"])
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if has_clip:
        twin = ax.twinx() if has_lr else ax
        twin.plot(train.step, train.grad_clipped_fraction, color=OKABE_ITO["reddish_purple"], lw=1.4, ls="--")
        twin.set_ylim(-0.02, 1.02)
        twin.set_ylabel("fraction of steps clipped", color=OKABE_ITO["reddish_purple"])
        twin.spines["right"].set_visible(True)
        twin.grid(False)
    ax.set_xlabel("optimizer step")


def _panel_throughput(ax, train: pd.DataFrame) -> None:
    ax.set_title("throughput")
    cols = [c for c in ("examples_per_second", "tokens_per_second") if c in train and train[c].notna().any()] \
        if not train.empty else []
    if not cols:
        return empty_axes(ax, "no throughput logged")
    for i, (col, color) in enumerate(zip(cols, (OKABE_ITO["blue"], OKABE_ITO["orange"]))):
        target = ax if i == 0 else ax.twinx()
        s = train[["step", col]].dropna()
        target.plot(s.step, s[col], color=color, lw=1.5, ls="-" if i == 0 else "--")
        target.set_ylabel(col.replace("_per_second", " / second"), color=color)
        if i:
            target.spines["right"].set_visible(True)
            target.grid(False)
    ax.set_xlabel("optimizer step")


def _panel_memory(ax, rows: pd.DataFrame) -> None:
    ax.set_title("memory")
    cols = [c for c in rows.columns if MEMORY_COL.match(c) and rows[c].notna().any()] if not rows.empty else []
    if not cols:
        return empty_axes(ax, "no memory logged")
    for i, col in enumerate(cols):
        s = rows[["step", col]].dropna()
        ax.plot(s.step, s[col], lw=1.5, color=CYCLE[i % len(CYCLE)], label=col.replace("_mb", "").replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("memory (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)


def plot_run_diagnostics(log: pd.DataFrame, run: Mapping, info: Mapping | None, path,
                         main_metric: str | None = None) -> None:
    """One run's health: loss, dev metrics, gradient norm, lr / clipping, throughput, memory."""
    fig, axes = plt.subplots(2, 3, figsize=(14.5, 7.0), layout="constrained")
    train, evals = _train_rows(log), _eval_rows(log)
    rows = log.sort_values("step") if not log.empty and "step" in log else pd.DataFrame()
    _panel_loss(axes[0][0], train, evals, info)
    _panel_dev_metrics(axes[0][1], evals, main_metric, info)
    _panel_grad_norm(axes[0][2], train, info)
    _panel_schedule(axes[1][0], train)
    _panel_throughput(axes[1][1], train)
    _panel_memory(axes[1][2], rows)
    _finish_run_figure(fig, run, info)
    save(fig, path)


def plot_task_training(logs: Mapping[tuple, pd.DataFrame], runs: pd.DataFrame | None, task: str, path,
                       main_metric: str | None = None) -> None:
    """Every run of a task on one figure: train loss and dev main metric; dashed = stopped early."""
    status = status_lookup(runs)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10.0, 3.9), layout="constrained")
    col = f"eval_{main_metric}" if main_metric else None
    shown_metric = False
    seen_status = set()
    for key, log in logs.items():
        method = key[1]
        st = status.get(tuple(key), "missing")
        seen_status.add(st)
        ls = "-" if st == "completed" else "--"
        train, evals = _train_rows(log), _eval_rows(log)
        if not train.empty:
            ax_loss.plot(train.step, train["loss"], ls=ls, color=method_color(method), lw=1.1, alpha=0.8)
        if col and not evals.empty and col in evals:
            ax_metric.plot(evals.step, evals[col], ls=ls, marker="o", ms=3, color=method_color(method), lw=1.1,
                           alpha=0.8)
            shown_metric = True
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("train loss (nats)")
    ax_loss.set_title("train loss, every run")
    if shown_metric:
        ax_metric.set_xlabel("optimizer step")
        ax_metric.set_ylabel(f"dev {main_metric}")
        ax_metric.set_title(f"dev {main_metric}, every run")
    else:
        empty_axes(ax_metric, "no dev metric logged")
    handles = method_handles(method_order({k[1] for k in logs}))
    if seen_status - {"completed"}:
        handles.append(Line2D([], [], color="#555555", ls="--", label="stopped early / failed"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(f"{task}: training curves of all {len(logs)} runs")
    save(fig, path)
