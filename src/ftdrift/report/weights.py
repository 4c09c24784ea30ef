"""Weight-space figures and table: effective rank and intruder dimensions of ΔW per layer and module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ftdrift.core import io
from ftdrift.report.frames import read_table, usable
from ftdrift.report.style import METHOD_COLOR, empty_figure, fresh_dir, method_handles, panel_grid, save
from ftdrift.study.grid import METHODS, SETTING_KEYS


def write_weights(*, weights, best, tasks: Sequence[str], lora_rank: int | None = None, outputs: Mapping) -> None:
    """Rule report_weights: effective-rank and intruder figures per task, one table for all tasks."""
    weights, best = read_table(weights, required=False), read_table(best, required=False)
    rank_dir, intruder_dir = fresh_dir(outputs["effective_rank"]), fresh_dir(outputs["intruders"])
    tables = []
    for task in tasks:
        plot_weight_by_layer(weights, best, task, "effective_rank", rank_dir / f"{task}.svg", lora_rank)
        plot_weight_by_layer(weights, best, task, "intruder_dims", intruder_dir / f"{task}.svg")
        tables.append(weight_table(weights, best, task))
    io.write_csv(outputs["table"], pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


WEIGHT_VALUES = {"effective_rank": "effective rank of ΔW", "stable_rank": "stable rank of ΔW",
                 "intruder_dims": "intruder dimensions (count)"}


def weight_table(weights: pd.DataFrame | None, best: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """Chosen settings' weight diagnostics per method x module x layer: mean/min/max over seeds."""
    if weights is None or weights.empty:
        return pd.DataFrame()
    sub = usable(weights[weights.task == task])  # diverged runs left out, as in best.csv
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
    fig, axes = panel_grid(len(modules), 4, 3.4, 3.3, sharey=True)
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
    save(fig, path)
