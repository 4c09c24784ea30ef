"""Full vs LoRA figures of one task: how similar the two methods' representations are to each other.

Reads results/similarity/{task}/full_vs_lora.csv (per seed, step and layer: a similarity between
the full and the LoRA model of the chosen settings, same seed, same layer) and
full_vs_lora_layers.csv (per seed: linear CKA between every layer of the final full model and
every layer of the final LoRA model). Both may be header-only: the task has no seed that both chosen
settings ran; the figures then say so. Seeds where either run diverged are left out, as everywhere.
Layer-by-layer CKA heatmaps follow Kornblith et al. 2019 ("Similarity of neural network
representations revisited", Fig. 3).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from ftdrift.core import io
from ftdrift.core.drift_metrics import metric_info
from ftdrift.report.drift import shared_limits
from ftdrift.report.frames import best_row, lr_text, read_table, setting_text, status_lookup
from ftdrift.report.style import HEATMAP_CMAP, empty_figure, layer_ticks, panel_grid, save, short_layer_name
from ftdrift.study.grid import USABLE_STATUSES

NO_SHARED_SEED = "no seed that both chosen settings ran (full_vs_lora.csv has no rows)"
NO_USABLE_SEED = "no seed whose full and LoRA runs both finished (diverged seeds are left out)"
TABLE_COLUMNS = ["task", "metric", "pooling", "layer", "layer_name", "step", "n_seeds", "value_mean", "value_min",
                 "value_max", "bootstrap_se_mean"]


def write_similarity(*, full_vs_lora, layers, best, task: str, outputs: Mapping, runs=None) -> None:
    """Rule report_similarity: the task's full-vs-LoRA over-training figure, layer x layer heatmap and table.

    outputs: over_training (SVG), layers (SVG), table (CSV, TABLE_COLUMNS: final-step similarity per
    metric x pooling x layer, mean/min/max over seeds and the mean of the per-seed bootstrap SEs).
    """
    best = read_table(best, required=False)
    runs = read_table(runs, required=False)
    pairs = usable_pairs(read_pairs(full_vs_lora, "full_vs_lora", task), runs)
    grid = usable_pairs(read_pairs(layers, "full_vs_lora_layers", task), runs, best)
    plot_similarity_over_training(pairs, best, task, outputs["over_training"])
    plot_layer_heatmap(grid, best, task, outputs["layers"])
    io.write_csv(outputs["table"], final_table(pairs))


def read_pairs(path, name: str, task: str) -> pd.DataFrame | None:
    """One of the two similarity CSVs with canonical keys; None when absent or header-only.

    Raises ValueError naming the file when its rows belong to another task.
    """
    frame = read_table(path, required=False)
    if frame is None:
        return None
    for col in ("lr_full", "lr_lora"):
        if col in frame:
            frame[col] = frame[col].map(lr_text).astype(object)
    if "task" in frame and not frame.task.eq(task).all():
        raise ValueError(f"{path} ({name}.csv of task '{task}'): rows of other tasks "
                         f"{sorted(set(frame.task) - {task})}")
    return frame


def usable_pairs(frame: pd.DataFrame | None, runs: pd.DataFrame | None,
                 best: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Rows whose full and LoRA runs (same seed) are both usable (not diverged / missing); all rows without runs.

    A run's setting is the row's lr_/batch_size_ columns where the file has them (full_vs_lora.csv),
    else the task's chosen setting in best.csv (full_vs_lora_layers.csv).
    """
    if frame is None or frame.empty or runs is None or runs.empty:
        return frame
    status = status_lookup(runs)

    def setting(r, method):
        if f"lr_{method}" in r:
            return r[f"lr_{method}"], int(r[f"batch_size_{method}"])
        row = best_row(best, r.task, method)
        return (row.lr, int(row.batch_size)) if row is not None else (None, None)

    keep = []
    for _, r in frame.iterrows():
        ok = [status.get((r.task, m, *setting(r, m), int(r.seed)), "completed") in USABLE_STATUSES
              for m in ("full", "lora")]
        keep.append(all(ok))
    return frame[np.array(keep, dtype=bool)]


