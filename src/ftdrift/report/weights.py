"""Weight-space figures and tables: effective rank, energy rank and intruder dimensions of ΔW per layer
and module type, the intruder sweep over top-k x ε (Shuttleworth et al. 2024), and the intruder
intervention (validation metric and forgetting vs the scale λ of the intruder directions). Every
configured method is drawn in its colour (ftdrift.report.style.method_color)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.analysis.tables import usable
from ftdrift.core import io
from ftdrift.report.frames import method_order, read_table
from ftdrift.report.style import (
    CYCLE,
    empty_figure,
    fresh_dir,
    method_color,
    method_handles,
    panel_grid,
    save,
)
from ftdrift.study.grid import SETTING_KEYS


def write_weights(*, weights, best, tasks: Sequence[str], ranks: Mapping[str, int] | None = None, outputs: Mapping,
                  intruders=None, settings: Mapping | None = None) -> None:
    """Rule report_weights: per task, the rank figure (effective rank and energy rank of ΔW), the headline
    intruder figure and the intruder-sweep figure; one by-layer table and one sweep table for all tasks.

    `weights`, `best`, `intruders`: paths of results/tables/weights.csv, best.csv, intruders.csv (each may be
    absent: the figures then say so). `settings`: the config's weights section (delta_energy names the energy
    rank, intruder_epsilon / intruder_top_k mark the headline point). `ranks`: {method: adapter rank r}
    (ftdrift.study.methods.Method.rank; drawn as a dotted line). `outputs` keys: effective_rank,
    intruders, table (required), intruder_sweep (directory) and sweep_table (CSV) (optional).
    """
    settings = dict(settings or {})
    weights, best = read_table(weights, required=False), read_table(best, required=False)
    sweep = read_table(intruders, required=False)
    rank_dir, intruder_dir = fresh_dir(outputs["effective_rank"]), fresh_dir(outputs["intruders"])
    sweep_dir = fresh_dir(outputs["intruder_sweep"]) if outputs.get("intruder_sweep") else None
    tables, sweep_tables = [], []
    for task in tasks:
        plot_weight_by_layer(weights, best, task, "effective_rank", rank_dir / f"{task}.svg", ranks,
                             delta_energy=settings.get("delta_energy"))
        plot_weight_by_layer(weights, best, task, "intruder_dims", intruder_dir / f"{task}.svg")
        tables.append(weight_table(weights, best, task))
        if sweep_dir is not None:
            plot_intruder_sweep(sweep, best, task, sweep_dir / f"{task}.svg", settings)
        sweep_tables.append(intruder_sweep_table(sweep, best, task))
    io.write_csv(outputs["table"], pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())
    if outputs.get("sweep_table"):
        io.write_csv(outputs["sweep_table"],
                     pd.concat(sweep_tables, ignore_index=True) if sweep_tables else pd.DataFrame())


WEIGHT_VALUES = {"effective_rank": "effective rank of ΔW", "stable_rank": "stable rank of ΔW",
                 "intruder_dims": "intruder dimensions (count)",
                 "rank_energy": "rank holding the energy share of ΔW"}


def _chosen(frame: pd.DataFrame, best: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """A task's rows of the chosen settings (best.csv), diverged runs left out as in best.csv; every
    setting's rows when best.csv has none for it. `matrix` (the module type, e.g. q_proj) is added from
    the module's last name part where a table lacks it."""
    sub = usable(frame[frame.task == task])
    if best is not None and not best.empty:
        chosen = sub.merge(best[SETTING_KEYS].drop_duplicates(), on=SETTING_KEYS)
        sub = chosen if not chosen.empty else sub
    if "matrix" not in sub:
        sub = sub.assign(matrix=sub["module"].astype(str).str.rsplit(".", n=1).str[-1])
    return sub


def weight_table(weights: pd.DataFrame | None, best: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """Chosen settings' weight diagnostics per method x module type (matrix) x module x layer: mean/min/max
    over seeds of each of WEIGHT_VALUES present (rank_energy included), and n_seeds."""
    if weights is None or weights.empty:
        return pd.DataFrame()
    sub = _chosen(weights, best, task)
    keys = ["task", "method", "lr", "batch_size", "matrix", "module", "layer"]
    rows = []
    values = [v for v in WEIGHT_VALUES if v in sub]
    for group_keys, group in sub.groupby(keys, sort=False):
        row = dict(zip(keys, group_keys), n_seeds=group.seed.nunique())
        for v in values:
            row[f"{v}_mean"] = group[v].mean()
            row[f"{v}_min"] = group[v].min()
            row[f"{v}_max"] = group[v].max()
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "matrix", "layer"]).reset_index(drop=True) if rows \
        else pd.DataFrame()


def _energy_label(delta_energy) -> str:
    share = f"{float(delta_energy):.0%}" if delta_energy is not None else "the configured share"
    return f"rank holding {share} of ‖ΔW‖²_F"


