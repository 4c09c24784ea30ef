"""Weight-space figures and tables: effective rank, energy rank and intruder dimensions of ΔW per layer
and module type, and the intruder sweep over top-k x ε (Shuttleworth et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.core import io
from ftdrift.report.frames import method_name, read_table, usable
from ftdrift.report.style import CYCLE, METHOD_COLOR, empty_figure, fresh_dir, method_handles, panel_grid, save
from ftdrift.study.grid import METHODS, SETTING_KEYS


def write_weights(*, weights, best, tasks: Sequence[str], lora_rank: int | None = None, outputs: Mapping,
                  intruders=None, settings: Mapping | None = None) -> None:
    """Rule report_weights: per task, the rank figure (effective rank and energy rank of ΔW), the headline
    intruder figure and the intruder-sweep figure; one by-layer table and one sweep table for all tasks.

    `weights`, `best`, `intruders`: paths of results/tables/weights.csv, best.csv, intruders.csv (each may be
    absent: the figures then say so). `settings`: the config's weights section (delta_energy names the energy
    rank, intruder_epsilon / intruder_top_k mark the headline point). `outputs` keys: effective_rank,
    intruders, table (required), intruder_sweep (directory) and sweep_table (CSV) (optional).
    """
    settings = dict(settings or {})
    weights, best = read_table(weights, required=False), read_table(best, required=False)
    sweep = read_table(intruders, required=False)
    rank_dir, intruder_dir = fresh_dir(outputs["effective_rank"]), fresh_dir(outputs["intruders"])
    sweep_dir = fresh_dir(outputs["intruder_sweep"]) if outputs.get("intruder_sweep") else None
    tables, sweep_tables = [], []
    for task in tasks:
        plot_weight_by_layer(weights, best, task, "effective_rank", rank_dir / f"{task}.svg", lora_rank,
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
                         lora_rank: int | None = None, delta_energy: float | None = None) -> None:
    """Per module type: a ΔW diagnostic vs layer, full vs LoRA (mean over seeds, min–max band).

    For value 'effective_rank' the energy rank (rank_energy, dashed) is drawn in the same panels when the
    table has it: the two ranks of one update side by side, both bounded by the LoRA rank r.
    """
    label = WEIGHT_VALUES.get(value, value)
    table = weight_table(weights, best, task)
    if table.empty or f"{value}_mean" not in table:
        return empty_figure(path, f"{task}: {label}", "no weight-space diagnostics (results/tables/weights.csv)")
    with_energy = value == "effective_rank" and "rank_energy_mean" in table
    series = [(value, "-", "o", 0.22)] + ([("rank_energy", "--", "s", 0.12)] if with_energy else [])
    matrices = sorted(table.matrix.unique())
    # at least ~8 in wide: the legend (methods, ranks, band, r) must fit below two panels
    fig, axes = panel_grid(len(matrices), 4, max(3.4, 8.0 / min(len(matrices), 4)), 3.3, sharey=True)
    for ax, matrix in zip(axes, matrices):
        msub = table[table.matrix == matrix]
        for method in METHODS:
            s = msub[msub.method == method].sort_values("layer")
            if s.empty:
                continue
            color = METHOD_COLOR[method]
            for column, ls, marker, alpha in series:
                ax.fill_between(s.layer, s[f"{column}_min"], s[f"{column}_max"], color=color, alpha=alpha, lw=0)
                ax.plot(s.layer, s[f"{column}_mean"], ls=ls, marker=marker, ms=3.5, color=color, lw=1.8)
        if value == "effective_rank" and lora_rank:
            ax.axhline(lora_rank, color=METHOD_COLOR["lora"], ls=":", lw=1.2)
        ax.set_title(matrix)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("rank of ΔW" if with_energy else label)
    handles = method_handles([m for m in METHODS if m in set(table.method)])
    if with_energy:
        handles += [Line2D([], [], color="#555555", ls="-", marker="o", ms=3.5, label="effective rank"),
                    Line2D([], [], color="#555555", ls="--", marker="s", ms=3.5, label=_energy_label(delta_energy))]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#777777", alpha=0.3, label="min–max over seeds"))
    if value == "effective_rank" and lora_rank:
        handles.append(Line2D([], [], color=METHOD_COLOR["lora"], ls=":", label=f"LoRA rank r = {lora_rank}"))
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
    """Intruder dimensions vs ε, one line per top-k: a row per module type, full vs LoRA side by side.

    The mean over layers and seeds of the chosen settings (band: min–max over seeds of the layer mean);
    the headline point (weights.intruder_epsilon, dotted vertical line) is the ε of the other figures.
    """
    table = intruder_sweep_table(intruders, best, task)
    title = f"{task}: intruder dimensions over ε and top-k"
    if table.empty:
        return empty_figure(path, title, "no intruder sweep (results/tables/intruders.csv)")
    matrices = sorted(table.matrix.unique())
    methods = [m for m in METHODS if m in set(table.method)]
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
            ax.set_title(f"{matrix} — {method_name(method)}", color=METHOD_COLOR.get(method, "k"))
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
