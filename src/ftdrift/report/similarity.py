"""A method vs the reference method, one task: how similar their representations are to each other.

Reads results/similarity/{task}/{method}.csv (per seed, step and layer: a similarity between the
reference's and the method's model of the chosen settings, same seed, same layer) and
{method}_layers.csv (per seed: linear CKA between every layer of the final reference model and
every layer of the final model of the method). Both may be header-only: the task has no seed that
both chosen settings ran; the figures then say so. Seeds where either run diverged are left out,
as everywhere. Layer-by-layer CKA heatmaps follow Kornblith et al. 2019 ("Similarity of neural
network representations revisited", Fig. 3).
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
from ftdrift.report.frames import (
    best_row,
    lr_text,
    method_name,
    read_table,
    setting_text,
    status_lookup,
)
from ftdrift.report.style import (
    HEATMAP_CMAP,
    empty_figure,
    layer_ticks,
    panel_grid,
    save,
    shared_limits,
    short_layer_name,
)
from ftdrift.study.grid import USABLE_STATUSES

NO_SHARED_SEED = "no seed that both chosen settings ran ({file} has no rows)"
NO_USABLE_SEED = "no seed whose runs of both methods finished (diverged seeds are left out)"
TABLE_COLUMNS = ["task", "reference", "method", "metric", "pooling", "layer", "layer_name", "step", "n_seeds",
                 "value_mean", "value_min", "value_max", "bootstrap_se_mean"]
# the two arms of a pair table: column suffix -> which run
ARMS = ("ref", "method")


def write_similarity(*, pairs, layers, best, task: str, method: str, reference: str, outputs: Mapping,
                     runs=None) -> None:
    """Rule report_similarity: one method vs the reference on one task: the over-training figure, the
    layer x layer heatmap and the table.

    `pairs`, `layers`: the method's two similarity CSVs (ftdrift.analysis.pairs.METHOD_PAIR and
    METHOD_PAIR_LAYERS). outputs: over_training (SVG), layers (SVG), table (CSV, TABLE_COLUMNS:
    final-step similarity per metric x pooling x layer, mean/min/max over seeds and the mean of the
    per-seed bootstrap SEs).
    """
    best = read_table(best, required=False)
    runs = read_table(runs, required=False)
    names = {"ref": reference, "method": method}
    pair_frame = usable_pairs(read_pairs(pairs, task), runs, names)
    grid = usable_pairs(read_pairs(layers, task), runs, names, best)
    plot_similarity_over_training(pair_frame, best, task, names, outputs["over_training"])
    plot_layer_heatmap(grid, best, task, names, outputs["layers"])
    io.write_csv(outputs["table"], final_table(pair_frame, names))


def read_pairs(path, task: str) -> pd.DataFrame | None:
    """One of the two similarity CSVs with canonical keys; None when absent or header-only.

    Raises ValueError naming the file when its rows belong to another task.
    """
    frame = read_table(path, required=False)
    if frame is None:
        return None
    for col in (f"lr_{arm}" for arm in ARMS):
        if col in frame:
            frame[col] = frame[col].map(lr_text).astype(object)
    if "task" in frame and not frame.task.eq(task).all():
        raise ValueError(f"{path} (a similarity table of task '{task}'): rows of other tasks "
                         f"{sorted(set(frame.task) - {task})}")
    return frame


def usable_pairs(frame: pd.DataFrame | None, runs: pd.DataFrame | None, names: Mapping[str, str],
                 best: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Rows whose two runs (same seed) are both usable (not diverged / missing); all rows without runs.

    `names`: arm suffix ('ref', 'method') -> method name. A run's setting is the row's lr_<arm> /
    batch_size_<arm> columns where the file has them (the pair table), else the task's chosen
    setting in best.csv (the layer table).
    """
    if frame is None or frame.empty or runs is None or runs.empty:
        return frame
    status = status_lookup(runs)

    def setting(r, arm):
        if f"lr_{arm}" in r:
            return r[f"lr_{arm}"], int(r[f"batch_size_{arm}"])
        row = best_row(best, r.task, names[arm])
        return (row.lr, int(row.batch_size)) if row is not None else (None, None)

    keep = []
    for _, r in frame.iterrows():
        ok = [status.get((r.task, names[arm], *setting(r, arm), int(r.seed)), "completed") in USABLE_STATUSES
              for arm in ARMS]
        keep.append(all(ok))
    return frame[np.array(keep, dtype=bool)]


def over_training_matrix(pairs: pd.DataFrame, metric: str, pooling: str) -> pd.DataFrame:
    """step x layer matrix of the method-vs-reference similarity, mean over seeds (NaN where no seed has a snapshot)."""
    sub = pairs[(pairs.metric == metric) & (pairs.pooling == pooling)]
    return sub.pivot_table(index="step", columns="layer", values="value", aggfunc="mean").sort_index()


def layer_matrix(grid: pd.DataFrame, pooling: str) -> pd.DataFrame:
    """The method's layer (rows) x the reference's layer (columns) linear CKA of the final models, mean over seeds."""
    sub = grid[grid.pooling == pooling]
    return sub.pivot_table(index="layer_method", columns="layer_ref", values="value", aggfunc="mean").sort_index(
        axis=0).sort_index(axis=1)


