"""Drift of a run's representations away from the base model, per snapshot and layer, and the
bootstrap over probe examples of its final linear CKA (ftdrift.core.similarity).

The run's store is checked before it is read (ftdrift.core.store.SnapshotStore): steps strictly
increasing and, given the run's metrics.json, equal to its meta.snapshot_steps; SnapshotStoreError
(a ValueError naming the store and the steps) otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift.core import drift_metrics
from ftdrift.core.store import SnapshotStore, check_comparable, read_base, recorded_snapshot_steps
from ftdrift.study.grid import RUN_KEYS

BOOTSTRAP_METRIC = "linear_cka"  # the one estimator whose resamples are well defined (similarity module)
BOOTSTRAP_SEED = 0  # the same probe resamples for every run of a task: replicates average across runs


def _open(base_path, run_path, metrics_path=None) -> tuple[dict, SnapshotStore, dict]:
    base, base_attrs = read_base(base_path)
    store = SnapshotStore(run_path, mode="r", expected_steps=recorded_snapshot_steps(metrics_path),
                          expected_source=str(metrics_path))
    attrs = store.attrs
    check_comparable(base_path, base_attrs, run_path, attrs)
    return base, store, attrs


def drift_table(base_path, run_path, run: dict, metrics: list[str], metrics_path=None) -> pd.DataFrame:
    """Tidy rows: run fields, step, layer, layer_name, pooling, metric, value.

    `metrics_path`: the run's metrics.json, whose meta.snapshot_steps the store's steps must equal
    (None, or a file without that field: only the store's own check)."""
    base, store, attrs = _open(base_path, run_path, metrics_path)
    frames = []
    for pooling in attrs["poolings"]:
        steps, snapshots = store.read(pooling)
        for metric in metrics:
            values = drift_metrics.compute(metric, base[pooling], snapshots)
            s_idx, l_idx = np.meshgrid(np.arange(len(steps)), np.arange(values.shape[1]), indexing="ij")
            frames.append(pd.DataFrame({
                "step": steps[s_idx.ravel()], "layer": l_idx.ravel(),
                "layer_name": np.array(attrs["layer_names"])[l_idx.ravel()],
                "pooling": pooling, "metric": metric, "value": values.ravel()}))
    table = pd.concat(frames, ignore_index=True)
    for i, key in enumerate(RUN_KEYS):
        table.insert(i, key, run[key])
    return table


def drift_bootstrap(base_path, run_path, run: dict, metrics: list[str], n_resamples: int,
                    metrics_path=None) -> pd.DataFrame:
    """Bootstrap replicates over probe examples of the final snapshot's linear CKA vs the base.

    Tidy rows: run fields, step, layer, pooling, metric, replicate, value ([replicate] in
    0..n_resamples-1). Empty (columns only) when linear_cka is not in `metrics` or n_resamples is 0.
    The resamples come from a fixed seed, so replicate b of every run of a task resamples the same
    examples: a seed mean's or layer mean's replicates are the means of the runs' replicates.
    Cost: the two Grams of each layer (O(n^2 d), as the CKA itself) plus O(n^2) per replicate.
    `metrics_path`: as drift_table.
    """
    from ftdrift.core.similarity import bootstrap_linear_cka, probe_resamples

    columns = RUN_KEYS + ["step", "layer", "pooling", "metric", "replicate", "value"]
    if BOOTSTRAP_METRIC not in metrics or n_resamples == 0:
        return pd.DataFrame(columns=columns)
    base, store, attrs = _open(base_path, run_path, metrics_path)
    frames = []
    for pooling in attrs["poolings"]:
        steps, snapshots = store.read(pooling)
        final = snapshots[-1]
        indices = probe_resamples(final.shape[1], n_resamples, BOOTSTRAP_SEED)
        for layer in range(final.shape[0]):
            frames.append(pd.DataFrame({
                "step": int(steps[-1]), "layer": layer, "pooling": pooling, "metric": BOOTSTRAP_METRIC,
                "replicate": np.arange(n_resamples),
                "value": bootstrap_linear_cka(base[pooling][layer], final[layer], indices)}))
    table = pd.concat(frames, ignore_index=True)
    for i, key in enumerate(RUN_KEYS):
        table.insert(i, key, run[key])
    return table[columns]
