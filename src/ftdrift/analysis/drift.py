"""Drift of a run's representations away from the base model, per snapshot and layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift.core import drift_metrics
from ftdrift.core.store import SnapshotStore, read_base
from ftdrift.study.grid import RUN_KEYS


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
