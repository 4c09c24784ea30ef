"""Report figures and tables: what a researcher opens after a week of GPU time.

Every figure function takes the workflow's tables as pandas frames and writes one SVG;
nothing here knows about Snakemake. `run()` is the single entry point of the rule script
(workflow/scripts/plots.py); the `kind` it gets picks one of the `*_outputs` functions.

Conventions
  * colours: Okabe-Ito for categories (full fine-tuning = vermillion, LoRA = blue),
    cividis for heatmaps, always one colour scale per figure;
  * a run's status is always visible: filled marker / solid line = completed,
    hollow marker / dashed line = stopped early, grey cross = failed or missing;
  * drift = 1 - similarity for similarity metrics (linear / debiased CKA, cosine),
    the distance itself for Procrustes: 0 = unchanged, larger = further from the base model;
  * "chosen setting" = the (lr, batch size) `best.csv` picked on dev for a task x method.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ftdrift.core import io  # noqa: E402
from ftdrift.core.drift_metrics import metric_info, to_drift  # noqa: E402

# --------------------------------------------------------------------------- style

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
METHODS = ("full", "lora")
METHOD_COLOR = {"full": OKABE_ITO["vermillion"], "lora": OKABE_ITO["blue"]}
METHOD_NAME = {"full": "full fine-tuning", "lora": "LoRA"}
# for series that are not methods (batch sizes, metrics, modules): no vermillion/blue clash
CYCLE = [OKABE_ITO[k] for k in ("orange", "sky_blue", "bluish_green", "reddish_purple", "black", "yellow")]
HEATMAP_CMAP = "cividis"
MISSING_COLOR = "#999999"

STATUS_NAME = {"completed": "completed", "stopped_early": "stopped early", "failed": "failed",
               "missing": "missing (failed or not run)"}
NOT_COMPLETED = ("stopped_early", "failed", "missing")

RUN_KEYS = ["task", "method", "lr", "batch_size", "seed"]
SETTING_KEYS = ["task", "method", "lr", "batch_size"]


plt.rcParams.update({
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "figure.titlesize": 11.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.prop_cycle": matplotlib.cycler(color=CYCLE), "image.cmap": HEATMAP_CMAP,
    # text stays text: a third of the size of glyph paths, and searchable in the browser
    "svg.hashsalt": "ftdrift", "svg.fonttype": "none", "figure.dpi": 100,
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
})


def method_name(method: str) -> str:
    return METHOD_NAME.get(method, method)


# --------------------------------------------------------------------------- tables


def norm_lr(value) -> str:
    """Canonical learning-rate string (as in run paths): 0.0001 / '1e-04' -> '1e-4'."""
    try:
        mantissa, exponent = f"{float(value):.6e}".split("e")
    except (TypeError, ValueError):
        return str(value)
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns in one canonical form: lr string, integer batch size / seed / step / layer."""
    frame = frame.copy()
    if "lr" in frame:
        frame["lr"] = frame["lr"].map(norm_lr).astype(object)
    for col in ("batch_size", "seed", "step", "layer"):
        if col in frame and frame[col].notna().all():
            frame[col] = frame[col].astype(int)
    for col in ("task", "method", "status", "pooling", "metric", "module", "layer_name", "main_metric"):
        if col in frame:
            frame[col] = frame[col].astype(object)
    return frame


def read_table(path, required: bool = True) -> pd.DataFrame | None:
    """A results table; None for an optional table that is absent or empty."""
    if path is None or (not required and not Path(path).exists()):
        return None
    try:
        frame = pd.read_csv(path, dtype={"lr": str})
    except pd.errors.EmptyDataError:
        if required:
            return pd.DataFrame()
        return None
    if frame.empty and not required:
        return None
    return normalise(frame)


def chosen_runs(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The runs (all seeds) of each task x method's chosen setting."""
    if runs is None or runs.empty or best is None or best.empty:
        return runs.iloc[0:0] if runs is not None else pd.DataFrame(columns=RUN_KEYS)
    return runs.merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)


def best_row(best: pd.DataFrame | None, task: str, method: str):
    if best is None or best.empty:
        return None
    sub = best[(best.task == task) & (best.method == method)]
    return None if sub.empty else sub.iloc[0]


def setting_text(lr, batch_size) -> str:
    return f"lr {lr}, batch {batch_size}"


def run_status(runs: pd.DataFrame | None, planned: Sequence[Mapping] | None = None) -> pd.DataFrame:
    """Every planned run with its status; runs absent from runs.csv are 'missing'.

    Runs in runs.csv that the current grid does not plan are kept too (status as recorded).
    """
    cols = RUN_KEYS + ["status"]
    have = (runs[[c for c in cols if c in runs]].copy() if runs is not None and not runs.empty
            else pd.DataFrame(columns=cols))
    if "status" not in have:
        have["status"] = "completed"
    have["status"] = have["status"].fillna("failed")
    if planned:
        plan = normalise(pd.DataFrame([{k: p[k] for k in RUN_KEYS} for p in planned]))
        plan["_order"] = range(len(plan))
        merged = plan.merge(have, on=RUN_KEYS, how="outer", indicator=True)
        merged.loc[merged["_merge"] == "left_only", "status"] = "missing"
        merged["planned"] = merged["_merge"] != "right_only"
        have = merged.drop(columns="_merge")
    else:
        have["planned"] = True
        have["_order"] = 0
    have = normalise(have)
    # the grid's order (tasks as configured); runs the grid no longer plans go last
    have = have.sort_values(RUN_KEYS, key=_sort_key, kind="stable")
    have["_order"] = have["_order"].fillna(len(have))
    return have.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _sort_key(col: pd.Series):
    if col.name == "lr":
        return col.map(lambda v: float(v) if _is_float(v) else math.inf)
    if col.name == "method":
        return col.map(lambda m: METHODS.index(m) if m in METHODS else len(METHODS))
    return col


