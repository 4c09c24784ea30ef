"""Drift of a run's representations away from the base model, per snapshot and layer, and the
bootstrap over probe examples of its final linear CKA (ftdrift.core.similarity)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift.core import drift_metrics
from ftdrift.core.store import SnapshotStore, read_base
from ftdrift.study.grid import RUN_KEYS

BOOTSTRAP_METRIC = "linear_cka"  # the one estimator whose resamples are well defined (similarity module)
BOOTSTRAP_SEED = 0  # the same probe resamples for every run of a task: replicates average across runs


def _open(base_path, run_path) -> tuple[dict, SnapshotStore, dict]:
    base, base_attrs = read_base(base_path)
    store = SnapshotStore(run_path, mode="r")
    attrs = store.attrs
    if attrs["probe_ids"] != base_attrs["probe_ids"]:
        raise ValueError(f"{run_path} and {base_path} were taken on different probe sets")
    if attrs.get("precision", "fp32") != base_attrs.get("precision", "fp32"):
        # e.g. the base extracted on a CPU (fp32), the run trained on a GPU (bf16 under 'auto')
        raise ValueError(f"{run_path} was taken in {attrs.get('precision')} but {base_path} in "
                         f"{base_attrs.get('precision')}: drift would include the rounding difference. Run "
                         "base_representations where the runs train, or set config key 'training.precision'")
    return base, store, attrs


def drift_table(base_path, run_path, run: dict, metrics: list[str]) -> pd.DataFrame:
    """Tidy rows: run fields, step, layer, layer_name, pooling, metric, value."""
    base, store, attrs = _open(base_path, run_path)
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


def drift_bootstrap(base_path, run_path, run: dict, metrics: list[str], n_resamples: int) -> pd.DataFrame:
    """Bootstrap replicates over probe examples of the final snapshot's linear CKA vs the base.

    Tidy rows: run fields, step, layer, pooling, metric, replicate, value ([replicate] in
    0..n_resamples-1). Empty (columns only) when linear_cka is not in `metrics` or n_resamples is 0.
    The resamples come from a fixed seed, so replicate b of every run of a task resamples the same
    examples: a seed mean's or layer mean's replicates are the means of the runs' replicates.
    Cost: the two Grams of each layer (O(n^2 d), as the CKA itself) plus O(n^2) per replicate.
    """
    from ftdrift.core.similarity import bootstrap_linear_cka, probe_resamples

    columns = RUN_KEYS + ["step", "layer", "pooling", "metric", "replicate", "value"]
    if BOOTSTRAP_METRIC not in metrics or n_resamples == 0:
        return pd.DataFrame(columns=columns)
    base, store, attrs = _open(base_path, run_path)
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
