"""Drift of a run's representations away from the base model, per snapshot and layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift.core import similarity
from ftdrift.core.store import SnapshotStore, read_base


def _metric_matrix(metric: str, base: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """[snapshot, layer] values of one similarity metric."""
    if metric == "linear_cka":
        return similarity.cka_matrix(base, snapshots)
    if metric == "debiased_cka":
        return similarity.cka_matrix(base, snapshots, debiased=True)
    if metric == "cosine":
        return similarity.cosine_matrix(base, snapshots)
    if metric == "procrustes":
        return np.array([[similarity.procrustes_distance(base[l], snap[l]) for l in range(base.shape[0])]
                         for snap in snapshots])
    raise ValueError(f"config key 'drift.metrics': unknown metric '{metric}'")


def drift_table(base_path, run_path, run: dict, metrics: list[str]) -> pd.DataFrame:
    """Tidy rows: run fields, step, layer, layer_name, pooling, metric, value."""
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
    frames = []
    for pooling in attrs["poolings"]:
        steps, snapshots = store.read(pooling)
        for metric in metrics:
            values = _metric_matrix(metric, base[pooling], snapshots)
            s_idx, l_idx = np.meshgrid(np.arange(len(steps)), np.arange(values.shape[1]), indexing="ij")
            frames.append(pd.DataFrame({
                "step": steps[s_idx.ravel()], "layer": l_idx.ravel(),
                "layer_name": np.array(attrs["layer_names"])[l_idx.ravel()],
                "pooling": pooling, "metric": metric, "value": values.ravel()}))
    table = pd.concat(frames, ignore_index=True)
    for key in ("task", "method", "lr", "batch_size", "seed"):
        table.insert(list(run).index(key), key, run[key])
    return table
