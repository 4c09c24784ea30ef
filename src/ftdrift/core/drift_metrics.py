"""The drift metrics: one registry of what each is called, which way is "unchanged", and how
it is computed. The config schema's `drift.metrics` enum is checked against it (tests), drift
tables compute through it, tables and the report label with it.

Light to import: ftdrift.core.similarity (numpy, torch) is loaded only when a value is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def _similarity():
    from ftdrift.core import similarity  # heavy: only where drift is computed

    return similarity


def _procrustes(base: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    sim = _similarity()
    return np.array([[sim.procrustes_distance(base[layer], snapshot[layer]) for layer in range(base.shape[0])]
                     for snapshot in snapshots])


@dataclass(frozen=True)
class MetricInfo:
    name: str
    similarity: bool  # True: 1 = identical to the base model; False: a distance, 0 = identical
    # base [layer, example, hidden], snapshots [snapshot, layer, example, hidden] -> [snapshot, layer]
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def drift_formula(self) -> str:
        """What a drift value is: '1 − linear CKA' for a similarity, the distance's name otherwise."""
        return f"1 − {self.name}" if self.similarity else self.name

    @property
    def drift_label(self) -> str:
        return f"drift = {self.drift_formula}"

    @property
    def value_label(self) -> str:
        return f"{self.name} vs base model ({'1' if self.similarity else '0'} = unchanged)"


DRIFT_METRICS = {
    "linear_cka": MetricInfo("linear CKA", True, lambda base, snaps: _similarity().cka_matrix(base, snaps)),
    "debiased_cka": MetricInfo("debiased linear CKA", True,
                               lambda base, snaps: _similarity().cka_matrix(base, snaps, debiased=True)),
    "cosine": MetricInfo("cosine similarity", True, lambda base, snaps: _similarity().cosine_matrix(base, snaps)),
    "procrustes": MetricInfo("Procrustes distance", False, _procrustes),
}


def metric_info(metric: str) -> MetricInfo:
    return DRIFT_METRICS.get(metric, MetricInfo(metric.replace("_", " "), True))


def compute(metric: str, base: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """[snapshot, layer] values of `metric` for every snapshot layer against the same base layer."""
    if metric not in DRIFT_METRICS:
        raise ValueError(f"config key 'drift.metrics': unknown metric '{metric}' (known: {sorted(DRIFT_METRICS)})")
    return DRIFT_METRICS[metric].compute(base, snapshots)


def to_drift(metric: str, values):
    """Similarity -> drift (1 - s); distances pass through. 0 = unchanged either way."""
    return 1 - values if metric_info(metric).similarity else values