def _is_float(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _status_of(frame: pd.DataFrame) -> pd.Series:
    if "status" not in frame:
        return pd.Series("completed", index=frame.index)
    return frame["status"].fillna("failed")


def scale_note(values) -> str:
    """'(0–1)' or '(%)' from the values themselves: accuracy is 0–1, SQuAD scores 0–100."""
    arr = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if arr.empty:
        return ""
    return "(0–1)" if arr.abs().max() <= 1.0 + 1e-9 else "(%)"


# --------------------------------------------------------------------------- plumbing


def _save(fig, path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)


def _empty(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555",
            fontsize=10, wrap=True)


def empty_figure(path, title: str, message: str) -> None:
    """A placeholder SVG, so a report entry says why there is nothing to show."""
    fig, ax = plt.subplots(figsize=(6, 2.4), layout="constrained")
    fig.suptitle(title)
    _empty(ax, message)
    _save(fig, path)


def _grid(n: int, ncols: int, width: float, height: float, **kw):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained", **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def _marker_kw(method: str, status: str, size: float = 6) -> dict:
    color = METHOD_COLOR.get(method, OKABE_ITO["black"])
    if status == "completed":
        return dict(marker="o", ms=size, mfc=color, mec=color, color=color, ls="none")
    if status == "stopped_early":
        return dict(marker="o", ms=size, mfc="white", mec=color, mew=1.6, color=color, ls="none")
    return dict(marker="X", ms=size + 1, mfc=MISSING_COLOR, mec=MISSING_COLOR, color=MISSING_COLOR, ls="none")


def status_legend_handles(statuses: Iterable[str], method: str = "full") -> list:
    handles = []
    for status in ("completed", "stopped_early", "failed"):
        if status in set(statuses):
            kw = _marker_kw(method, status)
            kw["mfc"] = "white" if status == "stopped_early" else ("#555555" if status == "completed" else MISSING_COLOR)
            kw["mec"] = "#555555" if status != "failed" else MISSING_COLOR
            handles.append(Line2D([], [], label=f"seed run: {STATUS_NAME[status]}", **kw))
    return handles


def method_handles(methods: Iterable[str]) -> list:
    return [Line2D([], [], color=METHOD_COLOR.get(m, "k"), lw=2.5, label=method_name(m)) for m in methods]


def _layer_ticks(ax, layers: Sequence[int], names: Mapping[int, str], axis: str = "x", max_ticks: int = 14):
    layers = list(layers)
    step = max(1, math.ceil(len(layers) / max_ticks))
    shown = layers[::step]
    if layers and layers[-1] not in shown:
        shown.append(layers[-1])
    labels = [short_layer_name(names.get(l, str(l)), l) for l in shown]
    if axis == "x":
        ax.set_xticks(shown, labels, rotation=45 if max(map(len, labels), default=0) > 4 else 0, ha="right"
                      if max(map(len, labels), default=0) > 4 else "center")
    else:
        ax.set_yticks(shown, labels)


def short_layer_name(name: str, layer: int) -> str:
    """'model.layers.3' -> 'block 3'; 'embeddings' stays."""
    text = str(name)
    if int(layer) == 0 and ("emb" in text.lower() or text in ("0", "")):
        return "embeddings"
    match = re.search(r"(\d+)\D*$", text)
    if match and not text.lower().startswith("emb"):
        return f"block {match.group(1)}" if len(text) > 10 or "layer" in text.lower() else text
    return text if len(text) <= 14 else text[-14:]


# --------------------------------------------------------------------------- performance


def _seed_offsets(n: int, width: float = 0.22) -> np.ndarray:
    return np.zeros(1) if n <= 1 else np.linspace(-width / 2, width / 2, n)


def plot_validation(runs: pd.DataFrame, best: pd.DataFrame, path, tasks: Sequence[str] | None = None,
                    confidence: float = 0.95) -> None:
    """Per task: validation main metric of the chosen setting, mean ± CI over seeds, full vs LoRA."""
    tasks = list(tasks or (best.task.unique() if best is not None and not best.empty else []))
    if not tasks:
        return empty_figure(path, "Validation metric", "no runs have finished yet")
    chosen = chosen_runs(runs, best)
    fig, axes = _grid(len(tasks), 4, 3.0, 3.4)
    statuses = set()
    pct = int(round(confidence * 100))
    for ax, task in zip(axes, tasks):
        ticks, ticklabels, metric = [], [], ""
        for i, method in enumerate(METHODS):
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
            ax.errorbar([i], [mean], yerr=yerr, fmt="D", ms=8, color=METHOD_COLOR[method], capsize=6, lw=2,
                        zorder=3, mec="black", mew=0.6)
            offs = _seed_offsets(len(seeds)) + 0.28
            for off, (_, seed_row) in zip(offs, seeds.sort_values("seed").iterrows()):
                status = _status_of(seeds).loc[seed_row.name]
                statuses.add(status)
                y = seed_row.val_main if pd.notna(seed_row.val_main) else mean
                ax.plot([i + off], [y], **_marker_kw(method, status if pd.notna(seed_row.val_main) else "failed"),
                        zorder=4)
            ax.annotate(f"{mean:.3g}\nn={int(row.n_seeds)}", (i, mean), xytext=(-10, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=8)
        ax.set_xticks(ticks, ticklabels, fontsize=8)
        ax.set_xlim(-0.7, len(METHODS) - 0.4)
        vals = chosen[chosen.task == task].val_main if not chosen.empty else []
        ax.set_ylabel(f"validation {metric} {scale_note(vals)}".strip())
        ax.set_title(task)
    handles = [Line2D([], [], marker="D", color="#555555", mec="black", ls="-", ms=7,
                      label=f"mean ± {pct}% CI over seeds")] + status_legend_handles(statuses or {"completed"})
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle("Validation main metric of the setting chosen on dev")
    _save(fig, path)


def performance_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per task x method: chosen setting, seed counts by status, validation / dev / drift statistics."""
    if best is None or best.empty:
        return pd.DataFrame(columns=["task", "method"])
    chosen = chosen_runs(runs, best)
    rows = []
    for _, row in best.iterrows():
        seeds = chosen[(chosen.task == row.task) & (chosen.method == row.method)]
        status = _status_of(seeds)
        out = {"task": row.task, "method": row.method, "lr": row.lr, "batch_size": row.batch_size,
               "main_metric": row.main_metric, "n_seeds": row.get("n_seeds"),
               "seeds_completed": int((status == "completed").sum()),
               "seeds_stopped_early": int((status == "stopped_early").sum())}
        for col in ("val_mean", "val_std", "val_ci_low", "val_ci_high", "dev_mean", "drift_mean", "drift_ci_low",
                    "drift_ci_high", "trainable_fraction"):
            out[col] = row.get(col)
        rows.append(out)
    return pd.DataFrame(rows)


def grid_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Every hyperparameter setting: dev / validation mean and spread over seeds, chosen flag."""
    if runs is None or runs.empty:
        return pd.DataFrame(columns=SETTING_KEYS + ["chosen"])
    frame = runs.assign(_status=_status_of(runs))
    agg = frame.groupby(SETTING_KEYS, sort=False).agg(
        main_metric=("main_metric", "first"), n_seeds=("seed", "nunique"),
        seeds_stopped_early=("_status", lambda s: int((s == "stopped_early").sum())),
        dev_mean=("dev_main", "mean"), dev_std=("dev_main", "std"), dev_min=("dev_main", "min"),
        dev_max=("dev_main", "max"), val_mean=("val_main", "mean"), val_std=("val_main", "std")).reset_index()
    keys = set(map(tuple, best[SETTING_KEYS].astype(str).to_numpy())) if best is not None and not best.empty else set()
    agg["chosen"] = [tuple(map(str, k)) in keys for k in agg[SETTING_KEYS].to_numpy()]
    return agg.sort_values(SETTING_KEYS, key=_sort_key).reset_index(drop=True)


def plot_grid(runs: pd.DataFrame, best: pd.DataFrame, task: str, path) -> None:
    """Dev main metric over the lr grid, one line per batch size, per method; chosen setting ringed."""
    sub = runs[runs.task == task] if runs is not None and not runs.empty else pd.DataFrame()
    if sub.empty:
        return empty_figure(path, f"{task}: hyperparameter grid", "no finished runs for this task")
    metric = sub.main_metric.iloc[0]
    batch_sizes = sorted(sub.batch_size.unique())
    colors = {bs: CYCLE[i % len(CYCLE)] for i, bs in enumerate(batch_sizes)}
    fig, axes = plt.subplots(1, len(METHODS), figsize=(8.4, 3.6), sharey=True, layout="constrained", squeeze=False)
    statuses = set()
    for ax, method in zip(axes[0], METHODS):
        msub = sub[sub.method == method]
        ax.set_title(method_name(method))
        if msub.empty:
            _empty(ax, "no runs")
            continue
        lrs = sorted(msub.lr.unique(), key=float)
        for bs in batch_sizes:
            bsub = msub[msub.batch_size == bs]
            if bsub.empty:
                continue
            means = bsub.groupby("lr")["dev_main"].mean()
            xs = [float(lr) for lr in lrs if lr in means.index]
            ax.plot(xs, [means[lr] for lr in lrs if lr in means.index], "-", color=colors[bs], lw=1.8,
                    label=f"batch {bs} (mean over seeds)")
            for _, r in bsub.iterrows():
                status = r.get("status", "completed") if pd.notna(r.dev_main) else "failed"
                statuses.add(status)
                kw = _marker_kw(method, status, size=5)
                kw.update(mfc=colors[bs] if status == "completed" else "white", mec=colors[bs])
                ax.plot([float(r.lr)], [r.dev_main], **kw, alpha=0.9)
        row = best_row(best, task, method)
        if row is not None:
            bsub = msub[(msub.lr == row.lr) & (msub.batch_size == row.batch_size)]
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
    axes[0][0].set_ylabel(f"dev {metric} {scale_note(sub.dev_main)}".strip())
    handles = [Line2D([], [], color=colors[bs], lw=1.8, marker="o", label=f"batch size {bs}") for bs in batch_sizes]
    handles.append(Line2D([], [], marker="o", ms=12, mfc="none", mec="black", mew=2, ls="none",
                          label="chosen on dev (best mean)"))
    if "stopped_early" in statuses:
        handles.append(Line2D([], [], marker="o", mfc="white", mec="#555555", ls="none", label="seed stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(f"{task}: hyperparameter grid (dev {metric}, the selection criterion; dots = seeds)")
    _save(fig, path)


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


def plot_qa_breakdown(runs: pd.DataFrame, best: pd.DataFrame, task: str, path) -> pd.DataFrame:
    """SQuAD v2: overall, answerable (HasAns) and unanswerable (NoAns) scores, full vs LoRA."""
    table = qa_breakdown_table(runs, best, task)
    if table.empty:
        empty_figure(path, f"{task}: HasAns / NoAns breakdown", "no validation sub-scores in runs.csv")
        return table
    scores = [k for k, _ in QA_BREAKDOWN if k in set(table.score)]
    names = dict(QA_BREAKDOWN)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * len(scores) + 2), 3.9), layout="constrained")
    width = 0.38
    statuses = set()
    for j, method in enumerate(METHODS):
        msub = table[table.method == method]
        if msub.empty:
            continue
        means = msub.groupby("score")["value"].mean()
        xs = np.arange(len(scores)) + (j - 0.5) * width
        ax.bar(xs, [means.get(s, np.nan) for s in scores], width * 0.92, color=METHOD_COLOR[method], alpha=0.85,
               label=f"{method_name(method)} (lr {msub.lr.iloc[0]}, bs {msub.batch_size.iloc[0]}; mean over seeds)")
        for x, s in zip(xs, scores):
            vals = msub[msub.score == s]
            offs = _seed_offsets(len(vals), width * 0.6)
            for off, (_, r) in zip(offs, vals.iterrows()):
                statuses.add(r.status)
                kw = _marker_kw(method, r.status, size=4)
                kw.update(mec="black")
                ax.plot([x + off], [r.value], **kw, zorder=4)
    ax.set_xticks(np.arange(len(scores)), [names[s] for s in scores], fontsize=8.5)
    ax.set_ylabel(f"validation score {scale_note(table.value)}".strip())
    ax.legend(handles=ax.get_legend_handles_labels()[0] + status_legend_handles(statuses), loc="upper left",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"{task}: validation scores, chosen settings (dots = seeds)\n"
                 "HasAns = answerable questions, NoAns = unanswerable, EM = exact match")
    _save(fig, path)
    return table


# --------------------------------------------------------------------------- drift


def drift_slice(drift: pd.DataFrame, task: str, metric: str, pooling: str) -> pd.DataFrame:
    if drift is None or drift.empty:
        return pd.DataFrame(columns=RUN_KEYS + ["step", "layer", "layer_name", "value"])
    return drift[(drift.task == task) & (drift.metric == metric) & (drift.pooling == pooling)]


def _chosen_drift(drift_sub: pd.DataFrame, best: pd.DataFrame | None) -> pd.DataFrame:
    if best is None or best.empty or drift_sub.empty:
        return drift_sub
    return drift_sub.merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)


