"""Forgetting: what fine-tuning on one task does to everything else, beside what it gains on its own task.

Reads results/tables/forgetting.csv (one row per run: in-task gain over the frozen-base linear
probe, out-of-task drift, frozen-probe drop on the other classification tasks, the base LM head's
perplexity on generic text), out_of_task.csv (per run, probe task and layer: the H2 metric between
the base and the fine-tuned model on another task's probe set) and probe_transfer.csv (per run and
probe task: the frozen probe's metric on base vs fine-tuned features). Diverged, failed and missing
runs are left out of the figures and listed in the table. The comparison of forgetting against
in-task gain follows Biderman et al. 2024 ("LoRA learns less and forgets less").
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.analysis.tables import chosen_runs, usable
from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info, to_drift
from ftdrift.report.frames import (
    method_name,
    method_order,
    read_table,
    sort_key,
    status_of,
)
from ftdrift.report.html import escape, fmt, html_page, html_table
from ftdrift.report.style import (
    empty_axes,
    empty_figure,
    layer_ticks,
    method_color,
    method_handles,
    panel_grid,
    save,
)
from ftdrift.study.grid import RUN_KEYS

TASK_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h")
PROBE_STYLES = ("-", "--", ":", "-.")
TABLE_COLUMNS = RUN_KEYS + ["status", "val_main", "in_task_gain", "out_of_task_drift", "probe_drop", "lm_status",
                            "lm_base_perplexity", "lm_finetuned_perplexity", "lm_perplexity_ratio", "lm_reason"]
SCATTER_PANELS = (("out_of_task_drift", "out-of-task drift", "mean over other tasks and layers"),
                  ("probe_drop", "frozen-probe drop on other tasks", "base − fine-tuned (higher = more lost)"),
                  ("lm_perplexity_ratio", "LM perplexity on generic text", "fine-tuned / base; 1 = unchanged"))


def write_forgetting(*, forgetting, out_of_task, probe_transfer, best, metric: str, pooling: str,
                     outputs: Mapping) -> None:
    """Rule report_forgetting: scatter (SVG), out-of-task drift by layer (SVG), table page (HTML) and CSV.

    `metric`, `pooling`: the H2 drift metric and pooling (analysis.h2_metric / h2_pooling) the
    by-layer figure shows. The CSV has TABLE_COLUMNS (forgetting.csv plus lm_perplexity_ratio =
    fine-tuned / base perplexity), one row per run.
    """
    table = forgetting_table(read_table(forgetting))
    oot = read_table(out_of_task, required=False)
    transfer = read_table(probe_transfer, required=False)
    best = read_table(best, required=False)
    plot_forgetting_scatter(table, outputs["scatter"])
    plot_out_of_task_by_layer(oot, table, best, metric, pooling, outputs["by_layer"])
    io.write_text(outputs["table_html"], forgetting_page(table, transfer))
    io.write_csv(outputs["table_csv"], table)


def forgetting_table(forgetting: pd.DataFrame | None) -> pd.DataFrame:
    """forgetting.csv in the grid's order with lm_perplexity_ratio added; columns TABLE_COLUMNS.

    Raises ValueError naming the missing columns when forgetting.csv lacks part of its contract.
    """
    if forgetting is None or forgetting.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    need = [c for c in TABLE_COLUMNS if c != "lm_perplexity_ratio"]
    missing = [c for c in need if c not in forgetting]
    if missing:
        raise ValueError(f"results/tables/forgetting.csv: missing columns {missing}")
    table = forgetting.copy()
    base = pd.to_numeric(table.lm_base_perplexity, errors="coerce")
    tuned = pd.to_numeric(table.lm_finetuned_perplexity, errors="coerce")
    table["lm_perplexity_ratio"] = tuned / base
    table = table.sort_values(RUN_KEYS, key=sort_key, kind="stable")
    return table[TABLE_COLUMNS].reset_index(drop=True)


def lm_note(table: pd.DataFrame) -> str | None:
    """'LM perplexity not measured: <reason>' when lm_status is 'skipped' for every run; None otherwise."""
    if table is None or table.empty:
        return None
    status = table.lm_status.fillna("skipped").astype(str)
    if not status.eq("skipped").all():
        return None
    reasons = sorted({str(r) for r in table.lm_reason if isinstance(r, str) and r.strip()})
    return "LM perplexity not measured: " + ("; ".join(reasons) if reasons else "no reason recorded")


def _left_out(table: pd.DataFrame) -> str:
    status = status_of(table)
    counts = status[~status.isin(("completed", "stopped_early"))].value_counts()
    if counts.empty:
        return ""
    return "left out: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def plot_forgetting_scatter(table: pd.DataFrame, path) -> None:
    """Per run: forgetting (out-of-task drift, probe drop, LM perplexity ratio) vs in-task gain.

    Colour = method, marker shape = fine-tuning task, hollow = stopped early; diverged, failed
    and missing runs are left out (counted in the title). The LM panel says why when no run
    measured perplexity.
    """
    title = "Forgetting vs in-task gain, every run"
    runs = usable(table) if not table.empty else table
    if runs.empty:
        return empty_figure(path, title, "no usable runs in results/tables/forgetting.csv")
    tasks = list(dict.fromkeys(runs.task))
    marker = {t: TASK_MARKERS[i % len(TASK_MARKERS)] for i, t in enumerate(tasks)}
    fig, axes = panel_grid(len(SCATTER_PANELS), 3, 4.4, 3.9)
    note = lm_note(table)
    for ax, (col, label, unit) in zip(axes, SCATTER_PANELS):
        ax.set_title(label)
        data = runs[pd.to_numeric(runs[col], errors="coerce").notna() & runs.in_task_gain.notna()]
        if data.empty:
            reason = note if col == "lm_perplexity_ratio" and note else (
                "no other classification task: the probe drop needs one" if col == "probe_drop"
                else f"no run has {col}")
            empty_axes(ax, textwrap.fill(reason, 38))
            continue
        for _, r in data.iterrows():
            color = method_color(r.method)
            hollow = r.status == "stopped_early"
            ax.plot([r.in_task_gain], [float(r[col])], ls="none", marker=marker[r.task], ms=7, mec=color,
                    mfc="white" if hollow else color, mew=1.4, alpha=0.9)
        if col == "lm_perplexity_ratio":
            ax.axhline(1.0, color="#777777", lw=0.8, ls="--")
        ax.axvline(0.0, color="#777777", lw=0.8, ls="--")
        ax.set_xlabel("in-task gain, share of the metric's range\n(validation main metric − frozen-base probe)")
        ax.set_ylabel(unit)
    handles = method_handles(method_order(runs.method))
    handles += [Line2D([], [], ls="none", marker=marker[t], ms=7, mfc="#555555", mec="#555555", label=f"task {t}")
                for t in tasks]
    if (runs.status == "stopped_early").any():
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="#555555", label="stopped early"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    extra = [t for t in (_left_out(table), note) if t]
    fig.suptitle(title + ("\n" + "; ".join(extra) if extra else ""))
    save(fig, path)


def out_of_task_drift(oot: pd.DataFrame | None, table: pd.DataFrame, best: pd.DataFrame | None, metric: str,
                      pooling: str) -> tuple[pd.DataFrame, str, str]:
    """Chosen settings' usable runs: out-of-task drift per task x method x probe task x layer, mean over seeds.

    Uses `metric` x `pooling` where out_of_task.csv has them, else its first metric x pooling.
    Returns (frame with columns task, method, probe_task, layer, layer_name, drift, n_seeds; metric; pooling).
    """
    cols = ["task", "method", "probe_task", "layer", "layer_name", "drift", "n_seeds"]
    if oot is None or oot.empty:
        return pd.DataFrame(columns=cols), metric, pooling
    combos = sorted({(m, p) for m, p in zip(oot.metric, oot.pooling)})
    if (metric, pooling) not in combos:
        metric, pooling = combos[0]
    sub = oot[(oot.metric == metric) & (oot.pooling == pooling)]
    if not table.empty:  # diverged / failed runs out; runs forgetting.csv does not list stay in
        bad = table[~status_of(table).isin(("completed", "stopped_early"))][RUN_KEYS]
        sub = sub.merge(bad.assign(_bad=True), on=RUN_KEYS, how="left")
        sub = sub[sub._bad.isna()].drop(columns="_bad")
    if best is not None and not best.empty:
        sub = chosen_runs(sub, best, usable_only=False)
    if sub.empty:
        return pd.DataFrame(columns=cols), metric, pooling
    sub = sub.assign(drift=to_drift(metric, sub.value.astype(float)))
    out = sub.groupby(["task", "method", "probe_task", "layer", "layer_name"], sort=False).agg(
        drift=("drift", "mean"), n_seeds=("seed", "nunique")).reset_index()
    return out[cols], metric, pooling


def plot_out_of_task_by_layer(oot: pd.DataFrame | None, table: pd.DataFrame, best: pd.DataFrame | None,
                              metric: str, pooling: str, path) -> None:
    """Per fine-tuning task: out-of-task drift vs layer, colour = method, line style = probe task."""
    data, metric, pooling = out_of_task_drift(oot, table, best, metric, pooling)
    info = metric_info(metric)
    title = "Out-of-task drift by layer: the fine-tuned model on the other tasks' probe sets"
    if data.empty:
        return empty_figure(path, title, "no out-of-task drift (results/tables/out_of_task.csv has no rows "
                                         "of the chosen settings; a study with one task has no other task)")
    tasks = list(dict.fromkeys(data.task))
    probes = sorted(data.probe_task.unique())
    style = {p: PROBE_STYLES[i % len(PROBE_STYLES)] for i, p in enumerate(probes)}
    names = {int(l): str(n) for l, n in data[["layer", "layer_name"]].drop_duplicates("layer").to_numpy()}
    fig, axes = panel_grid(len(tasks), 3, 4.4, 3.6, sharey=True)
    for ax, task in zip(axes, tasks):
        tsub = data[data.task == task]
        for method in method_order(tsub.method):
            for probe in probes:
                s = tsub[(tsub.method == method) & (tsub.probe_task == probe)].sort_values("layer")
                if not s.empty:
                    ax.plot(s.layer, s.drift, ls=style[probe], marker="o", ms=3, lw=1.8, color=method_color(method))
        n = tsub.groupby("method").n_seeds.max()
        ax.set_title(f"fine-tuned on {task}\n" + ", ".join(f"{method_name(m)} n={int(n[m])}"
                                                         for m in method_order(tsub.method) if m in n))
        layer_ticks(ax, sorted(tsub.layer.unique()), names)
        ax.set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel(f"{info.drift_label}\non another task's probe set")
    handles = method_handles(method_order(data.method))
    handles += [Line2D([], [], color="#555555", ls=style[p], lw=1.8, label=f"probe set: {p}") for p in probes]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    fig.suptitle(f"{title}\n{info.name}, {pooling} pooling, final snapshot; mean over the chosen setting's seeds")
    save(fig, path)


def forgetting_page(table: pd.DataFrame, transfer: pd.DataFrame | None) -> str:
    """HTML: the LM note (when no run measured perplexity), the per-run table, the probe-transfer table."""
    body = ["<h1>Forgetting: out-of-task drift, frozen-probe transfer and language modelling</h1>",
            '<p class="muted">in-task gain = validation main metric − the task\'s frozen-base linear probe; '
            "out-of-task drift = mean over the other tasks' probe sets and layers of the H2 drift; probe drop = "
            "frozen probe's metric on base − on fine-tuned features, mean over the other classification tasks; "
            "gain and drop as shares of their metric's range (1 for accuracy and F1, 2 for Matthews correlation, "
            "100 for SQuAD's percentages), so that tasks share one axis; "
            "LM perplexity of the base model's language-modelling head on generic text (families with one).</p>"]
    note = lm_note(table)
    if note:
        body.append(f"<p><b>{escape(note)}</b></p>")
    elif not table.empty:
        ok = table[table.lm_status == "ok"]
        body.append(f"<p>LM perplexity measured for {len(ok)} of {len(table)} runs"
                    + (f"; base model {fmt(ok.lm_base_perplexity.iloc[0])}" if not ok.empty else "") + ".</p>")
    body += ["<h2>Per run</h2>", html_table(table, badges=("status",))]
    body.append("<h2>Frozen-probe transfer</h2>")
    if transfer is None or transfer.empty:
        body.append('<p class="muted">No probe transfer rows (results/tables/probe_transfer.csv is empty: '
                    "no other classification task).</p>")
    else:
        wanted = RUN_KEYS + ["probe_task", "layer", "pooling", "metric", "base", "finetuned", "drop", "status",
                             "reason"]
        cols = [c for c in wanted if c in transfer]
        body.append(html_table(transfer[cols].sort_values(RUN_KEYS, key=sort_key, kind="stable")))
    return html_page("ftdrift forgetting", "\n".join(body))

