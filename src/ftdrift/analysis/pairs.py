"""Representation similarity between two fine-tuning runs, rather than a run and the base model.

* The seed floor: runs of one setting (task, method, lr, batch size) that differ only in their seed,
  compared pairwise per layer and snapshot step. It says how far apart two runs of the same recipe
  end up, the noise level against which a drift or a full-vs-LoRA difference is read.
* Full vs LoRA: the chosen full fine-tuning and LoRA settings of a task (results/tables/best.csv),
  same seed, compared per layer over training; and a layer x layer linear-CKA matrix between the two
  final snapshots (which LoRA layer matches which full fine-tuning layer).

Every value is one of the drift metrics (ftdrift.core.drift_metrics), computed between the two runs'
representations of the same probe examples at the same step. Linear CKA at the last step both runs
hold, the value that enters tables, gets a bootstrap standard error over probe examples
(ftdrift.core.similarity.bootstrap_linear_cka with probe_resamples(seed=0), so every comparison of a
task uses the same replicates).

Light to import: the rules import this module at parse time (settings_with_seeds, the path lists);
numpy, pandas, zarr and torch are imported only inside the functions that compute.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ftdrift.study.grid import SETTING_KEYS, USABLE_STATUSES, format_float

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger("ftdrift.analysis.pairs")

SEED_FLOOR = "results/seed_floor/{task}/{method}/lr{lr}_bs{batch_size}.csv"
FULL_VS_LORA = "results/similarity/{task}/full_vs_lora.csv"
FULL_VS_LORA_LAYERS = "results/similarity/{task}/full_vs_lora_layers.csv"

# the per-step columns of one comparison of two runs
PAIR_COLUMNS = ["step", "layer", "layer_name", "pooling", "metric", "value", "bootstrap_se"]
SEED_FLOOR_COLUMNS = SETTING_KEYS + ["seed_a", "seed_b"] + PAIR_COLUMNS
FULL_VS_LORA_COLUMNS = ["task", "seed", "lr_full", "batch_size_full", "lr_lora", "batch_size_lora"] + PAIR_COLUMNS
LAYER_COLUMNS = ["task", "seed", "pooling", "layer_full", "layer_name_full", "layer_lora", "layer_name_lora", "value"]


# --------------------------------------------------------------------------- #
# the grid side (parse time: no heavy imports)
# --------------------------------------------------------------------------- #
def _fields(run) -> dict:
    return run.wildcards if hasattr(run, "wildcards") else dict(run)


def settings_with_seeds(runs: Iterable) -> list[dict]:
    """The settings (SETTING_KEYS) of `runs` that have >= 2 seeds, in first-seen order.

    `runs`: ftdrift.study.grid.Run objects (or dicts with RUN_KEYS). Returns dicts with task, method,
    lr (canonical string), batch_size (int) and seeds (sorted ints).
    """
    groups: dict[tuple, list[int]] = {}
    for run in runs:
        fields = _fields(run)
        key = (fields["task"], fields["method"], str(fields["lr"]), int(fields["batch_size"]))
        groups.setdefault(key, []).append(int(fields["seed"]))
    return [{**dict(zip(SETTING_KEYS, key)), "seeds": sorted(set(seeds))}
            for key, seeds in groups.items() if len(set(seeds)) >= 2]


def seed_floor_setting(runs: Iterable, wildcards) -> dict:
    """The setting named by `wildcards` (task, method, lr, batch_size as strings) among
    settings_with_seeds(runs). Raises ValueError naming the target when it has < 2 seeds or is off the grid."""
    get = wildcards.get if isinstance(wildcards, dict) else lambda key: getattr(wildcards, key)
    want = tuple(str(get(key)) for key in SETTING_KEYS)
    for setting in settings_with_seeds(runs):
        if tuple(str(setting[key]) for key in SETTING_KEYS) == want:
            return setting
    raise ValueError(f"target {SEED_FLOOR.format(**dict(zip(SETTING_KEYS, want)))}: no setting of the analysed grid "
                     "with at least 2 seeds has these values (config keys 'grid.seeds', 'grid.learning_rates', "
                     "'grid.batch_sizes'; learning rates in canonical form, e.g. lr1e-3)")


def seed_floor_paths(runs: Iterable) -> list[str]:
    """results/seed_floor/... CSV of every setting of `runs` with >= 2 seeds."""
    return [SEED_FLOOR.format(**setting) for setting in settings_with_seeds(runs)]


def method_similarity_paths(tasks: Iterable[str]) -> list[str]:
    """Both full-vs-LoRA CSVs of every task."""
    return [pattern.format(task=task) for task in tasks for pattern in (FULL_VS_LORA, FULL_VS_LORA_LAYERS)]


def run_status(metrics_path) -> str:
    """A finished run's status from its metrics.json (meta.status; older files: meta.stopped_early),
    as ftdrift.analysis.tables.runs_frame reads it."""
    from ftdrift.core.io import read_json

    meta = read_json(metrics_path)["meta"]
    return meta.get("status") or ("stopped_early" if meta.get("stopped_early") else "completed")


# --------------------------------------------------------------------------- #
# comparing two runs' snapshot stores
# --------------------------------------------------------------------------- #
def _open(path, metrics_path=None):
    """The run's store at `path`, checked (ftdrift.core.store.SnapshotStore): steps strictly increasing and,
    given the run's metrics.json `metrics_path`, equal to its meta.snapshot_steps. FileNotFoundError when
    there is no store; SnapshotStoreError (a ValueError naming the store and the steps) when it fails a check."""
    from ftdrift.core.store import SnapshotStore, recorded_snapshot_steps

    if not (Path(path) / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: no snapshot store (representations.zarr) there")
    return SnapshotStore(path, mode="r", expected_steps=recorded_snapshot_steps(metrics_path),
                         expected_source=str(metrics_path))


def _comparable_attrs(path_a, attrs_a: dict, path_b, attrs_b: dict) -> dict:
    """The attributes both stores share; ValueError naming both paths where a comparison would be meaningless."""
    for key, what in (("probe_ids", "different probe sets"), ("layer_names", "different layers"),
                      ("poolings", "different poolings")):
        if list(attrs_a[key]) != list(attrs_b[key]):
            raise ValueError(f"{path_a} and {path_b} were taken on {what} (attribute '{key}')")
    pa, pb = attrs_a.get("precision", "fp32"), attrs_b.get("precision", "fp32")
    if pa != pb:
        # a bf16 run against an fp32 one would count the rounding as a difference between the runs
        raise ValueError(f"{path_a} was taken in {pa} but {path_b} in {pb}: their similarity would include the "
                         "rounding difference; train both with the same config key 'training.precision'")
    return attrs_a


def bootstrap_indices(n: int, n_resamples: int) -> np.ndarray | None:
    """The probe resamples shared by every comparison of a task (seed 0), ``[B, n]``; None when
    ``n_resamples`` < 2 (config key 'drift.bootstrap_resamples': 0 = no interval; one replicate has no spread)."""
    from ftdrift.core.similarity import probe_resamples

    return probe_resamples(n, n_resamples, seed=0) if n_resamples >= 2 else None


def bootstrap_se(x: np.ndarray, y: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Bootstrap standard error of linear CKA per layer: ``x [layer, n, d1]``, ``y [layer, n, d2]``,
    ``indices [B, n]`` -> ``[layer]``, the std (ddof=1) of the B replicates of
    ftdrift.core.similarity.bootstrap_linear_cka (Efron & Tibshirani 1993, ch. 6)."""
    import numpy as np

    from ftdrift.core.similarity import bootstrap_linear_cka

    return np.array([np.std(bootstrap_linear_cka(x[layer], y[layer], indices), ddof=1)
                     for layer in range(x.shape[0])])


