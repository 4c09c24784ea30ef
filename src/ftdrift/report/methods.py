"""The Methods section: every method against the reference method, and what each one costs.

Reads results/tables/methods.csv and method_closeness.csv (ftdrift.analysis.method_comparison):
* ranking: per task, the final similarity to the reference at every layer (one line per compared
  method), and its mean over layers against the trainable parameters, with each method's rank
  (1 = closest to the reference);
* Pareto view: per task, the validation metric against trainable parameters, drift from the base
  model and forgetting; methods on the task's Pareto front (all objectives at once) are ringed, and
  each panel's own two-objective front is a dashed line.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.analysis.method_comparison import pareto_front
from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info
from ftdrift.report.frames import (
    method_label,
    method_name,
    method_order,
    read_table,
    reference_method,
    scale_note,
)
from ftdrift.report.html import html_page, html_table
from ftdrift.report.style import (
    empty_axes,
    empty_figure,
    method_color,
    method_handles,
    panel_grid,
    save,
)

NO_COMPARISON = "no method has a seed in common with the reference's chosen setting yet"
# (methods.csv column, axis label, higher is better) of the Pareto view's x axes; y = validation metric
PARETO_PANELS = (("trainable_params", "trainable parameters (log scale)", False),
                 ("drift_mean", "drift from the base model (mean over layers)", False),
                 ("forgetting_probe_drop", "forgetting: frozen-probe drop on the other tasks", False))


def write_methods(*, methods, closeness, outputs: Mapping) -> None:
    """Rule report_methods: ranking (SVG), pareto (SVG) and table (HTML view of both tables)."""
    table = read_table(methods, required=False)
    close = read_table(closeness, required=False)
    plot_ranking(table, close, outputs["ranking"])
    plot_pareto(table, outputs["pareto"])
    io.write_text(outputs["table"], methods_page(table, close))


def _tasks(table: pd.DataFrame | None) -> list[str]:
    return list(dict.fromkeys(table.task)) if table is not None and not table.empty else []


def ranking_order(table: pd.DataFrame, task: str) -> list[str]:
    """The task's compared methods by closeness rank (1 first), unranked ones last in report order."""
    rows = table[(table.task == task) & ~table.is_reference.astype(bool)]
    order = method_order(set(rows.method))
    rank = dict(zip(rows.method, pd.to_numeric(rows.closeness_rank, errors="coerce")))
    return sorted(order, key=lambda m: (np.isnan(rank[m]), rank[m] if np.isfinite(rank[m]) else 0, order.index(m)))