def over_training_matrix(pairs: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    """step x layer matrix of the full-vs-LoRA similarity, mean over seeds (NaN where no seed has a snapshot)."""
    sub = pairs[(pairs.metric == metric) & (pairs.pooling == pooling)]
    return sub.pivot_table(index="step", columns="layer", values="value", aggfunc="mean").sort_index()


def layer_matrix(grid: pd.DataFrame, pooling: str) -> pd.DataFrame:
    """LoRA layer (rows) x full layer (columns) linear CKA of the final models, mean over seeds."""
    sub = grid[grid.pooling == pooling]
    return sub.pivot_table(index="layer_lora", columns="layer_full", values="value", aggfunc="mean").sort_index(
        axis=0).sort_index(axis=1)


def final_table(pairs: pd.DataFrame | None) -> pd.DataFrame:
    """Per metric x pooling x layer, the similarity at the last step all pairs share: mean/min/max over seeds."""
    if pairs is None or pairs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    last = pairs.groupby(["seed", "metric", "pooling"])["step"].transform("max")
    fin = pairs[pairs.step == last]
    se = fin["bootstrap_se"] if "bootstrap_se" in fin else pd.Series(np.nan, index=fin.index)
    out = fin.assign(bootstrap_se=se).groupby(["task", "metric", "pooling", "layer", "layer_name"], sort=False).agg(
        step=("step", "max"), n_seeds=("seed", "nunique"), value_mean=("value", "mean"), value_min=("value", "min"),
        value_max=("value", "max"), bootstrap_se_mean=("bootstrap_se", "mean")).reset_index()
    return out[TABLE_COLUMNS].sort_values(["metric", "pooling", "layer"]).reset_index(drop=True)


def _settings_line(best: pd.DataFrame | None, task: str, pairs: pd.DataFrame) -> str:
    parts = []
    for method, name in (("full", "full"), ("lora", "LoRA")):
        row = best_row(best, task, method)
        if row is not None:
            parts.append(f"{name} {setting_text(row.lr, row.batch_size)}")
        elif f"lr_{method}" in pairs:
            parts.append(f"{name} {setting_text(pairs[f'lr_{method}'].iloc[0], pairs[f'batch_size_{method}'].iloc[0])}")
    n = pairs.seed.nunique()
    return "; ".join(parts) + f"; mean over {n} seed{'s' if n != 1 else ''}"


def _names(frame: pd.DataFrame, layer: str, name: str) -> dict[int, str]:
    if name not in frame:
        return {}
    return {int(l): str(n) for l, n in frame[[layer, name]].drop_duplicates(layer).to_numpy()}


def plot_similarity_over_training(pairs: pd.DataFrame | None, best: pd.DataFrame | None, task: str, path) -> None:
    """Full-vs-LoRA similarity per layer against step: one line per layer coloured by depth, mean over seeds.

    One panel per metric x pooling; an empty figure naming the reason when there are no rows.
    """
    title = f"{task}: full fine-tuning vs LoRA, same layer, over training"
    if pairs is None or pairs.empty:
        return empty_figure(path, title, NO_SHARED_SEED if pairs is None else NO_USABLE_SEED)
    combos = sorted({(m, p) for m, p in zip(pairs.metric, pairs.pooling)})
    names = _names(pairs, "layer", "layer_name")
    fig, axes = panel_grid(len(combos), 2, 4.6, 3.5)
    layers = sorted(pairs.layer.unique())
    norm = Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
    cmap = plt.get_cmap(HEATMAP_CMAP)
    for ax, (metric, pooling) in zip(axes, combos):
        info = metric_info(metric)
        mat = over_training_matrix(pairs, metric, pooling)
        for layer in mat.columns:
            col = mat[layer].dropna()
            ax.plot(col.index, col.to_numpy(), "-", color=cmap(norm(layer)), lw=1.6, marker="o", ms=2.5)
        ax.set_title(f"{info.name}, {pooling} pooling")
        ax.set_xlabel("optimizer step (snapshot)")
        ax.set_ylabel(f"full vs LoRA ({'1' if info.similarity else '0'} = same)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, pad=0.02)
    bar.set_label("layer (darker = shallower)")
    ticks = layers if len(layers) <= 14 else layers[:: int(np.ceil(len(layers) / 14))]
    bar.set_ticks(ticks, labels=[short_layer_name(names.get(int(l), str(l)), int(l)) for l in ticks])
    fig.suptitle(f"{title}\n{_settings_line(best, task, pairs)}")
    save(fig, path)


def plot_layer_heatmap(grid: pd.DataFrame | None, best: pd.DataFrame | None, task: str, path) -> tuple[float, float]:
    """Linear CKA between every LoRA layer (rows) and every full layer (columns) of the final models.

    Mean over seeds; one panel per pooling on one colour scale. Returns the shared (vmin, vmax).
    """
    title = f"{task}: final full vs final LoRA model,\nevery layer pair (linear CKA)"
    if grid is None or grid.empty:
        empty_figure(path, title, NO_SHARED_SEED.replace("full_vs_lora.csv", "full_vs_lora_layers.csv")
                     if grid is None else NO_USABLE_SEED)
        return 0.0, 1.0
    poolings = sorted(grid.pooling.unique())
    mats = {p: layer_matrix(grid, p) for p in poolings}
    vmin, vmax = shared_limits(mats.values())
    norm = Normalize(vmin=vmin, vmax=vmax)
    full_names, lora_names = _names(grid, "layer_full", "layer_name_full"), _names(grid, "layer_lora",
                                                                                  "layer_name_lora")
    n = max(len(m) for m in mats.values())
    fig, axes = panel_grid(len(poolings), 2, max(5.6, 0.3 * n + 2.6), max(4.0, 0.3 * n + 2.0))
    image = None
    for ax, pooling in zip(axes, poolings):
        mat = mats[pooling]
        image = ax.imshow(np.ma.masked_invalid(mat.to_numpy(dtype=float)), origin="lower", aspect="auto",
                          cmap=HEATMAP_CMAP, norm=norm, interpolation="nearest")
        layer_ticks(ax, list(range(mat.shape[1])), {i: full_names.get(int(l), str(l)) for i, l in
                                                    enumerate(mat.columns)}, axis="x")
        layer_ticks(ax, list(range(mat.shape[0])), {i: lora_names.get(int(l), str(l)) for i, l in
                                                    enumerate(mat.index)}, axis="y")
        ax.set_xlabel("full fine-tuning: layer")
        ax.set_ylabel("LoRA: layer")
        ax.set_title(f"{pooling} pooling")
        ax.grid(False)
    bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.02)
    bar.set_label("linear CKA (1 = same)")
    fig.suptitle(f"{title}\n{_settings_line(best, task, grid)}")
    save(fig, path)
    return vmin, vmax

