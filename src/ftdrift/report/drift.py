"""Drift figures and table of one task: layer x step heatmaps, final-step drift by layer, drift over
training, validation metric vs drift.

Drift = 1 - similarity for similarity metrics (linear / debiased CKA, cosine), the distance
itself for Procrustes: 0 = unchanged, larger = further from the base model (core.drift_metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info, to_drift
from ftdrift.report.frames import (
    best_row,
    chosen_runs,
    method_name,
    read_table,
    run_key,
    scale_note,
    setting_text,
    status_lookup,
    status_of,
)
from ftdrift.report.style import (
    HEATMAP_CMAP,
    METHOD_COLOR,
    MISSING_COLOR,
    empty_axes,
    empty_figure,
    fresh_dir,
    layer_ticks,
    marker_kw,
    method_handles,
    save,
    short_layer_name,
    status_legend_handles,
)
from ftdrift.study.grid import METHODS, RUN_KEYS, SETTING_KEYS

FIGURES = ("heatmaps", "by_layer", "over_training", "vs_metric")  # one folder of <metric>/<pooling>.svg each


def write_drift(*, drift, runs, best, task: str, outputs: Mapping) -> None:
    """Rule report_drift: the task's four figures per metric x pooling, and its final-step table."""
    drift = read_table(drift)
    drift = drift[drift.task == task] if not drift.empty else drift
    runs, best = read_table(runs), read_table(best)
    dirs = {k: fresh_dir(outputs[k]) for k in FIGURES}
    for metric, pooling in _combos(drift, task):
        name = Path(metric) / f"{pooling}.svg"
        for key in dirs:
            (dirs[key] / metric).mkdir(exist_ok=True)
        plot_drift_heatmaps(drift, runs, best, task, metric, pooling, dirs["heatmaps"] / name)
        plot_drift_by_layer(drift, runs, best, task, metric, pooling, dirs["by_layer"] / name)
        plot_drift_over_training(drift, runs, best, task, metric, pooling, dirs["over_training"] / name)
        plot_metric_vs_drift(drift, runs, best, task, metric, pooling, dirs["vs_metric"] / name)
    io.write_csv(outputs["table"], layer_drift_table(drift, runs, best, task))


def drift_slice(drift: pd.DataFrame, task: str, metric: str, pooling: str) -> pd.DataFrame:
    if drift is None or drift.empty:
        return pd.DataFrame(columns=RUN_KEYS + ["step", "layer", "layer_name", "value"])
    return drift[(drift.task == task) & (drift.metric == metric) & (drift.pooling == pooling)]


