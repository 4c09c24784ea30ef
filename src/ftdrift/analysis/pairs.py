"""Representation similarity between two fine-tuning runs, rather than a run and the base model.

* The seed floor: runs of one setting (task, method, lr, batch size) that differ only in their seed,
  compared pairwise per layer and snapshot step. It says how far apart two runs of the same recipe
  end up, the noise level against which a drift or a difference between methods is read.
* A method vs the reference method (config key 'analysis.reference_method'): for every other
  method, its chosen setting and the reference's (results/tables/chosen.csv), same seed, compared
  per layer over training; and a layer x layer linear-CKA matrix between the two final snapshots
  (which layer of the compared method matches which layer of the reference).

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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ftdrift.study.grid import RUN_NAME, SETTING_KEYS, SETTING_NAME, USABLE_STATUSES, format_float

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger("ftdrift.analysis.pairs")

SEED_FLOOR = "results/seed_floor/{task}/{method}/" + SETTING_NAME + ".csv"
# one pair of tables per (task, compared method); the reference is a column, not part of the path
METHOD_PAIR = "results/similarity/{task}/{method}.csv"
METHOD_PAIR_LAYERS = "results/similarity/{task}/{method}_layers.csv"

# the per-step columns of one comparison of two runs
PAIR_COLUMNS = ["step", "layer", "layer_name", "pooling", "metric", "value", "bootstrap_se"]
SEED_FLOOR_COLUMNS = SETTING_KEYS + ["seed_a", "seed_b"] + PAIR_COLUMNS
# suffix _ref: the reference method's run; _method: the compared method's run
METHOD_PAIR_COLUMNS = ["task", "reference", "method", "seed", "lr_ref", "batch_size_ref", "lr_method",
                       "batch_size_method"] + PAIR_COLUMNS
LAYER_COLUMNS = ["task", "reference", "method", "seed", "pooling", "layer_ref", "layer_name_ref", "layer_method",
                 "layer_name_method", "value"]


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


def method_similarity_paths(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Both similarity CSVs (METHOD_PAIR, METHOD_PAIR_LAYERS) of every (task, compared method) of
    `pairs` (ftdrift.study.grid.compared_pairs)."""
    return [pattern.format(task=task, method=method) for task, method in pairs
            for pattern in (METHOD_PAIR, METHOD_PAIR_LAYERS)]


def pair_runs(runs: Iterable, task: str, method: str, reference: str) -> list:
    """The runs of `task` whose method is `reference` or `method` (the inputs of one comparison), in
    the order of `runs`. ValueError when `method` is the reference (a method is not compared with itself)."""
    if method == reference:
        raise ValueError(f"target {METHOD_PAIR.format(task=task, method=method)}: '{method}' is the reference "
                         "method (config key 'analysis.reference_method'); only the other methods are compared "
                         "with it")
    return [run for run in runs if _fields(run)["task"] == task and _fields(run)["method"] in (reference, method)]


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