def layer_names(frame: pd.DataFrame) -> dict[int, str]:
    if frame is None or frame.empty or "layer_name" not in frame:
        return {}
    return {int(l): str(n) for l, n in frame[["layer", "layer_name"]].drop_duplicates("layer").to_numpy()}


def final_step(drift_sub: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last snapshot."""
    if drift_sub.empty:
        return drift_sub
    last = drift_sub.groupby(RUN_KEYS)["step"].transform("max")
    return drift_sub[drift_sub.step == last]


def heatmap_matrices(drift: pd.DataFrame, best: pd.DataFrame | None, task: str, metric: str, pooling: str
                     ) -> dict[str, pd.DataFrame]:
    """method -> layer x step matrix of the metric (mean over the chosen setting's seeds)."""
    sub = _chosen_drift(drift_slice(drift, task, metric, pooling), best)
    out = {}
    for method in METHODS:
        msub = sub[sub.method == method]
        if not msub.empty:
            out[method] = msub.pivot_table(index="layer", columns="step", values="value", aggfunc="mean").sort_index()
    return out


def shared_limits(matrices: Iterable[pd.DataFrame]) -> tuple[float, float]:
    """One (vmin, vmax) for all panels; widened when flat so the colour bar stays readable."""
    values = np.concatenate([np.asarray(m, dtype=float).ravel() for m in matrices] or [np.array([])])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.005, hi + 0.005
    return lo, hi


def _seed_note(runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str, method: str) -> str:
    if runs is None or runs.empty:
        return ""
    seeds = chosen_runs(runs, best)
    seeds = seeds[(seeds.task == task) & (seeds.method == method)]
    if seeds.empty:
        return ""
    status = _status_of(seeds)
    note = f"n={len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    early = int((status == "stopped_early").sum())
    if early:
        note += f", {early} stopped early"
    return note


def plot_drift_heatmaps(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                        metric: str, pooling: str, path) -> tuple[float, float]:
    """Layer x step heatmaps of the metric, full and LoRA side by side on ONE colour scale.

    Returns the shared (vmin, vmax).
    """
    info = metric_info(metric)
    mats = heatmap_matrices(drift, best, task, metric, pooling)
    vmin, vmax = shared_limits(mats.values())
    norm = Normalize(vmin=vmin, vmax=vmax)
    names = layer_names(drift_slice(drift, task, metric, pooling))
    n_layers = max((len(m) for m in mats.values()), default=1)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, max(3.4, 0.22 * n_layers + 2.0)), layout="constrained",
                             squeeze=False)
    image = None
    cmap = plt.get_cmap(HEATMAP_CMAP).with_extremes(bad=MISSING_COLOR)
    for ax, method in zip(axes[0], METHODS):
        row = best_row(best, task, method)
        title = method_name(method)
        if row is not None:
            title += f"\n{setting_text(row.lr, row.batch_size)}"
        note = _seed_note(runs, best, task, method)
        if note:
            title += f"; {note}"
        ax.set_title(title)
        if method not in mats:
            _empty(ax, "no drift data")
            continue
        mat = mats[method]
        image = ax.imshow(np.ma.masked_invalid(mat.to_numpy(dtype=float)), aspect="auto", origin="lower",
                          cmap=cmap, norm=norm, interpolation="nearest")
        steps = list(mat.columns)
        every = max(1, math.ceil(len(steps) / 10))
        idx = list(range(0, len(steps), every))
        if idx[-1] != len(steps) - 1:
            idx.append(len(steps) - 1)
        ax.set_xticks(idx, [str(steps[i]) for i in idx], rotation=0)
        _layer_ticks(ax, list(range(len(mat.index))), {i: names.get(l, str(l)) for i, l in enumerate(mat.index)},
                     axis="y", max_ticks=16)
        ax.set_xlabel("optimizer step (snapshot)")
        ax.set_ylabel("layer")
        ax.grid(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9, pad=0.02)
        bar.set_label(info.value_label)
    fig.suptitle(f"{task}: {info.name} per layer and training step ({pooling} pooling; grey = no snapshot)")
    _save(fig, path)
    return vmin, vmax