def plot_ranking(table: pd.DataFrame | None, closeness: pd.DataFrame | None, path) -> None:
    """Per task: final similarity to the reference by layer, and its layer mean vs trainable parameters."""
    title = "Closeness to the reference method"
    tasks = _tasks(table)
    if not tasks or closeness is None or closeness.empty:
        return empty_figure(path, title, NO_COMPARISON if tasks else "no chosen settings yet (best.csv is empty)")
    metric, pooling = str(closeness.metric.iloc[0]), str(closeness.pooling.iloc[0])
    name = metric_info(metric).name
    fig, axes = panel_grid(2 * len(tasks), 2, 5.0, 3.6)
    for row, task in enumerate(tasks):
        by_layer, vs_params = axes[2 * row], axes[2 * row + 1]
        sub = closeness[closeness.task == task]
        order = ranking_order(table, task)
        if sub.empty:
            empty_axes(by_layer, NO_COMPARISON)
            empty_axes(vs_params, NO_COMPARISON)
            continue
        for method in order:
            lines = sub[sub.method == method].sort_values("layer")
            if lines.empty:
                continue
            by_layer.plot(lines.layer, lines.value_mean, "-o", ms=3, lw=1.8, color=method_color(method))
            by_layer.fill_between(lines.layer, lines.value_min, lines.value_max, color=method_color(method),
                                  alpha=0.15, lw=0)
        names = dict(zip(sub.layer, sub.layer_name))
        ticks = sorted(names)[:: max(1, int(np.ceil(len(names) / 10)))]
        by_layer.set_xticks(ticks, [str(names[t]) for t in ticks], rotation=45, ha="right", fontsize=7.5)
        by_layer.set_ylabel(f"{name} to the reference ({pooling})")
        by_layer.set_title(f"{task}: final {name} by layer (band: min–max over seeds)")
        _ranking_scatter(vs_params, table[table.task == task], order, name)
    fig.legend(handles=method_handles([reference_method()] + order if reference_method() else order),
               loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(f"{title} ({method_name(reference_method() or 'reference')}): each method's final "
                 f"representations, same seed, {name} ({'1' if metric_info(metric).similarity else '0'} = same)")
    save(fig, path)


def _ranking_scatter(ax, rows: pd.DataFrame, order: list[str], name: str) -> None:
    """Mean similarity over layers against trainable parameters, each point labelled '#rank method'."""
    drawn = False
    for method in order:
        r = rows[rows.method == method]
        if r.empty:
            continue
        x, y = float(r.trainable_params.iloc[0]), float(r.similarity_mean.iloc[0])
        if not (np.isfinite(x) and np.isfinite(y)) or x <= 0:
            continue
        rank = r.closeness_rank.iloc[0]
        ax.plot([x], [y], "o", ms=8, color=method_color(method), mec="black", mew=0.6)
        ax.annotate(f"#{int(rank)} {method_name(method)}" if pd.notna(rank) else method_name(method), (x, y),
                    xytext=(5, 4), textcoords="offset points", fontsize=8)
        drawn = True
    ref = rows[rows.is_reference.astype(bool)]
    if not ref.empty and pd.notna(ref.trainable_params.iloc[0]) and float(ref.trainable_params.iloc[0]) > 0:
        ax.axvline(float(ref.trainable_params.iloc[0]), color=method_color(ref.method.iloc[0]), ls=":", lw=1.4)
    if not drawn:
        return empty_axes(ax, "no trainable-parameter count or similarity for these methods")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale; dotted: the reference's)")
    ax.set_ylabel(f"mean {name} over layers")
    ax.set_title("closeness (#1 = closest) vs cost")


def plot_pareto(table: pd.DataFrame | None, path) -> None:
    """Per task, validation metric (y) against trainable parameters, drift and forgetting (x)."""
    title = "Methods: validation metric against cost, drift and forgetting"
    tasks = _tasks(table)
    if not tasks:
        return empty_figure(path, title, "no chosen settings yet (best.csv is empty)")
    fig, axes = panel_grid(len(PARETO_PANELS) * len(tasks), len(PARETO_PANELS), 3.9, 3.5)
    for row, task in enumerate(tasks):
        rows = table[table.task == task]
        metric = str(rows.main_metric.iloc[0]) if "main_metric" in rows else ""
        for col, (x_col, label, _) in enumerate(PARETO_PANELS):
            ax = axes[len(PARETO_PANELS) * row + col]
            _pareto_panel(ax, rows, x_col, label)
            ax.set_ylabel(f"{task}: validation {metric} {scale_note(rows.val_mean)}".strip() if col == 0 else "")
    handles = method_handles(method_order(set(table.method)))
    handles += [Line2D([], [], marker="o", ms=13, mfc="none", mec="black", mew=1.6, ls="none",
                       label="on the task's Pareto front (all objectives)"),
                Line2D([], [], color="#555555", ls="--", lw=1.2, label="front of this panel's two axes")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(f"{title} (chosen settings, mean over seeds; bars: CI)")
    save(fig, path)


def _pareto_panel(ax, rows: pd.DataFrame, x_col: str, label: str) -> None:
    """One panel: a point per method with the validation CI, ringed when on the task's front."""
    x = pd.to_numeric(rows[x_col], errors="coerce")
    y = pd.to_numeric(rows.val_mean, errors="coerce")
    ok = x.notna() & y.notna() & ((x > 0) if x_col == "trainable_params" else True)
    if not ok.any():
        return empty_axes(ax, f"no {label.split(' (')[0]} measured")
    for i in rows.index[ok]:
        r = rows.loc[i]
        lo, hi = r.get("val_ci_low"), r.get("val_ci_high")
        yerr = [[max(y[i] - lo, 0)], [max(hi - y[i], 0)]] if pd.notna(lo) and pd.notna(hi) else None
        ax.errorbar([x[i]], [y[i]], yerr=yerr, fmt="o", ms=7, color=method_color(r.method), mec="black", mew=0.5,
                    capsize=3)
        if str(r.get("pareto")).lower() == "true":
            ax.plot([x[i]], [y[i]], "o", ms=14, mfc="none", mec="black", mew=1.4)
    front = pareto_front(np.column_stack([y[ok], x[ok]]), [True, False])
    pts = sorted(zip(x[ok][front], y[ok][front]))
    if len(pts) > 1:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="#555555", lw=1.2, zorder=1)
    if x_col == "trainable_params":
        ax.set_xscale("log")
    ax.set_xlabel(label)


def methods_page(table: pd.DataFrame | None, closeness: pd.DataFrame | None) -> str:
    """HTML: methods.csv (one row per task x method) and the closeness by layer, methods as columns."""
    body = ["<h1>Methods compared with the reference method</h1>"]
    if table is None or table.empty:
        return html_page("Methods", "\n".join(body + [f"<p>{NO_COMPARISON}</p>"]))
    shown = table.assign(method=[method_label(m) for m in table.method])
    body += ['<p class="muted">Chosen settings, mean over seeds. closeness_rank: 1 = closest to the reference '
             "(mean over layers of the final similarity, same seed); pareto: on the task's Pareto front over "
             "the objectives listed (validation metric up; trainable parameters, drift and forgetting down).</p>",
             html_table(shown)]
    if closeness is not None and not closeness.empty:
        wide = closeness.pivot_table(index=["task", "layer", "layer_name"], columns="method", values="value_mean",
                                     sort=False).reset_index()
        wide = wide[["task", "layer", "layer_name"] + method_order(set(closeness.method))]
        body += [f"<h2>Final {metric_info(str(closeness.metric.iloc[0])).name} to the reference by layer "
                 f"({closeness.pooling.iloc[0]} pooling, mean over seeds)</h2>", html_table(wide)]
    return html_page("Methods", "\n".join(body))