def final_table(pairs: pd.DataFrame | None, names: Mapping[str, str]) -> pd.DataFrame:
    """Per metric x pooling x layer, the similarity at each seed's last step: mean/min/max over seeds.
    `names`: arm suffix -> method name (the reference and method columns)."""
    if pairs is None or pairs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    pairs = pairs.assign(reference=names["ref"], method=names["method"])
    last = pairs.groupby(["seed", "metric", "pooling"])["step"].transform("max")
    fin = pairs[pairs.step == last]
    se = fin["bootstrap_se"] if "bootstrap_se" in fin else pd.Series(np.nan, index=fin.index)
    out = fin.assign(bootstrap_se=se).groupby(["task", "reference", "method", "metric", "pooling", "layer",
                                               "layer_name"], sort=False).agg(
        step=("step", "max"), n_seeds=("seed", "nunique"), value_mean=("value", "mean"), value_min=("value", "min"),
        value_max=("value", "max"), bootstrap_se_mean=("bootstrap_se", "mean")).reset_index()
    return out[TABLE_COLUMNS].sort_values(["metric", "pooling", "layer"]).reset_index(drop=True)


def _settings_line(best: pd.DataFrame | None, task: str, pairs: pd.DataFrame, names: Mapping[str, str]) -> str:
    parts = []
    for arm in ARMS:
        name = method_name(names[arm])
        row = best_row(best, task, names[arm])
        if row is not None:
            parts.append(f"{name} {setting_text(row.lr, row.batch_size)}")
        elif f"lr_{arm}" in pairs:
            parts.append(f"{name} {setting_text(pairs[f'lr_{arm}'].iloc[0], pairs[f'batch_size_{arm}'].iloc[0])}")
    n = pairs.seed.nunique()
    return "; ".join(parts) + f"; mean over {n} seed{'s' if n != 1 else ''}"


def _names(frame: pd.DataFrame, layer: str, name: str) -> dict[int, str]:
    if name not in frame:
        return {}
    return {int(l): str(n) for l, n in frame[[layer, name]].drop_duplicates(layer).to_numpy()}


def _versus(names: Mapping[str, str]) -> str:
    return f"{method_name(names['method'])} vs {method_name(names['ref'])}"


def plot_similarity_over_training(pairs: pd.DataFrame | None, best: pd.DataFrame | None, task: str,
                                  names: Mapping[str, str], path) -> None:
    """Method-vs-reference similarity per layer against step: one line per layer coloured by depth,
    mean over seeds. `names`: arm suffix ('ref', 'method') -> method name.

    One panel per metric x pooling; an empty figure naming the reason when there are no rows.
    """
    title = f"{task}: {_versus(names)}, same layer, over training"
    if pairs is None or pairs.empty:
        return empty_figure(path, title, NO_SHARED_SEED.format(file=f"{names['method']}.csv") if pairs is None
                            else NO_USABLE_SEED)
    combos = sorted({(m, p) for m, p in zip(pairs.metric, pairs.pooling)})
    layer_names = _names(pairs, "layer", "layer_name")
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
        ax.set_ylabel(f"{_versus(names)} ({'1' if info.similarity else '0'} = same)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, pad=0.02)
    bar.set_label("layer (darker = shallower)")
    ticks = layers if len(layers) <= 14 else layers[:: int(np.ceil(len(layers) / 14))]
    bar.set_ticks(ticks, labels=[short_layer_name(layer_names.get(int(i), str(i)), int(i)) for i in ticks])
    fig.suptitle(f"{title}\n{_settings_line(best, task, pairs, names)}")
    save(fig, path)


def plot_layer_heatmap(grid: pd.DataFrame | None, best: pd.DataFrame | None, task: str, names: Mapping[str, str],
                       path) -> tuple[float, float]:
    """Linear CKA between every layer of the method's (rows) and the reference's (columns) final models.

    Mean over seeds; one panel per pooling on one colour scale. Returns the shared (vmin, vmax).
    """
    title = f"{task}: final {_versus(names)} model,\nevery layer pair (linear CKA)"
    if grid is None or grid.empty:
        empty_figure(path, title, NO_SHARED_SEED.format(file=f"{names['method']}_layers.csv")
                     if grid is None else NO_USABLE_SEED)
        return 0.0, 1.0
    poolings = sorted(grid.pooling.unique())
    mats = {p: layer_matrix(grid, p) for p in poolings}
    vmin, vmax = shared_limits(mats.values())
    norm = Normalize(vmin=vmin, vmax=vmax)
    ref_names, method_names = _names(grid, "layer_ref", "layer_name_ref"), _names(grid, "layer_method",
                                                                                 "layer_name_method")
    n = max(len(m) for m in mats.values())
    fig, axes = panel_grid(len(poolings), 2, max(5.6, 0.3 * n + 2.6), max(4.0, 0.3 * n + 2.0))
    image = None
    for ax, pooling in zip(axes, poolings):
        mat = mats[pooling]
        image = ax.imshow(np.ma.masked_invalid(mat.to_numpy(dtype=float)), origin="lower", aspect="auto",
                          cmap=HEATMAP_CMAP, norm=norm, interpolation="nearest")
        layer_ticks(ax, list(range(mat.shape[1])), {i: ref_names.get(int(l), str(l)) for i, l in
                                                    enumerate(mat.columns)}, axis="x")
        layer_ticks(ax, list(range(mat.shape[0])), {i: method_names.get(int(l), str(l)) for i, l in
                                                    enumerate(mat.index)}, axis="y")
        ax.set_xlabel(f"{method_name(names['ref'])} (reference): layer")
        ax.set_ylabel(f"{method_name(names['method'])}: layer")
        ax.set_title(f"{pooling} pooling")
        ax.grid(False)
    bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.02)
    bar.set_label("linear CKA (1 = same)")
    fig.suptitle(f"{title}\n{_settings_line(best, task, grid, names)}")
    save(fig, path)
    return vmin, vmax