def compare_stores(path_a, path_b, metrics: list[str], bootstrap_resamples: int = 0,
                   metrics_paths: tuple = (None, None)) -> pd.DataFrame:
    """Similarity of two runs' representations, per pooling, metric, step and layer.

    Compares layer l of run A with layer l of run B on the same probe examples at every step both
    stores hold (steps only one holds, e.g. after the other stopped early or diverged, are left out).
    `metrics`: names of ftdrift.core.drift_metrics (config key 'drift.metrics'); `value` is the metric
    between the two runs (e.g. linear CKA, 1 = same up to rotation and scale; Procrustes: 0 = same).
    `bootstrap_se`: for linear_cka at the last common step, the std of `bootstrap_resamples` probe
    resamples (seed 0); NaN on other rows or when `bootstrap_resamples` < 2.
    `metrics_paths`: the two runs' metrics.json (or None), whose meta.snapshot_steps each store must hold.

    Returns a frame with PAIR_COLUMNS, steps ascending. Raises ValueError when the stores differ in
    probe set, layers, poolings or precision; FileNotFoundError when a store is missing; SnapshotStoreError
    (a ValueError) when a store's steps are not strictly increasing or not those its metrics.json recorded.
    Snapshots are read one step at a time, so memory is two snapshots, not two runs.
    """
    import numpy as np
    import pandas as pd

    from ftdrift.core import drift_metrics

    store_a, store_b = _open(path_a, metrics_paths[0]), _open(path_b, metrics_paths[1])
    attrs = _comparable_attrs(path_a, store_a.attrs, path_b, store_b.attrs)
    steps, idx_a, idx_b = np.intersect1d(np.array(store_a.steps(), dtype=np.int64),
                                         np.array(store_b.steps(), dtype=np.int64), return_indices=True)
    if len(steps) == 0:
        log.warning("%s and %s hold no common snapshot step: nothing to compare", path_a, path_b)
        return pd.DataFrame(columns=PAIR_COLUMNS)
    layer_names = np.array(attrs["layer_names"])
    n_layers = len(layer_names)
    indices = bootstrap_indices(len(attrs["probe_ids"]), bootstrap_resamples) if "linear_cka" in metrics else None
    frames = []
    for pooling in attrs["poolings"]:
        values = {metric: np.empty((len(steps), n_layers)) for metric in metrics}
        se = np.full((len(steps), n_layers), np.nan)
        for k, (i, j) in enumerate(zip(idx_a, idx_b)):
            # one snapshot [layer, example, hidden] of each run (SnapshotStore.read would load all of them)
            x, y = store_a.group[pooling][int(i)], store_b.group[pooling][int(j)]
            for metric in metrics:
                values[metric][k] = drift_metrics.compute(metric, x, y[None])[0]
            if indices is not None and k == len(steps) - 1:
                se[k] = bootstrap_se(x, y, indices)
        s_idx, l_idx = np.meshgrid(np.arange(len(steps)), np.arange(n_layers), indexing="ij")
        for metric in metrics:
            frames.append(pd.DataFrame({
                "step": steps[s_idx.ravel()], "layer": l_idx.ravel(), "layer_name": layer_names[l_idx.ravel()],
                "pooling": pooling, "metric": metric, "value": values[metric].ravel(),
                "bootstrap_se": se.ravel() if metric == "linear_cka" else np.nan}))
    return pd.concat(frames, ignore_index=True)[PAIR_COLUMNS]