def _chosen_drift(drift_sub: pd.DataFrame, best: pd.DataFrame | None, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Drift rows of the chosen settings' runs that enter the means (diverged seeds left out, as in best.csv)."""
    if best is None or best.empty or drift_sub.empty:
        return drift_sub
    if runs is not None and not runs.empty:
        return drift_sub.merge(chosen_runs(runs, best)[RUN_KEYS], on=RUN_KEYS)
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


def heatmap_matrices(drift: pd.DataFrame, best: pd.DataFrame | None, task: str, metric: str, pooling: str,
                     runs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """method -> layer x step matrix of the metric (mean over the chosen setting's seeds)."""
    sub = _chosen_drift(drift_slice(drift, task, metric, pooling), best, runs)
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
    status = status_of(seeds)
    note = f"n={len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    early = int((status == "stopped_early").sum())
    if early:
        note += f", {early} stopped early"
    everyone = chosen_runs(runs, best, usable_only=False)
    diverged = int(((everyone.task == task) & (everyone.method == method) & (status_of(everyone) == "diverged")).sum())
    if diverged:
        note += f"; {diverged} diverged, left out"
    return note


def plot_drift_heatmaps(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                        metric: str, pooling: str, path) -> tuple[float, float]:
    """Layer x step heatmaps of the metric, full and LoRA side by side on ONE colour scale.

    Returns the shared (vmin, vmax).
    """
    info = metric_info(metric)
    mats = heatmap_matrices(drift, best, task, metric, pooling, runs)
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
            empty_axes(ax, "no drift data")
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
        layer_ticks(ax, list(range(len(mat.index))), {i: names.get(l, str(l)) for i, l in enumerate(mat.index)},
                     axis="y", max_ticks=16)
        ax.set_xlabel("optimizer step (snapshot)")
        ax.set_ylabel("layer")
        ax.grid(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9, pad=0.02)
        bar.set_label(info.value_label)
    fig.suptitle(f"{task}: {info.name} per layer and training step ({pooling} pooling; grey = no snapshot)")
    save(fig, path)
    return vmin, vmax


def layer_drift_table(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str
                      ) -> pd.DataFrame:
    """Final-snapshot drift per layer (chosen settings): mean, min and max over seeds, all metrics/poolings."""
    if drift is None or drift.empty:
        return pd.DataFrame()
    sub = _chosen_drift(drift[drift.task == task], best, runs)
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


def plot_drift_by_layer(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                        metric: str, pooling: str, path) -> None:
    """Final-snapshot drift vs layer: mean over seeds with a min–max band, both methods on one axis."""
    info = metric_info(metric)
    sub = final_step(_chosen_drift(drift_slice(drift, task, metric, pooling), best, runs))
    if sub.empty:
        return empty_figure(path, f"{task}: final-step drift by layer", "no drift data")
    sub = sub.assign(drift=to_drift(metric, sub.value))
    names = layer_names(sub)
    status = status_lookup(runs)
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
            key = run_key(ssub.iloc[0])
            early = status.get(key) == "stopped_early"
            any_early |= early
            ssub = ssub.sort_values("layer")
            ax.plot(ssub.layer, ssub.drift, ls="--" if early else "-", color=color, lw=0.8, alpha=0.6)
    layer_ticks(ax, sorted(sub.layer.unique()), names)
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
    save(fig, path)


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
    sub = _chosen_drift(drift_slice(drift, task, metric, pooling), best, runs)
    if sub.empty:
        return empty_figure(path, f"{task}: drift over training", "no drift data")
    sub = sub.assign(drift=to_drift(metric, sub.value))
    names = layer_names(sub)
    layers = pick_layers(sub.layer.unique())
    status = status_lookup(runs)
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
                if status.get(run_key(ssub.iloc[0])) == "stopped_early":
                    early_seen = True
                    end = ssub.sort_values("step").iloc[-1]
                    ax.plot([end.step], [end.drift], **marker_kw(method, "stopped_early", 7))
        ax.set_title(f"{label + ' block: ' if label else ''}{short_layer_name(names.get(layer, str(layer)), layer)}")
        ax.set_xlabel("optimizer step")
    axes[0][0].set_ylabel(info.drift_label)
    handles = method_handles([m for m in METHODS if m in set(sub.method)])
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if early_seen:
        handles.append(Line2D([], [], **{**marker_kw("full", "stopped_early", 7), "mec": "#555555"},
                              label="last snapshot of a seed that stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{task}: drift over training, chosen settings ({pooling} pooling)")
    save(fig, path)


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
    data = data.assign(_status=status_of(data))
    chosen = set(map(tuple, chosen_runs(rsub, best)[RUN_KEYS].to_numpy().tolist())) if best is not None else set()
    fig, ax = plt.subplots(figsize=(6.2, 4.4), layout="constrained")
    statuses, hidden = set(), 0
    for _, r in data.iterrows():
        if pd.isna(r.drift) or pd.isna(r.val_main):
            hidden += 1
            continue
        statuses.add(r._status)
        kw = marker_kw(r.method, r._status, size=8)
        if run_key(r) in chosen:
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
    save(fig, path)


def _combos(drift: pd.DataFrame | None, task: str) -> list[tuple[str, str]]:
    if drift is None or drift.empty:
        return []
    sub = drift[drift.task == task]
    return sorted({(m, p) for m, p in zip(sub.metric, sub.pooling)})