def layer_drift_table(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str
                      ) -> pd.DataFrame:
    """Final-snapshot drift per layer (chosen settings): mean, min and max over seeds, all metrics/poolings."""
    if drift is None or drift.empty:
        return pd.DataFrame()
    sub = _chosen_drift(drift[drift.task == task], best)
    if sub.empty:
        return pd.DataFrame()
    last = sub.groupby(RUN_KEYS + ["metric", "pooling"])["step"].transform("max")
    fin = sub[sub.step == last].copy()
    fin["drift"] = [to_drift(m, v) for m, v in zip(fin.metric, fin.value)]
    out = fin.groupby(["task", "method", "lr", "batch_size", "metric", "pooling", "layer", "layer_name"],
                      sort=False).agg(n_seeds=("seed", "nunique"), final_step=("step", "max"),
                                      drift_mean=("drift", "mean"), drift_min=("drift", "min"),
                                      drift_max=("drift", "max")).reset_index()
    return out.sort_values(["method", "metric", "pooling", "layer"]).reset_index(drop=True)


def _status_lookup(runs: pd.DataFrame | None) -> dict[tuple, str]:
    if runs is None or runs.empty:
        return {}
    status = _status_of(runs)
    return {tuple(k): s for k, s in zip(runs[RUN_KEYS].to_numpy().tolist(), status)}


def _run_key(row) -> tuple:
    return tuple(row[k] for k in RUN_KEYS)


def plot_drift_by_layer(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                        metric: str, pooling: str, path) -> None:
    """Final-snapshot drift vs layer: mean over seeds with a min–max band, both methods on one axis."""
    info = metric_info(metric)
    sub = final_step(_chosen_drift(drift_slice(drift, task, metric, pooling), best))
    if sub.empty:
        return empty_figure(path, f"{task}: final-step drift by layer", "no drift data")
    sub = sub.assign(drift=to_drift(metric, sub.value))
    names = layer_names(sub)
    status = _status_lookup(runs)
    fig, ax = plt.subplots(figsize=(7.4, 4.0), layout="constrained")
    any_early = False
    for method in METHODS:
        msub = sub[sub.method == method]
        if msub.empty:
            continue
        stats = msub.groupby("layer")["drift"].agg(["mean", "min", "max"]).sort_index()
        n = msub.seed.nunique()
        color = METHOD_COLOR[method]
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.22, lw=0)
        ax.plot(stats.index, stats["mean"], "-o", color=color, lw=2, ms=4,
                label=f"{method_name(method)} ({setting_text(msub.lr.iloc[0], msub.batch_size.iloc[0])}; "
                      f"n={n} seed{'s' if n != 1 else ''})")
        for seed, ssub in msub.groupby("seed"):
            key = _run_key(ssub.iloc[0])
            early = status.get(key) == "stopped_early"
            any_early |= early
            ssub = ssub.sort_values("layer")
            ax.plot(ssub.layer, ssub.drift, ls="--" if early else "-", color=color, lw=0.8, alpha=0.6)
    _layer_ticks(ax, sorted(sub.layer.unique()), names)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"{info.drift_label} at final step")
    ax.set_ylim(bottom=min(0.0, float(sub.drift.min())))
    handles, _ = ax.get_legend_handles_labels()
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="band: min–max over seeds"))
    handles.append(Line2D([], [], color="#777777", lw=0.8, label="single seed"))
    if any_early:
        handles.append(Line2D([], [], color="#777777", lw=0.8, ls="--", label="seed stopped early"))
    ax.legend(handles=handles, loc="upper left", frameon=False)
    ax.set_title(f"{task}: drift from the base model at the final snapshot ({pooling} pooling)")
    _save(fig, path)


