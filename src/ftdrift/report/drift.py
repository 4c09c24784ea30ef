"""Drift figures and table of one task: layer x step heatmaps, final-step drift by layer, drift over
training, validation metric vs drift.

Drift = 1 - similarity for similarity metrics (linear / debiased CKA, cosine), the distance
itself for Procrustes: 0 = unchanged, larger = further from the base model (core.drift_metrics).

The seed floor (results/tables/seed_floor.csv) is the same metric between two runs of one setting
that differ only in their seed, in the same drift units: drift below it is within seed-to-seed
variation. It needs at least two usable seeds of the chosen setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from ftdrift.analysis.tables import chosen_runs
from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info, to_drift
from ftdrift.report.frames import (
    best_row,
    method_name,
    method_order,
    read_table,
    run_key,
    scale_note,
    setting_text,
    status_lookup,
    status_of,
)
from ftdrift.report.style import (
    HEATMAP_CMAP,
    MISSING_COLOR,
    empty_axes,
    empty_figure,
    fresh_dir,
    layer_ticks,
    marker_kw,
    method_color,
    method_handles,
    panel_grid,
    save,
    shared_limits,
    short_layer_name,
    status_legend_handles,
)
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS

FIGURES = ("heatmaps", "by_layer", "over_training", "vs_metric")  # one folder of <metric>/<pooling>.svg each
HEATMAP_COLUMNS = 3  # heatmap panels per row: one panel per method


def _methods(frame: pd.DataFrame | None) -> list[str]:
    """The methods of `frame`'s rows in the report's method order (frames.configure_methods)."""
    return method_order(set(frame.method)) if frame is not None and not frame.empty else []


def write_drift(*, drift, run_drift, runs, best, task: str, outputs: Mapping, seed_floor=None,
                drift_by_layer=None) -> None:
    """Rule report_drift: the task's four figures per metric x pooling, and its final-step table.
    `run_drift`: run_drift.csv (aggregate's per-run drift scores).

    `seed_floor` (seed_floor.csv) adds the seed floor to the by-layer and over-training figures and
    the table; `drift_by_layer` (drift_by_layer.csv) adds the probe-bootstrap interval to the table.
    Either may be None (or absent): the figures then say the floor is not available.
    """
    drift = read_table(drift)
    drift = drift[drift.task == task] if not drift.empty else drift
    runs, best, scores = read_table(runs), read_table(best), read_table(run_drift)
    floor = read_table(seed_floor, required=False)
    by_layer = read_table(drift_by_layer, required=False)
    dirs = {k: fresh_dir(outputs[k]) for k in FIGURES}
    for metric, pooling in _combos(drift, task):
        name = Path(metric) / f"{pooling}.svg"
        for key in dirs:
            (dirs[key] / metric).mkdir(exist_ok=True)
        plot_drift_heatmaps(drift, runs, best, task, metric, pooling, dirs["heatmaps"] / name)
        plot_drift_by_layer(drift, runs, best, task, metric, pooling, dirs["by_layer"] / name, floor=floor)
        plot_drift_over_training(drift, runs, best, task, metric, pooling, dirs["over_training"] / name, floor=floor)
        plot_metric_vs_drift(scores, runs, best, task, metric, pooling, dirs["vs_metric"] / name)
    io.write_csv(outputs["table"], layer_drift_table(drift, runs, best, task, floor=floor, by_layer=by_layer))


FLOOR_NOTE = "seed floor needs ≥ 2 seeds"
FLOOR_COLUMNS = ["floor_step", "floor_n_pairs", "floor_drift_mean", "floor_drift_min", "floor_drift_max"]


def floor_drift(seed_floor: pd.DataFrame | None, best: pd.DataFrame | None, task: str, metric: str | None = None,
                pooling: str | None = None) -> pd.DataFrame:
    """The chosen settings' seed floor of `task` in drift units, every step (optionally one metric x pooling).

    Columns: task, method, lr, batch_size, step, layer, layer_name, pooling, metric, n_pairs,
    floor_drift (drift of the mean similarity between seeds: 1 − value for a similarity, the
    distance itself otherwise), floor_drift_min, floor_drift_max (the pair extremes, ordered as drift).
    Empty when seed_floor.csv has no row of a chosen setting (fewer than 2 seeds).
    """
    cols = SETTING_KEYS + ["step", "layer", "layer_name", "pooling", "metric", "n_pairs", "final", "floor_drift",
                           "floor_drift_min", "floor_drift_max"]
    if seed_floor is None or seed_floor.empty or best is None or best.empty:
        return pd.DataFrame(columns=cols)
    sub = seed_floor[seed_floor.task == task]
    if metric is not None:
        sub = sub[sub.metric == metric]
    if pooling is not None:
        sub = sub[sub.pooling == pooling]
    sub = sub.merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)
    if sub.empty:
        return pd.DataFrame(columns=cols)
    out = sub.copy()
    out["floor_drift"] = [to_drift(m, v) for m, v in zip(out.metric, out.value.astype(float))]
    lo = np.array([to_drift(m, v) for m, v in zip(out.metric, out.value_min.astype(float))], dtype=float)
    hi = np.array([to_drift(m, v) for m, v in zip(out.metric, out.value_max.astype(float))], dtype=float)
    # 1 − s reverses the order: the most similar pair is the smallest drift
    out["floor_drift_min"], out["floor_drift_max"] = np.fmin(lo, hi), np.fmax(lo, hi)
    return out[cols].reset_index(drop=True)


def final_floor(floor: pd.DataFrame) -> pd.DataFrame:
    """The floor rows over each seed pair at its own last common snapshot (seed_floor.csv's `final`)."""
    if floor.empty:
        return floor
    return floor[floor.final.astype(bool)]


def per_step_floor(floor: pd.DataFrame) -> pd.DataFrame:
    """The floor rows per snapshot step (seed_floor.csv's rows that are not `final`)."""
    if floor.empty:
        return floor
    return floor[~floor.final.astype(bool)]


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
    for method in _methods(sub):
        msub = sub[sub.method == method]
        if not msub.empty:
            out[method] = msub.pivot_table(index="layer", columns="step", values="value", aggfunc="mean").sort_index()
    return out


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
    """Layer x step heatmaps of the metric, one panel per method (every configured one, in the
    report's order, HEATMAP_COLUMNS to a row; a method without data says so) on ONE colour scale.

    Returns the shared (vmin, vmax).
    """
    info = metric_info(metric)
    mats = heatmap_matrices(drift, best, task, metric, pooling, runs)
    vmin, vmax = shared_limits(mats.values())
    norm = Normalize(vmin=vmin, vmax=vmax)
    names = layer_names(drift_slice(drift, task, metric, pooling))
    n_layers = max((len(m) for m in mats.values()), default=1)
    methods = method_order(set(method_order()) | set(mats))
    fig, axes = panel_grid(max(1, len(methods)), HEATMAP_COLUMNS, 5.0, max(3.4, 0.22 * n_layers + 2.0))
    if not methods:
        empty_axes(axes[0], "no drift data")
    image = None
    cmap = plt.get_cmap(HEATMAP_CMAP).with_extremes(bad=MISSING_COLOR)
    for ax, method in zip(axes, methods):
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
        bar = fig.colorbar(image, ax=list(axes), shrink=0.9, pad=0.02)
        bar.set_label(info.value_label)
    fig.suptitle(f"{task}: {info.name} per layer and training step ({pooling} pooling; grey = no snapshot)")
    save(fig, path)
    return vmin, vmax


def layer_drift_table(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                      floor: pd.DataFrame | None = None, by_layer: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final-snapshot drift per layer (chosen settings): mean, min and max over seeds, all metrics/poolings.

    With `floor` (seed_floor.csv): the chosen setting's seed floor at its last step in drift units
    (floor_step, floor_n_pairs, floor_drift_mean/min/max; NaN where fewer than 2 seeds) and
    drift_above_floor = drift_mean − floor_drift_mean. With `by_layer` (drift_by_layer.csv, the
    H2 metric x pooling only): probe_drift_ci_low/high, the bootstrap interval over probe examples
    of the mean value, in drift units (NaN for other metrics/poolings).
    """
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
    out = _with_floor(out, final_floor(floor_drift(floor, best, task)))
    out = _with_probe_ci(out, by_layer)
    return out.sort_values(["method", "metric", "pooling", "layer"]).reset_index(drop=True)


def _with_floor(table: pd.DataFrame, floor: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "method", "lr", "batch_size", "metric", "pooling", "layer"]
    fl = floor.rename(columns={"step": "floor_step", "n_pairs": "floor_n_pairs", "floor_drift": "floor_drift_mean"})
    table = table.merge(fl[keys + FLOOR_COLUMNS], on=keys, how="left") if not fl.empty else \
        table.assign(**{c: np.nan for c in FLOOR_COLUMNS})
    table["drift_above_floor"] = table.drift_mean - table.floor_drift_mean.astype(float)
    return table


def _with_probe_ci(table: pd.DataFrame, by_layer: pd.DataFrame | None) -> pd.DataFrame:
    keys = ["task", "method", "metric", "pooling", "layer"]
    if by_layer is None or by_layer.empty or not {"probe_ci_low", "probe_ci_high"} <= set(by_layer):
        return table.assign(probe_drift_ci_low=np.nan, probe_drift_ci_high=np.nan)
    ci = by_layer[keys + ["probe_ci_low", "probe_ci_high"]].copy()
    lo = np.array([to_drift(m, v) for m, v in zip(ci.metric, ci.probe_ci_low.astype(float))], dtype=float)
    hi = np.array([to_drift(m, v) for m, v in zip(ci.metric, ci.probe_ci_high.astype(float))], dtype=float)
    ci["probe_drift_ci_low"], ci["probe_drift_ci_high"] = np.fmin(lo, hi), np.fmax(lo, hi)
    return table.merge(ci[keys + ["probe_drift_ci_low", "probe_drift_ci_high"]], on=keys, how="left")


def plot_drift_by_layer(drift: pd.DataFrame, runs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                        metric: str, pooling: str, path, floor: pd.DataFrame | None = None) -> None:
    """Final-snapshot drift vs layer: mean over seeds with a min–max band, every method on one axis.

    With `floor` (seed_floor.csv): each method's seed floor at its last step as a dotted line
    (drift units: 1 − mean similarity between seeds) with a hatched min–max band over seed pairs;
    a method without one (fewer than 2 seeds) is named in the title with FLOOR_NOTE.
    """
    info = metric_info(metric)
    sub = final_step(_chosen_drift(drift_slice(drift, task, metric, pooling), best, runs))
    if sub.empty:
        return empty_figure(path, f"{task}: final-step drift by layer", "no drift data")
    sub = sub.assign(drift=to_drift(metric, sub.value))
    names = layer_names(sub)
    status = status_lookup(runs)
    fig, ax = plt.subplots(figsize=(7.4, 4.0), layout="constrained")
    any_early = False
    for method in _methods(sub):
        msub = sub[sub.method == method]
        stats = msub.groupby("layer")["drift"].agg(["mean", "min", "max"]).sort_index()
        n = msub.seed.nunique()
        color = method_color(method)
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
    fin_floor = final_floor(floor_drift(floor, best, task, metric, pooling))
    no_floor = []
    for method in _methods(sub):
        fsub = fin_floor[fin_floor.method == method].sort_values("layer")
        if fsub.empty:
            no_floor.append(method_name(method))
            continue
        color = method_color(method)
        ax.fill_between(fsub.layer, fsub.floor_drift_min, fsub.floor_drift_max, facecolor="none", edgecolor=color,
                        hatch="///", alpha=0.45, lw=0)
        ax.plot(fsub.layer, fsub.floor_drift, ls=":", marker="s", ms=3, color=color, lw=1.8,
                label=f"seed floor, {method_name(method)} (step {int(fsub.step.max())}, "
                      f"{int(fsub.n_pairs.max())} seed pair{'s' if int(fsub.n_pairs.max()) != 1 else ''})")
    layer_ticks(ax, sorted(sub.layer.unique()), names)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"{info.drift_label} at final step")
    ax.set_ylim(bottom=min(0.0, float(sub.drift.min())))
    handles, _ = ax.get_legend_handles_labels()
    if len(no_floor) < len(set(sub.method)):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="none", edgecolor="#777777", hatch="///",
                                     label="seed floor band: min–max over seed pairs"))
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="band: min–max over seeds"))
    handles.append(Line2D([], [], color="#777777", lw=0.8, label="single seed"))
    if any_early:
        handles.append(Line2D([], [], color="#777777", lw=0.8, ls="--", label="seed stopped early"))
    ax.legend(handles=handles, loc="upper left", frameon=False)
    title = f"{task}: drift from the base model at the final snapshot ({pooling} pooling)"
    if no_floor:
        title += f"\n{' and '.join(no_floor)}: no seed floor ({FLOOR_NOTE})"
    ax.set_title(title)
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
                             metric: str, pooling: str, path, floor: pd.DataFrame | None = None) -> None:
    """Drift vs step for the first, middle and last block; mean over seeds with min–max band.

    With `floor` (seed_floor.csv) holding the chosen setting: its seed floor per step as a dotted
    line in the method's colour; otherwise the figure says FLOOR_NOTE.
    """
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
    fl = per_step_floor(floor_drift(floor, best, task, metric, pooling))
    methods = _methods(sub)
    no_floor = [method_name(m) for m in methods if fl[fl.method == m].empty]
    for ax, layer, label in zip(axes[0], layers, which):
        lsub = sub[sub.layer == layer]
        for method in methods:
            msub = lsub[lsub.method == method]
            if msub.empty:
                continue
            stats = msub.groupby("step")["drift"].agg(["mean", "min", "max"]).sort_index()
            color = method_color(method)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.22, lw=0)
            ax.plot(stats.index, stats["mean"], "-", color=color, lw=2, label=method_name(method))
            fsub = fl[(fl.method == method) & (fl.layer == layer)].sort_values("step")
            if not fsub.empty:
                ax.plot(fsub.step, fsub.floor_drift, ls=":", color=color, lw=1.8)
            for _, ssub in msub.groupby("seed"):
                if status.get(run_key(ssub.iloc[0])) == "stopped_early":
                    early_seen = True
                    end = ssub.sort_values("step").iloc[-1]
                    ax.plot([end.step], [end.drift], **marker_kw(method, "stopped_early", 7))
        ax.set_title(f"{label + ' block: ' if label else ''}{short_layer_name(names.get(layer, str(layer)), layer)}")
        ax.set_xlabel("optimizer step")
    axes[0][0].set_ylabel(info.drift_label)
    handles = method_handles(methods)
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if len(no_floor) < len(methods):
        handles.append(Line2D([], [], color="#555555", ls=":", lw=1.8, label="seed floor: same setting, other seed"))
    if early_seen:
        handles.append(Line2D([], [], **{**marker_kw(methods[0], "stopped_early", 7), "mec": "#555555"},
                              label="last snapshot of a seed that stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    title = f"{task}: drift over training, chosen settings ({pooling} pooling)"
    if no_floor:
        title += f"\n{' and '.join(no_floor)}: no seed floor ({FLOOR_NOTE})"
    fig.suptitle(title)
    save(fig, path)


def plot_metric_vs_drift(run_drift: pd.DataFrame, runs: pd.DataFrame, best: pd.DataFrame | None, task: str,
                         metric: str, pooling: str, path) -> None:
    """Every run of a task: validation main metric vs drift (run_drift.csv's score for `metric` x
    `pooling`); colour = method, hollow = stopped early."""
    info = metric_info(metric)
    per_run = (run_drift[(run_drift.task == task) & (run_drift.metric == metric) & (run_drift.pooling == pooling)][
        RUN_KEYS + ["drift"]] if run_drift is not None and not run_drift.empty
        else pd.DataFrame(columns=RUN_KEYS + ["drift"]))
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
    handles = method_handles(_methods(data))
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