def plot_weight_by_layer(weights: pd.DataFrame | None, best: pd.DataFrame | None, task: str, value: str, path,
                         ranks: Mapping[str, int] | None = None, delta_energy: float | None = None) -> None:
    """Per module type: a ΔW diagnostic vs layer, one colour per method (mean over seeds, min–max band).

    For value 'effective_rank' the energy rank (rank_energy, dashed) is drawn in the same panels when the
    table has it: the two ranks of one update side by side, both bounded by an adapter's rank r
    (`ranks`: {method: r}, dotted lines in the method's colour, for the methods drawn).
    """
    label = WEIGHT_VALUES.get(value, value)
    table = weight_table(weights, best, task)
    if table.empty or f"{value}_mean" not in table:
        return empty_figure(path, f"{task}: {label}", "no weight-space diagnostics (results/tables/weights.csv)")
    with_energy = value == "effective_rank" and "rank_energy_mean" in table
    series = [(value, "-", "o", 0.22)] + ([("rank_energy", "--", "s", 0.12)] if with_energy else [])
    matrices = sorted(table.matrix.unique())
    drawn_ranks = {m: int(r) for m, r in (ranks or {}).items() if r and m in set(table.method)} \
        if value == "effective_rank" else {}
    # at least ~8 in wide: the legend (methods, ranks, band, r) must fit below two panels
    fig, axes = panel_grid(len(matrices), 4, max(3.4, 8.0 / min(len(matrices), 4)), 3.3, sharey=True)
    for ax, matrix in zip(axes, matrices):
        msub = table[table.matrix == matrix]
        for method in method_order(table.method):
            s = msub[msub.method == method].sort_values("layer")
            if s.empty:
                continue
            color = method_color(method)
            for column, ls, marker, alpha in series:
                ax.fill_between(s.layer, s[f"{column}_min"], s[f"{column}_max"], color=color, alpha=alpha, lw=0)
                ax.plot(s.layer, s[f"{column}_mean"], ls=ls, marker=marker, ms=3.5, color=color, lw=1.8)
        for method, rank in drawn_ranks.items():
            ax.axhline(rank, color=method_color(method), ls=":", lw=1.2)
        ax.set_title(matrix)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("rank of ΔW" if with_energy else label)
    handles = method_handles(method_order(table.method))
    if with_energy:
        handles += [Line2D([], [], color="#555555", ls="-", marker="o", ms=3.5, label="effective rank"),
                    Line2D([], [], color="#555555", ls="--", marker="s", ms=3.5, label=_energy_label(delta_energy))]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    handles += [Line2D([], [], color=method_color(m), ls=":", label=f"{m}: rank r = {r}") for m, r in drawn_ranks.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), frameon=False)
    fig.suptitle(f"{task}: {'ranks of ΔW' if with_energy else label} per layer and module type (chosen settings)")
    save(fig, path)


SWEEP_TABLE_KEYS = ["task", "method", "lr", "batch_size", "matrix", "k", "epsilon"]