def pick_layers(layers: Sequence[int]) -> list[int]:
    """First transformer block, middle block, last block (embeddings only if there is nothing else)."""
    layers = sorted(set(int(l) for l in layers))
    blocks = [l for l in layers if l > 0] or layers
    if not blocks:
        return []
    picked = [blocks[0], blocks[len(blocks) // 2], blocks[-1]]
    return list(dict.fromkeys(picked))


def plot_drift_over_training(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                             metric: str, pooling: str, path) -> None:
    """Drift vs step for the first, middle and last block; mean over seeds with min–max band."""
    info = metric_info(metric)
    sub = _chosen_drift(drift_slice(drift, task, metric, pooling), best)
    if sub.empty:
        return empty_figure(path, f"{task}: drift over training", "no drift data")
    sub = sub.assign(drift=to_drift(metric, sub.value))
    names = layer_names(sub)
    layers = pick_layers(sub.layer.unique())
    status = _status_lookup(runs)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.6), sharey=True, layout="constrained",
                             squeeze=False)
    which = ["first", "middle", "last"] if len(layers) == 3 else [""] * len(layers)
    early_seen = False
    for ax, layer, label in zip(axes[0], layers, which):
        lsub = sub[sub.layer == layer]
        for method in METHODS:
            msub = lsub[lsub.method == method]
            if msub.empty:
                continue
            stats = msub.groupby("step")["drift"].agg(["mean", "min", "max"]).sort_index()
            color = METHOD_COLOR[method]
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.22, lw=0)
            ax.plot(stats.index, stats["mean"], "-", color=color, lw=2, label=method_name(method))
            for _, ssub in msub.groupby("seed"):
                if status.get(_run_key(ssub.iloc[0])) == "stopped_early":
                    early_seen = True
                    end = ssub.sort_values("step").iloc[-1]
                    ax.plot([end.step], [end.drift], **_marker_kw(method, "stopped_early", 7))
        ax.set_title(f"{label + ' block: ' if label else ''}{short_layer_name(names.get(layer, str(layer)), layer)}")
        ax.set_xlabel("optimizer step")
    axes[0][0].set_ylabel(info.drift_label)
    handles = method_handles([m for m in METHODS if m in set(sub.method)])
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if early_seen:
        handles.append(Line2D([], [], **{**_marker_kw("full", "stopped_early", 7), "mec": "#555555"},
                              label="last snapshot of a seed that stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{task}: drift over training, chosen settings ({pooling} pooling)")
    _save(fig, path)


def run_drift(drift: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    """Per run: mean over layers of drift at its final snapshot (the study's drift score)."""
    sub = drift[(drift.metric == metric) & (drift.pooling == pooling)] if drift is not None and not drift.empty \
        else pd.DataFrame(columns=RUN_KEYS + ["step", "value"])
    fin = final_step(sub)
    if fin.empty:
        return pd.DataFrame(columns=RUN_KEYS + ["drift"])
    fin = fin.assign(drift=to_drift(metric, fin.value))
    return fin.groupby(RUN_KEYS, as_index=False)["drift"].mean()


def plot_metric_vs_drift(drift: pd.DataFrame, runs: pd.DataFrame, best: pd.DataFrame | None, task: str, metric: str,
                         pooling: str, path) -> None:
    """Every run of a task: validation main metric vs drift; colour = method, hollow = stopped early."""
    info = metric_info(metric)
    per_run = run_drift(drift[drift.task == task] if drift is not None and not drift.empty else drift, metric, pooling)
    rsub = runs[runs.task == task] if runs is not None and not runs.empty else pd.DataFrame(columns=RUN_KEYS)
    data = rsub.merge(per_run, on=RUN_KEYS, how="left")
    if data.empty:
        return empty_figure(path, f"{task}: validation metric vs drift", "no finished runs")
    data = data.assign(_status=_status_of(data))
    chosen = set(map(tuple, chosen_runs(rsub, best)[RUN_KEYS].to_numpy().tolist())) if best is not None else set()
    fig, ax = plt.subplots(figsize=(6.2, 4.4), layout="constrained")
    statuses, hidden = set(), 0
    for _, r in data.iterrows():
        if pd.isna(r.drift) or pd.isna(r.val_main):
            hidden += 1
            continue
        statuses.add(r._status)
        kw = _marker_kw(r.method, r._status, size=8)
        if _run_key(r) in chosen:
            kw.update(mec="black", mew=1.6)
        ax.plot([r.drift], [r.val_main], **kw, alpha=0.9, zorder=3)
    metric_name = data.main_metric.dropna().iloc[0] if data.main_metric.notna().any() else "main metric"
    ax.set_xlabel(f"{info.drift_label}, mean over layers at final step")
    ax.set_ylabel(f"validation {metric_name} {scale_note(data.val_main)}".strip())
    handles = method_handles([m for m in METHODS if m in set(data.method)])
    handles += status_legend_handles(statuses)
    handles.append(Line2D([], [], marker="o", ms=8, mfc="none", mec="black", mew=1.6, ls="none",
                          label="run of the chosen setting"))
    ax.legend(handles=handles, loc="best", frameon=False)
    title = f"{task}: validation {metric_name} vs drift, every run ({pooling} pooling)"
    if hidden:
        title += f"\n{hidden} run(s) not shown: no validation score or no drift"
    ax.set_title(title)
    _save(fig, path)


# --------------------------------------------------------------------------- weight space

WEIGHT_VALUES = {"effective_rank": "effective rank of ΔW", "stable_rank": "stable rank of ΔW",
                 "intruder_dims": "intruder dimensions (count)"}


def weight_table(weights: pd.DataFrame | None, best: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """Chosen settings' weight diagnostics per method x module x layer: mean/min/max over seeds."""
    if weights is None or weights.empty:
        return pd.DataFrame()
    sub = weights[weights.task == task]
    if best is not None and not best.empty:
        chosen = sub.merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)
        sub = chosen if not chosen.empty else sub
    rows = []
    values = [v for v in WEIGHT_VALUES if v in sub]
    for keys, group in sub.groupby(["task", "method", "lr", "batch_size", "module", "layer"], sort=False):
        row = dict(zip(["task", "method", "lr", "batch_size", "module", "layer"], keys), n_seeds=group.seed.nunique())
        for v in values:
            row[f"{v}_mean"] = group[v].mean()
            row[f"{v}_min"] = group[v].min()
            row[f"{v}_max"] = group[v].max()
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "module", "layer"]).reset_index(drop=True) if rows \
        else pd.DataFrame()