def final_layer_matrix(path_ref, path_method, metrics_paths: tuple = (None, None)) -> pd.DataFrame:
    """Per pooling, linear CKA between every layer of the reference run's and the compared run's last
    snapshot: columns pooling, layer_ref, layer_name_ref, layer_method, layer_name_method, value. Each
    run's own last snapshot (the final model), even where one run stopped earlier. Same refusals and
    `metrics_paths` as compare_stores."""
    import numpy as np
    import pandas as pd

    store_a, store_b = _open(path_ref, metrics_paths[0]), _open(path_method, metrics_paths[1])
    attrs = _comparable_attrs(path_ref, store_a.attrs, path_method, store_b.attrs)
    columns = LAYER_COLUMNS[LAYER_COLUMNS.index("pooling"):]
    last_a, last_b = len(store_a.steps()) - 1, len(store_b.steps()) - 1
    if min(last_a, last_b) < 0:
        log.warning("%s or %s holds no snapshot: no layer x layer matrix", path_ref, path_method)
        return pd.DataFrame(columns=columns)
    names = np.array(attrs["layer_names"])
    frames = []
    for pooling in attrs["poolings"]:
        matrix = layer_cka_matrix(store_a.group[pooling][last_a], store_b.group[pooling][last_b])
        i, j = np.meshgrid(np.arange(matrix.shape[0]), np.arange(matrix.shape[1]), indexing="ij")
        frames.append(pd.DataFrame({"pooling": pooling, "layer_ref": i.ravel(), "layer_name_ref": names[i.ravel()],
                                    "layer_method": j.ravel(), "layer_name_method": names[j.ravel()],
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


def _chosen_arm(runs: pd.DataFrame, task: str, method: str) -> tuple[tuple[str, int], set[int]] | None:
    """((lr, batch size), seeds) of the task x method's chosen setting in chosen.csv's frame; None without one."""
    rows = runs[(runs.task == task) & (runs.method == method)]
    if rows.empty:
        return None
    return (rows.iloc[0].lr, int(rows.iloc[0].batch_size)), {int(s) for s in rows.seed}


def method_similarity_tables(task: str, method: str, reference: str, chosen_path, store_paths: dict,
                             metrics: list[str], bootstrap_resamples: int = 0,
                             metrics_paths: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One method vs the reference method for one task: (pair table, layer x layer table).

    `chosen_path`: results/tables/chosen.csv (RUN_KEYS of the usable runs of each task x method's
    chosen setting; rule choose_settings). `store_paths`: (method, lr, batch_size, seed) ->
    representations.zarr of the task's analysed runs (lr canonical, batch_size and seed int).
    A seed enters when both chosen settings ran it. `metrics_paths`: the same keys -> the run's
    metrics.json, whose meta.snapshot_steps its store must hold (None or a missing key: no such check).

    Pair table (METHOD_PAIR_COLUMNS): compare_stores(reference run, method run) per seed. Layer table
    (LAYER_COLUMNS): final_layer_matrix per seed. No chosen setting for either method or no shared
    seed: both header-only, with a log line saying why. ValueError when `method` is `reference`;
    KeyError naming the run when a needed store is not given.
    """
    import pandas as pd

    if method == reference:
        raise ValueError(f"task {task}: '{method}' is the reference method; it is not compared with itself")
    empty = pd.DataFrame(columns=METHOD_PAIR_COLUMNS), pd.DataFrame(columns=LAYER_COLUMNS)
    what = f"the {method} vs {reference} tables of task {task} are header-only"
    runs = _read_settings_table(chosen_path, "chosen runs", SETTING_KEYS + ["seed"])
    arms = {}
    for name in (reference, method):
        arm = _chosen_arm(runs, task, name)
        if arm is None:
            log.info("task %s: no chosen %s setting in %s (no usable %s run); %s", task, name, chosen_path, name,
                     what)
            return empty
        arms[name] = arm
    (ref_setting, ref_seeds), (method_setting, method_seeds) = arms[reference], arms[method]
    shared = sorted(ref_seeds & method_seeds)
    if not shared:
        log.info("task %s: the chosen %s (lr %s, bs %s; seeds %s) and %s (lr %s, bs %s; seeds %s) settings share "
                 "no seed with a usable run; %s", task, reference, *ref_setting, sorted(ref_seeds), method,
                 *method_setting, sorted(method_seeds), what)
        return empty

    def key(name: str, seed: int) -> tuple:
        return (name, *arms[name][0], seed)

    def store(name: str, seed: int):
        if key(name, seed) not in store_paths:
            _, lr, bs, _ = key(name, seed)
            raise KeyError(f"task {task}: no snapshot store given for run "
                           f"{name}/{RUN_NAME.format(lr=lr, batch_size=bs, seed=seed)}")
        return store_paths[key(name, seed)]

    pairs, layers = [], []
    fields = {"task": task, "reference": reference, "method": method, "lr_ref": ref_setting[0],
              "batch_size_ref": ref_setting[1], "lr_method": method_setting[0], "batch_size_method": method_setting[1]}
    for seed in shared:
        a, b = store(reference, seed), store(method, seed)
        checked = tuple((metrics_paths or {}).get(key(name, seed)) for name in (reference, method))
        pair = compare_stores(a, b, metrics, bootstrap_resamples, checked)
        layer = final_layer_matrix(a, b, checked)
        if not pair.empty:
            pairs.append(pair.assign(seed=seed, **fields))
        if not layer.empty:
            layers.append(layer.assign(task=task, reference=reference, method=method, seed=seed))
    return (pd.concat(pairs, ignore_index=True)[METHOD_PAIR_COLUMNS] if pairs else empty[0],
            pd.concat(layers, ignore_index=True)[LAYER_COLUMNS] if layers else empty[1])