def layer_cka_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear CKA between every layer of ``x [L1, n, d1]`` and every layer of ``y [L2, n, d2]`` -> ``[L1, L2]``.

    Gram form of Kornblith et al. (2019): with column-centred X_i, K_i = X_i X_i^T,
    CKA(i, j) = <K_i, L_j> / (||K_i||_F ||L_j||_F); each centred Gram is built once (O((L1 + L2) n^2 d)),
    then all pairs are one matrix product. Float64; 0.0 where a layer has no variance (as
    ftdrift.core.similarity.linear_cka). Raises ValueError on NaN/inf or different example counts.
    """
    import numpy as np

    from ftdrift.core.arrays import center, check_finite

    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must hold the same examples: got {x.shape[1]} and {y.shape[1]}")

    def grams(reps: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        flat, norms = [], []
        for layer in range(reps.shape[0]):
            a = np.asarray(reps[layer], dtype=np.float64)
            check_finite(a, f"{name} (layer {layer})")
            c, degenerate = center(a)
            k = c @ c.T
            flat.append(k.ravel())
            norms.append(0.0 if degenerate else np.linalg.norm(k))
        return np.stack(flat), np.array(norms)

    kx, nx = grams(x, "x")
    ky, ny = grams(y, "y")
    denom = np.outer(nx, ny)
    out = np.zeros(denom.shape)
    ok = denom > 0
    out[ok] = (kx @ ky.T)[ok] / denom[ok]
    return out


def final_layer_matrix(path_full, path_lora, metrics_paths: tuple = (None, None)) -> pd.DataFrame:
    """Per pooling, linear CKA between every layer of run A's (full) and run B's (LoRA) last snapshot:
    columns pooling, layer_full, layer_name_full, layer_lora, layer_name_lora, value. Each run's own last
    snapshot (the final model), even where one run stopped earlier. Same refusals and `metrics_paths` as
    compare_stores."""
    import numpy as np
    import pandas as pd

    store_a, store_b = _open(path_full, metrics_paths[0]), _open(path_lora, metrics_paths[1])
    attrs = _comparable_attrs(path_full, store_a.attrs, path_lora, store_b.attrs)
    columns = LAYER_COLUMNS[2:]
    last_a, last_b = len(store_a.steps()) - 1, len(store_b.steps()) - 1
    if min(last_a, last_b) < 0:
        log.warning("%s or %s holds no snapshot: no layer x layer matrix", path_full, path_lora)
        return pd.DataFrame(columns=columns)
    names = np.array(attrs["layer_names"])
    frames = []
    for pooling in attrs["poolings"]:
        matrix = layer_cka_matrix(store_a.group[pooling][last_a], store_b.group[pooling][last_b])
        i, j = np.meshgrid(np.arange(matrix.shape[0]), np.arange(matrix.shape[1]), indexing="ij")
        frames.append(pd.DataFrame({"pooling": pooling, "layer_full": i.ravel(), "layer_name_full": names[i.ravel()],
                                    "layer_lora": j.ravel(), "layer_name_lora": names[j.ravel()],
                                    "value": matrix.ravel()}))
    return pd.concat(frames, ignore_index=True)[columns]


# --------------------------------------------------------------------------- #
# the two tables
# --------------------------------------------------------------------------- #
def seed_floor_table(setting: dict, store_paths: dict, metrics_paths: dict, metrics: list[str],
                     bootstrap_resamples: int = 0) -> pd.DataFrame:
    """results/seed_floor/<task>/<method>/lr<lr>_bs<bs>.csv: every pair of seeds (seed_a < seed_b) of one setting.

    `setting`: task, method, lr, batch_size. `store_paths` / `metrics_paths`: seed -> the run's
    representations.zarr / metrics.json. Runs whose status is not usable (USABLE_STATUSES: a diverged
    run) are left out, with a log line; fewer than 2 usable seeds give a header-only table.
    Columns SEED_FLOOR_COLUMNS; values as compare_stores, each store checked against its metrics.json.
    """
    import pandas as pd

    if set(store_paths) != set(metrics_paths):
        raise ValueError(f"seed floor {setting}: stores for seeds {sorted(store_paths)} but metrics.json for "
                         f"{sorted(metrics_paths)}")
    usable = []
    for seed in sorted(store_paths, key=int):
        status = run_status(metrics_paths[seed])
        if status in USABLE_STATUSES:
            usable.append(seed)
        else:
            log.info("seed %s of %s left out of the seed floor: status %s", seed, setting, status)
    frames = []
    for n, seed_a in enumerate(usable):
        for seed_b in usable[n + 1:]:
            pair = compare_stores(store_paths[seed_a], store_paths[seed_b], metrics, bootstrap_resamples,
                                  (metrics_paths[seed_a], metrics_paths[seed_b]))
            if pair.empty:
                continue
            frames.append(pair.assign(seed_a=int(seed_a), seed_b=int(seed_b)))
    if not frames:
        log.info("seed floor %s: fewer than 2 usable seeds with a common step (usable: %s); header only",
                 setting, usable)
        return pd.DataFrame(columns=SEED_FLOOR_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    for key in SETTING_KEYS:
        table[key] = int(setting[key]) if key == "batch_size" else str(setting[key])
    return table[SEED_FLOOR_COLUMNS]


def _read_settings_table(path, name: str, required: list[str]) -> pd.DataFrame:
    import pandas as pd

    table = pd.read_csv(path, dtype={"lr": str, "task": str, "method": str})
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path} ({name}) lacks columns {missing}")
    # canonical learning rates, whatever wrote the CSV ('0.001' and '1e-3' name the same runs)
    table["lr"] = [format_float(float(v)) for v in table["lr"]]
    return table


def method_similarity_tables(task: str, chosen_path, store_paths: dict, metrics: list[str],
                             bootstrap_resamples: int = 0,
                             metrics_paths: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Full fine-tuning vs LoRA for one task: (full_vs_lora, full_vs_lora_layers).

    `chosen_path`: results/tables/chosen.csv (RUN_KEYS of the usable runs of each task x method's
    chosen setting; rule choose_settings). `store_paths`: (method, lr, batch_size, seed) ->
    representations.zarr of the task's analysed runs (lr canonical, batch_size and seed int).
    A seed enters when both chosen settings ran it. `metrics_paths`: the same keys -> the run's
    metrics.json, whose meta.snapshot_steps its store must hold (None or a missing key: no such check).

    full_vs_lora (FULL_VS_LORA_COLUMNS): compare_stores(full, LoRA) per seed. full_vs_lora_layers
    (LAYER_COLUMNS): final_layer_matrix per seed. No chosen setting for a method or no shared seed:
    both header-only, with a log line saying why. KeyError naming the run when a needed store is not given.
    """
    import pandas as pd

    empty = pd.DataFrame(columns=FULL_VS_LORA_COLUMNS), pd.DataFrame(columns=LAYER_COLUMNS)
    runs = _read_settings_table(chosen_path, "chosen runs", SETTING_KEYS + ["seed"])
    chosen, seeds = {}, {}
    for method in ("full", "lora"):
        rows = runs[(runs.task == task) & (runs.method == method)]
        if rows.empty:
            log.info("task %s: no chosen %s setting in %s (no usable %s run); full_vs_lora tables are header-only",
                     task, method, chosen_path, method)
            return empty
        chosen[method] = (rows.iloc[0].lr, int(rows.iloc[0].batch_size))
        seeds[method] = {int(s) for s in rows.seed}
    shared = sorted(seeds["full"] & seeds["lora"])
    if not shared:
        log.info("task %s: the chosen full (lr %s, bs %s; seeds %s) and LoRA (lr %s, bs %s; seeds %s) settings share "
                 "no seed with a usable run; full_vs_lora tables are header-only", task, *chosen["full"],
                 sorted(seeds["full"]), *chosen["lora"], sorted(seeds["lora"]))
        return empty

    def store(method: str, seed: int):
        key = (method, *chosen[method], seed)
        if key not in store_paths:
            raise KeyError(f"task {task}: no snapshot store given for run {method}/lr{key[1]}_bs{key[2]}_seed{seed}")
        return store_paths[key]

    def recorded(method: str, seed: int):
        return (metrics_paths or {}).get((method, *chosen[method], seed))

    pairs, layers = [], []
    fields = {"task": task, "lr_full": chosen["full"][0], "batch_size_full": chosen["full"][1],
              "lr_lora": chosen["lora"][0], "batch_size_lora": chosen["lora"][1]}
    for seed in shared:
        full, lora = store("full", seed), store("lora", seed)
        checked = (recorded("full", seed), recorded("lora", seed))
        pair = compare_stores(full, lora, metrics, bootstrap_resamples, checked)
        layer = final_layer_matrix(full, lora, checked)
        if not pair.empty:
            pairs.append(pair.assign(seed=seed, **fields))
        if not layer.empty:
            layers.append(layer.assign(task=task, seed=seed))
    return (pd.concat(pairs, ignore_index=True)[FULL_VS_LORA_COLUMNS] if pairs else empty[0],
            pd.concat(layers, ignore_index=True)[LAYER_COLUMNS] if layers else empty[1])