def plot_weight_by_layer(weights: pd.DataFrame | None, best: pd.DataFrame | None, task: str, value: str, path,
                         lora_rank: int | None = None) -> None:
    """Per module: a ΔW diagnostic vs layer, full vs LoRA (mean over seeds, min–max band)."""
    label = WEIGHT_VALUES.get(value, value)
    table = weight_table(weights, best, task)
    if table.empty or f"{value}_mean" not in table:
        return empty_figure(path, f"{task}: {label}", "no weight-space diagnostics (results/tables/weights.csv)")
    modules = sorted(table.module.unique())
    fig, axes = _grid(len(modules), 4, 3.4, 3.3, sharey=True)
    for ax, module in zip(axes, modules):
        msub = table[table.module == module]
        for method in METHODS:
            s = msub[msub.method == method].sort_values("layer")
            if s.empty:
                continue
            color = METHOD_COLOR[method]
            ax.fill_between(s.layer, s[f"{value}_min"], s[f"{value}_max"], color=color, alpha=0.22, lw=0)
            ax.plot(s.layer, s[f"{value}_mean"], "-o", ms=3.5, color=color, lw=1.8)
        if value == "effective_rank" and lora_rank:
            ax.axhline(lora_rank, color=METHOD_COLOR["lora"], ls=":", lw=1.2)
        ax.set_title(module)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel(label)
    handles = method_handles([m for m in METHODS if m in set(table.method)])
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if value == "effective_rank" and lora_rank:
        handles.append(Line2D([], [], color=METHOD_COLOR["lora"], ls=":", label=f"LoRA rank r = {lora_rank}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{task}: {label} per layer and module (chosen settings)")
    _save(fig, path)


# --------------------------------------------------------------------------- training logs

EVAL_SKIP = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time"}


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
        return _empty(ax, "no training log")
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
        return _empty(ax, "no dev metrics logged")
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
        return _empty(ax, "no gradient norms logged")
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
        return _empty(ax, "no learning rate or clipping logged")
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
        return _empty(ax, "no throughput logged")
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
        return _empty(ax, "no memory logged")
    for i, col in enumerate(cols):
        s = rows[["step", col]].dropna()
        ax.plot(s.step, s[col], lw=1.5, color=CYCLE[i % len(CYCLE)], label=col.replace("_mb", "").replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("memory (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)


MEMORY_COL = re.compile(r"^(cpu_rss_mb|gpu\d+_.*_mb)$")


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
    _save(fig, path)


def plot_task_training(logs: Mapping[tuple, pd.DataFrame], runs: pd.DataFrame | None, task: str, path,
                       main_metric: str | None = None) -> None:
    """Every run of a task on one figure: train loss and dev main metric; dashed = stopped early."""
    status = _status_lookup(runs)
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
            ax_loss.plot(train.step, train["loss"], ls=ls, color=METHOD_COLOR.get(method, "k"), lw=1.1, alpha=0.8)
        if col and not evals.empty and col in evals:
            ax_metric.plot(evals.step, evals[col], ls=ls, marker="o", ms=3, color=METHOD_COLOR.get(method, "k"),
                           lw=1.1, alpha=0.8)
            shown_metric = True
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("train loss (nats)")
    ax_loss.set_title("train loss, every run")
    if shown_metric:
        ax_metric.set_xlabel("optimizer step")
        ax_metric.set_ylabel(f"dev {main_metric}")
        ax_metric.set_title(f"dev {main_metric}, every run")
    else:
        _empty(ax_metric, "no dev metric logged")
    handles = method_handles([m for m in METHODS if any(k[1] == m for k in logs)])
    if seen_status - {"completed"}:
        handles.append(Line2D([], [], color="#555555", ls="--", label="stopped early / failed"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{task}: training curves of all {len(logs)} runs")
    _save(fig, path)


# --------------------------------------------------------------------------- report labels


def _toggle_candidates(records: Sequence[Mapping[str, str]], keys: Sequence[str]) -> list[str]:
    """Labels Snakemake's report would turn into a toggle (mirrors abstract_results.js)."""
    out = []
    if len(keys) < 2:
        return out
    n = len(records)
    for key in keys[1:]:
        values = [r[key] for r in records if key in r]
        unique = set(values)
        if len(unique) == 2 and all(values.count(v) * 2 == n for v in unique):
            out.append(key)
    return out


def _toggle_safe(records: Sequence[Mapping[str, str]], keys: Sequence[str], toggle: str) -> bool:
    """Every row of the table has both toggle values (else the report's JavaScript crashes)."""
    groups: dict[tuple, set] = {}
    values = {r[toggle] for r in records}
    for r in records:
        groups.setdefault(tuple(r.get(k, "") for k in keys if k != toggle), set()).add(r[toggle])
    return all(g == values for g in groups.values())


def safe_labels(records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Report labels that render: string values, unique rows, no toggle that can point nowhere.

    Snakemake's report turns a non-first label with exactly two values, each on half of the
    results, into a toggle; if some row lacks one of the two values, selecting it crashes the
    page. Such a label is moved to the front (the first label never toggles).
    """
    recs = [{str(k): str(v) for k, v in r.items()} for r in records]
    if not recs:
        return []
    keys = list(recs[0])
    for _ in range(len(keys) + 1):
        cands = _toggle_candidates(recs, keys)
        if len(cands) != 1 or _toggle_safe(recs, keys, cands[0]):
            break
        keys = [cands[0]] + [k for k in keys if k != cands[0]]
    else:  # pathological: one merged label
        return [{" · ".join(keys): " · ".join(r[k] for k in keys)} for r in recs]
    return [{k: r[k] for k in keys} for r in recs]


def run_labels(planned: Sequence[Mapping], runs: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    """Labels for per-run report entries, keyed by 'task/method/lr{lr}_bs{bs}_seed{seed}'."""
    status = run_status(runs, planned)
    status = status[status.planned]
    records, paths = [], []
    for _, r in status.iterrows():
        records.append({"task": r.task, "method": r.method, "lr": r.lr, "batch size": int(r.batch_size),
                        "seed": int(r.seed), "status": STATUS_NAME.get(r.status, r.status)})
        paths.append(f"{r.task}/{r.method}/lr{r.lr}_bs{int(r.batch_size)}_seed{int(r.seed)}")
    return dict(zip(paths, safe_labels(records)))


# --------------------------------------------------------------------------- HTML pages and verdicts

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:1.5rem;
     color:#1f2328;line-height:1.45;max-width:72rem}
h1{font-size:1.45rem;margin:.2rem 0 .6rem} h2{font-size:1.15rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.86rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600}
.completed{background:#d8efe6;color:#00593f} .stopped_early{background:#fde7d3;color:#8a3b00}
.failed,.missing{background:#f8d7da;color:#842029}
.supported{background:#d8efe6;color:#00593f} .not_supported{background:#f8d7da;color:#842029}
.inconclusive,.unknown{background:#eceff3;color:#444}
.kpi{display:inline-block;margin:0 1.2rem .6rem 0;padding:.5rem .8rem;border:1px solid #d0d7de;border-radius:.5rem}
.kpi b{font-size:1.3rem;display:block} .muted{color:#57606a;font-size:.85rem} code{font-size:.85rem}
.kpi.alarm{border-color:#842029;background:#f8d7da;color:#842029}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    try:
        if pd.isna(value):
            return "n/a"
    except (TypeError, ValueError):
        pass
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def badge(status: str) -> str:
    key = re.sub(r"[^a-z_]", "", str(status).lower().replace(" ", "_")) or "unknown"
    return f'<span class="badge {key}">{_e(STATUS_NAME.get(status, status))}</span>'


def html_table(frame: pd.DataFrame, badges: Sequence[str] = ()) -> str:
    if frame is None or frame.empty:
        return '<p class="muted">(none)</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = r[c]
            if c in badges:
                cells.append(f"<td>{badge(v)}</td>")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{_e(fmt(v))}</td>')
            else:
                cells.append(f"<td>{_e(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The subset of Markdown summary.md uses: headings, paragraphs, pipe tables, lists."""
    out, para, table, items = [], [], [], []

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    def flush():
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                    if not re.fullmatch(r"\|?[\s:|-]+\|?", line.strip())]
            if rows:
                head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(stripped.lstrip('#').strip())}</h{level}>")
        elif stripped.startswith("|"):
            if para or items:
                flush()
            table.append(stripped)
        elif re.match(r"^[-*] ", stripped):
            items.append(stripped[2:])
        else:
            para.append(stripped)
    flush()
    return "\n".join(out)


def parse_verdicts(summary_md: str | None) -> pd.DataFrame:
    """The 'LoRA vs full' table of summary.md -> task, metric, H1/H2 verdicts (first word of each cell)."""
    cols = ["task", "metric", "lora_minus_full", "h1_verdict", "h2_verdict"]
    if not summary_md:
        return pd.DataFrame(columns=cols)
    rows, header = [], None
    for line in summary_md.splitlines():
        s = line.strip()
        if not s.startswith("|"):
            header = None if not s else header
            continue
        cells = [c.strip() for c in s.strip("|").split("|")]
        if re.fullmatch(r"[\s:|-]+", s.replace("|", "")):
            continue
        lower = [c.lower() for c in cells]
        if any(c.startswith("h1") for c in lower) and any(c.startswith("h2") for c in lower):
            header = lower
            continue
        if header and len(cells) == len(header):
            get = dict(zip(header, cells))
            h1 = next(v for k, v in get.items() if k.startswith("h1"))
            h2 = next(v for k, v in get.items() if k.startswith("h2"))
            diff = next((v for k, v in get.items() if "−" in k or "-" in k and "lora" in k), "")
            rows.append({"task": get.get("task", ""), "metric": get.get("metric", ""), "lora_minus_full": diff,
                         "h1_verdict": h1.split(" (")[0].strip(), "h2_verdict": h2.split(" (")[0].strip()})
    return pd.DataFrame(rows, columns=cols)


def _verdict_counts(values: Iterable[str]) -> str:
    """'1 supported, 2 inconclusive (3 tasks)'."""
    values = [str(v) for v in values if isinstance(v, str) and v]
    if not values:
        return "no verdict yet"
    counts = pd.Series(values).value_counts()
    order = ["supported", "not supported", "inconclusive"]
    names = sorted(counts.index, key=lambda v: order.index(v) if v in order else len(order))
    return ", ".join(f"{counts[v]} {v}" for v in names) + f" ({len(values)} task{'s' if len(values) != 1 else ''})"


HEADLINE_KEYS = ("page", "runs", "checks", "H1", "H2")


def checks_text(runs: pd.DataFrame | None) -> tuple[str, bool]:
    """('8 of 8 runs reproduce …', alarm?) from runs.csv's checkpoint-validation columns."""
    if runs is None or runs.empty or "checkpoint_ok" not in runs:
        return "not run", False
    ok = runs.checkpoint_ok.astype("boolean").fillna(False)
    n, bad = len(runs), int((~ok).sum())
    lora = runs[runs.method == "lora"] if "method" in runs else runs.iloc[:0]
    merged = " (merged LoRA adapters too)" if not lora.empty else ""
    if bad:
        return f"FAILED for {bad} of {n} runs (see summary.md)", True
    return f"{n} of {n} runs reproduce their saved predictions and metrics{merged}", False


def headline(status: pd.DataFrame, verdicts: pd.DataFrame, runs: pd.DataFrame | None = None) -> dict[str, str]:
    """Short strings for the report's landing page and the Overview entry's labels."""
    planned = status[status.planned] if "planned" in status else status
    n = len(planned)
    counts = planned.status.value_counts()
    done = int(counts.get("completed", 0) + counts.get("stopped_early", 0))
    bad = int(counts.get("failed", 0) + counts.get("missing", 0))
    finished = f"{done} of {n} finished ({int(counts.get('stopped_early', 0))} stopped early), {bad} failed or missing"
    return {"page": "study overview", "runs": finished, "checks": checks_text(runs)[0],
            "H1": _verdict_counts(verdicts.h1_verdict) if not verdicts.empty else "no verdict yet",
            "H2": _verdict_counts(verdicts.h2_verdict) if not verdicts.empty else "no verdict yet"}


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Compact per-task verdicts: difference with CI, H1 and H2 with the number they rest on."""
    def ci(r, mean, lo, hi):
        if mean not in r or (not isinstance(r[mean], str) and pd.isna(r[mean])):
            return "n/a"
        text = r[mean] if isinstance(r[mean], str) else fmt(r[mean])
        if lo in r and hi in r and pd.notna(r[lo]) and pd.notna(r[hi]):
            text += f" [{fmt(r[lo])}, {fmt(r[hi])}]"
        return text

    rows = []
    for _, r in verdicts.iterrows():
        row = {"task": r.get("task"), "metric": r.get("metric"),
               "LoRA − full (CI)": ci(r, "lora_minus_full", "diff_ci_low", "diff_ci_high"),
               "H1": r.get("h1_verdict")}
        if "h1_relative_drop" in r:
            row["relative drop"] = r.get("h1_relative_drop")
        row["H2"] = r.get("h2_verdict")
        if "h2_drift_reduction" in r:
            row["drift reduction"] = r.get("h2_drift_reduction")
        rows.append(row)
    return pd.DataFrame(rows)


def _setup_html(study: Mapping) -> str:
    model = study.get("model", {}) or {}
    tasks = study.get("tasks", []) or []
    task_defs = study.get("task_defs", {}) or {}
    grid = study.get("grid", {}) or {}
    lora = study.get("lora", {}) or {}
    parts = [f"<p><b>Model</b>: <code>{_e(model.get('name_or_path'))}</code> ({_e(model.get('family', ''))})</p>"]
    trows = [{"task": t, "type": task_defs.get(t, {}).get("type", ""),
              "main metric": task_defs.get(t, {}).get("main_metric", "")} for t in tasks]
    parts.append("<p><b>Tasks</b></p>" + html_table(pd.DataFrame(trows)))
    lrs = grid.get("learning_rates", {})
    grows = []
    for method in METHODS:
        for kind, values in (lrs.get(method) or {}).items():
            grows.append({"method": method_name(method), "task kind": kind,
                          "learning rates": ", ".join(norm_lr(v) for v in values)})
    parts.append("<p><b>Grid</b>: batch sizes " + _e(", ".join(map(str, grid.get("batch_sizes", [])))) +
                 "; seeds " + _e(", ".join(map(str, grid.get("seeds", [])))) + "</p>" + html_table(pd.DataFrame(grows)))
    if lora:
        parts.append("<p><b>LoRA</b>: " + _e(", ".join(f"{k} = {v}" for k, v in lora.items())) + "</p>")
    return "\n".join(parts)


def overview_page(runs: pd.DataFrame | None, best: pd.DataFrame | None, summary_md: str | None,
                  verdicts: pd.DataFrame | None, study: Mapping, planned: Sequence[Mapping] | None) -> tuple[str, dict]:
    """(HTML of the Overview page, headline dict)."""
    status = run_status(runs, planned)
    if verdicts is None or verdicts.empty:
        verdicts = parse_verdicts(summary_md)
    head = headline(status, verdicts, runs)
    checks, alarm = checks_text(runs)
    analysis = study.get("analysis", {}) or {}
    h1 = analysis.get("h1_max_relative_drop")
    h2 = analysis.get("h2_min_drift_reduction")
    conf = analysis.get("confidence", 0.95)
    body = ["<h1>ftdrift — how full fine-tuning and LoRA change a model's representations</h1>",
            "<h2>Study question</h2>",
            "<p>When a pretrained language model is fine-tuned on a task, how far do its layer representations move "
            "away from the base model's, and does LoRA move them less than full fine-tuning while reaching "
            "comparable task performance? Drift of a layer = 1 − linear CKA between the base and the fine-tuned "
            "model's representations of a fixed probe set (0 = unchanged).</p><ul>"
            f"<li><b>H1</b>: LoRA's validation main metric is at most {fmt(100 * h1 if h1 is not None else None, 3)} % "
            "(relative) below full fine-tuning's.</li>"
            f"<li><b>H2</b>: LoRA's drift (mean over layers at the final snapshot) is at least "
            f"{fmt(100 * h2 if h2 is not None else None, 3)} % lower than full fine-tuning's.</li></ul>",
            "<h2>Headline</h2>",
            f'<div class="kpi">Runs<b>{_e(head["runs"])}</b></div>',
            f'<div class="kpi{" alarm" if alarm else ""}">Checkpoint validation<b>{_e(checks)}</b></div>',
            f'<div class="kpi">H1 (LoRA within tolerance)<b>{_e(head["H1"])}</b></div>',
            f'<div class="kpi">H2 (LoRA drifts less)<b>{_e(head["H2"])}</b></div>']
    if verdicts is not None and not verdicts.empty:
        body.append(html_table(verdict_table(verdicts), badges=("H1", "H2")))
    body += ["<h2>Setup</h2>", _setup_html(study)]
    planned_only = status[status.planned]
    body.append("<h2>Runs</h2>")
    if not planned_only.empty:
        pivot = planned_only.assign(n=1).pivot_table(index=["task", "method"], columns="status", values="n",
                                                     aggfunc="sum", fill_value=0, sort=False).reset_index()
        for s in ("completed", "stopped_early", "failed", "missing"):
            if s not in pivot:
                pivot[s] = 0
        pivot = pivot[["task", "method", "completed", "stopped_early", "failed", "missing"]]
        pivot.columns = ["task", "method", "completed", "stopped early", "failed", "missing"]
        body.append(html_table(pivot))
    problems = status[status.status.isin(NOT_COMPLETED) | ~status.planned]
    body.append("<p><b>Runs that did not complete normally</b> "
                "(stopped early = the early-stopping rule ended training before the step budget; "
                "missing = planned but no result, i.e. failed or not run yet)</p>")
    body.append(html_table(problems[RUN_KEYS + ["status"]], badges=("status",)))
    if best is not None and not best.empty:
        cols = [c for c in ("task", "method", "lr", "batch_size", "main_metric", "n_seeds", "val_mean", "val_ci_low",
                            "val_ci_high", "drift_mean", "trainable_fraction") if c in best]
        body += ["<h2>Chosen settings</h2>",
                 f'<p class="muted">Chosen on dev; validation mean and {int(round(100 * conf))} % CI over seeds.</p>',
                 html_table(best[cols])]
    body.append("<h2>All runs</h2>")
    body.append(html_table(status[RUN_KEYS + ["status"]], badges=("status",)))
    if summary_md:
        body += ["<h2>summary.md</h2>", f"<details><summary>as written by the aggregate step</summary>"
                 f"{markdown_to_html(summary_md)}</details>"]
    return html_page("ftdrift overview", "\n".join(body)), head


# --------------------------------------------------------------------------- rule outputs


def _write_text(path, text: str) -> None:
    io.write_text(path, text)


def _out_dir(path):
    """Fresh directory output (Snakemake's directory(): it must not be stale)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _combos(drift: pd.DataFrame | None, task: str) -> list[tuple[str, str]]:
    if drift is None or drift.empty:
        return []
    sub = drift[drift.task == task]
    return sorted({(m, p) for m, p in zip(sub.metric, sub.pooling)})


def overview_outputs(inputs: Mapping, outputs: Mapping, params: Mapping) -> None:
    runs = read_table(inputs["runs"])
    best = read_table(inputs["best"])
    verdicts = read_table(inputs.get("verdicts"), required=False) if inputs.get("verdicts") else None
    summary = Path(inputs["summary"]).read_text() if inputs.get("summary") else None
    page, head = overview_page(runs, best, summary, verdicts, params.get("study", {}), params.get("planned"))
    _write_text(outputs["page"], page)
    io.write_json(outputs["headline"], head)


def performance_outputs(inputs: Mapping, outputs: Mapping, params: Mapping) -> None:
    runs, best = read_table(inputs["runs"]), read_table(inputs["best"])
    tasks = params.get("tasks")
    plot_validation(runs, best, outputs["validation"], tasks, params.get("confidence", 0.95))
    table = performance_table(runs, best)
    io.write_csv(outputs["table_csv"], table)
    _write_text(outputs["table_html"], html_page(
        "Chosen settings", "<h1>Validation performance of the chosen settings</h1>"
        f"<p class=\"muted\">Mean, standard deviation and {int(round(100 * params.get('confidence', 0.95)))} % CI "
        "over seeds; drift = mean over layers of 1 − linear CKA at the final snapshot.</p>" + html_table(table)))
    io.write_csv(outputs["grid_csv"], grid_table(runs, best))
    grid_dir = _out_dir(outputs["grid"])
    for task in tasks:
        plot_grid(runs, best, task, grid_dir / f"{task}.svg")
    if "qa" in outputs:
        qa_dir = _out_dir(outputs["qa"])
        tables = [plot_qa_breakdown(runs, best, task, qa_dir / f"{task}.svg") for task in params.get("qa_tasks", [])]
        io.write_csv(outputs["qa_csv"], pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


def drift_outputs(inputs: Mapping, outputs: Mapping, params: Mapping, wildcards: Mapping) -> None:
    task = wildcards["task"]
    drift = read_table(inputs["drift"])
    drift = drift[drift.task == task] if not drift.empty else drift
    runs, best = read_table(inputs["runs"]), read_table(inputs["best"])
    dirs = {k: _out_dir(outputs[k]) for k in ("heatmaps", "by_layer", "over_training", "vs_metric")}
    combos = _combos(drift, task)
    for metric, pooling in combos:
        name = Path(metric) / f"{pooling}.svg"
        for key in dirs:
            (dirs[key] / metric).mkdir(exist_ok=True)
        plot_drift_heatmaps(drift, runs, best, task, metric, pooling, dirs["heatmaps"] / name)
        plot_drift_by_layer(drift, runs, best, task, metric, pooling, dirs["by_layer"] / name)
        plot_drift_over_training(drift, runs, best, task, metric, pooling, dirs["over_training"] / name)
        plot_metric_vs_drift(drift, runs, best, task, metric, pooling, dirs["vs_metric"] / name)
    io.write_csv(outputs["table"], layer_drift_table(drift, runs, best, task))


def weights_outputs(inputs: Mapping, outputs: Mapping, params: Mapping) -> None:
    weights = read_table(inputs.get("weights"), required=False)
    best = read_table(inputs.get("best"), required=False)
    rank_dir, intruder_dir = _out_dir(outputs["effective_rank"]), _out_dir(outputs["intruders"])
    tables = []
    for task in params.get("tasks", []):
        plot_weight_by_layer(weights, best, task, "effective_rank", rank_dir / f"{task}.svg", params.get("lora_rank"))
        plot_weight_by_layer(weights, best, task, "intruder_dims", intruder_dir / f"{task}.svg")
        tables.append(weight_table(weights, best, task))
    io.write_csv(outputs["table"], pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


def training_outputs(inputs: Mapping, outputs: Mapping, params: Mapping, wildcards: Mapping) -> None:
    task = wildcards["task"]
    runs = read_table(inputs["runs"])
    main_metric = params.get("main_metric")
    info = {}
    if runs is not None and not runs.empty:
        for _, r in runs[runs.task == task].iterrows():
            info[_run_key(r)] = r.to_dict()
    out_dir = _out_dir(outputs["runs"])
    logs = {}
    log_paths = [inputs["logs"]] if isinstance(inputs["logs"], (str, os.PathLike)) else list(inputs["logs"])
    for run, log_path in zip(params["runs"], log_paths):
        run = {**run, "lr": norm_lr(run["lr"]), "batch_size": int(run["batch_size"]), "seed": int(run["seed"])}
        key = tuple(run[k] for k in RUN_KEYS)
        log = read_train_log(log_path)
        logs[key] = log
        run_info = info.get(key, {"status": "missing"})
        name = Path(run["method"]) / f"lr{run['lr']}_bs{run['batch_size']}_seed{run['seed']}.svg"
        (out_dir / run["method"]).mkdir(exist_ok=True)
        plot_run_diagnostics(log, run, run_info, out_dir / name, main_metric)
    plot_task_training(logs, runs, task, outputs["all_runs"], main_metric)


KINDS = {"overview": overview_outputs, "performance": performance_outputs, "drift": drift_outputs,
         "weights": weights_outputs, "training": training_outputs}


def run(kind: str, inputs: Mapping, outputs: Mapping, params: Mapping, wildcards: Mapping | None = None) -> None:
    """Entry point of workflow/scripts/plots.py."""
    func = KINDS[kind]
    if kind in ("drift", "training"):
        func(inputs, outputs, params, wildcards or {})
    else:
        func(inputs, outputs, params)


# --------------------------------------------------------------------------- glue for rules/report.smk

REPORT_DIR = "results/report"
_RUN_LABEL_CACHE: dict[tuple, dict] = {}


def run_entry_labels(planned: Sequence[Mapping], runs_csv, wildcards) -> dict[str, str]:
    """Labels of one run's report entry (task, method, lr, batch size, seed, status).

    Computed for all runs at once (labels are only safe as a set, see `safe_labels`), once per
    version of runs.csv.
    """
    path = str(runs_csv)
    stamp = (path, os.path.getmtime(path), len(planned))
    if stamp not in _RUN_LABEL_CACHE:
        _RUN_LABEL_CACHE[stamp] = run_labels(planned, read_table(path))
    w = {k: str(getattr(wildcards, k)) for k in ("task", "method", "lr", "batch_size", "seed")}
    key = f"{w['task']}/{w['method']}/lr{w['lr']}_bs{w['batch_size']}_seed{w['seed']}"
    fallback = {"task": w["task"], "method": w["method"], "lr": w["lr"], "batch size": w["batch_size"],
                "seed": w["seed"], "status": "not in the current grid"}
    return _RUN_LABEL_CACHE[stamp].get(key, fallback)


def read_headline(path) -> dict[str, str]:
    """Labels of the Overview entry (read by the report at render time)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"page": "study overview"}
    keys = [k for k in HEADLINE_KEYS if k in data] + sorted(k for k in data if k not in HEADLINE_KEYS)
    return {str(k): str(data[k]) for k in keys}  # label columns in this order