def intruder_sweep_table(intruders: pd.DataFrame | None, best: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """Chosen settings' intruder sweep per method x module type (matrix) x k x ε.

    Each seed's count is first averaged over layers (intruders per matrix of that type); columns:
    task, method, lr, batch_size, matrix, k, epsilon, intruders_mean (mean over layers and seeds),
    intruders_min / intruders_max (min / max over seeds of the layer mean), n_seeds, n_layers.
    """
    if intruders is None or intruders.empty:
        return pd.DataFrame()
    sub = _chosen(intruders, best, task)
    if sub.empty:
        return pd.DataFrame()
    per_seed = sub.groupby(SWEEP_TABLE_KEYS + ["seed"], as_index=False).agg(
        intruders=("intruders", "mean"), n_layers=("layer", "nunique"))
    table = per_seed.groupby(SWEEP_TABLE_KEYS, as_index=False).agg(
        intruders_mean=("intruders", "mean"), intruders_min=("intruders", "min"),
        intruders_max=("intruders", "max"), n_seeds=("seed", "nunique"), n_layers=("n_layers", "max"))
    return table.sort_values(["method", "matrix", "k", "epsilon"]).reset_index(drop=True)


def plot_intruder_sweep(intruders: pd.DataFrame | None, best: pd.DataFrame | None, task: str, path,
                        settings: Mapping | None = None) -> None:
    """Intruder dimensions vs ε, one line per top-k: a row per module type, the methods side by side.

    The mean over layers and seeds of the chosen settings (band: min–max over seeds of the layer mean);
    the headline point (weights.intruder_epsilon, dotted vertical line) is the ε of the other figures.
    """
    table = intruder_sweep_table(intruders, best, task)
    title = f"{task}: intruder dimensions over ε and top-k"
    if table.empty:
        return empty_figure(path, title, "no intruder sweep (results/tables/intruders.csv)")
    matrices = sorted(table.matrix.unique())
    methods = method_order(table.method)
    ks = sorted(table.k.unique())
    colors = {k: CYCLE[i % len(CYCLE)] for i, k in enumerate(ks)}
    headline = (settings or {}).get("intruder_epsilon")
    fig, axes = plt.subplots(len(matrices), len(methods), figsize=(max(3.6 * len(methods), 7.0), 3.0 * len(matrices)),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for r, matrix in enumerate(matrices):
        for c, method in enumerate(methods):
            ax = axes[r, c]
            panel = table[(table.matrix == matrix) & (table.method == method)]
            for k in ks:
                s = panel[panel.k == k].sort_values("epsilon")
                if s.empty:
                    continue
                ax.fill_between(s.epsilon, s.intruders_min, s.intruders_max, color=colors[k], alpha=0.15, lw=0)
                ax.plot(s.epsilon, s.intruders_mean, "-o", ms=3.5, lw=1.8, color=colors[k])
            if headline is not None:
                ax.axvline(float(headline), color="#555555", ls=":", lw=1.0)
            ax.set_title(f"{matrix} — {method}", color=method_color(method))
            if r == len(matrices) - 1:
                ax.set_xlabel("threshold ε on max |cosine|")
            if c == 0:
                ax.set_ylabel("intruder dimensions\n(mean over layers, seeds)")
    handles = [Line2D([], [], color=colors[k], marker="o", ms=3.5, lw=1.8, label=f"top k = {k}") for k in ks]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if headline is not None:
        handles.append(Line2D([], [], color="#555555", ls=":", label=f"headline ε = {headline}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(f"{title} per module type (chosen settings)")
    save(fig, path)


INTERVENTION_TABLE_KEYS = ["task", "method", "measure", "probe_task", "metric", "lambda"]


def intervention_table(table: pd.DataFrame | None) -> pd.DataFrame:
    """results/tables/intruder_intervention.csv per task x method x measurement x λ: value_mean / min / max
    over the runs measured (one chosen run each, as the job chooses), baseline (the base model's value),
    n_intruders (intruder directions over the adapted matrices). Empty without rows."""
    if table is None or table.empty:
        return pd.DataFrame()
    frame = table.assign(probe_task=table.probe_task.fillna("")) if "probe_task" in table else table
    return frame.groupby(INTERVENTION_TABLE_KEYS, as_index=False, sort=False).agg(
        value_mean=("value", "mean"), value_min=("value", "min"), value_max=("value", "max"),
        baseline=("baseline", "mean"), n_intruders=("n_intruders", "max"), n_runs=("seed", "nunique"))


def plot_intruder_intervention(table: pd.DataFrame | None, path) -> None:
    """Per task: the validation metric (left) and forgetting (right: LM loss, or probe transfer per other
    task) against λ, the scale of the intruder directions (λ = 1: the trained adapter, 0: intruders
    removed), one colour per method; forgetting's base-model value as a grey dotted line."""
    frame = intervention_table(table)
    title = "intruder intervention: validation metric and forgetting vs λ"
    if frame.empty:
        return empty_figure(path, title, "no intruder intervention (results/tables/intruder_intervention.csv)")
    tasks = list(dict.fromkeys(frame.task))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9.0, 3.2 * len(tasks)), squeeze=False, layout="constrained")
    styles = ["-", "--", "-.", ":"]
    for row, task in enumerate(tasks):
        sub = frame[frame.task == task]
        validation, forgetting = sub[sub.measure == "validation"], sub[sub.measure != "validation"]
        for ax, part in ((axes[row, 0], validation), (axes[row, 1], forgetting)):
            keys = list(dict.fromkeys(zip(part.measure, part.probe_task)))
            for method in method_order(part.method):
                for i, (measure, probe) in enumerate(keys):
                    s = part[(part.method == method) & (part.measure == measure) & (part.probe_task == probe)]
                    s = s.sort_values("lambda")
                    if s.empty:
                        continue
                    ax.plot(s["lambda"], s.value_mean, ls=styles[i % len(styles)], marker="o", ms=3.5, lw=1.8,
                            color=method_color(method))
                    if s.baseline.notna().any() and method == method_order(part.method)[0]:
                        ax.axhline(float(s.baseline.iloc[0]), color="#777777", ls=":", lw=1.0)
            ax.set_xlabel("λ (scale of the intruder directions)")
            ax.invert_xaxis()  # from the trained adapter (1) to intruders removed (0)
            if part.empty:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#777777")
            else:
                metric = part.metric.iloc[0]
                label = {"lm_loss": "LM loss (nats), base head"}.get(metric, metric)
                what = "validation" if part is validation else ("forgetting: " + ", ".join(
                    f"{m} {p}".strip() for m, p in keys))
                ax.set_ylabel(label)
                ax.set_title(f"{task}: {what}", fontsize=9)
    handles = method_handles(method_order(frame.method))
    handles.append(Line2D([], [], color="#777777", ls=":", label="base model (forgetting measures)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), frameon=False)
    fig.suptitle(title)
    save(fig, path)


def write_intruder_intervention(*, table, outputs: Mapping) -> None:
    """Rule report_weights (or a report rule of its own): the intervention figure (outputs['figure'],
    SVG) and its table (outputs['table'], CSV, `intervention_table`) from
    results/tables/intruder_intervention.csv (`table`, a path; may be absent: the figure says so)."""
    frame = read_table(table, required=False)
    plot_intruder_intervention(frame, outputs["figure"])
    io.write_csv(outputs["table"], intervention_table(frame))
