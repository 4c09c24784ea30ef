"""The drift metrics the study can compute: names, labels and which way is "unchanged".

Light on purpose (no numpy/torch): the config check, the tables and the report read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    similarity: bool  # True: 1 = identical to the base model; False: a distance, 0 = identical

    @property
    def drift_label(self) -> str:
        return f"drift = 1 − {self.name}" if self.similarity else f"drift = {self.name}"

    @property
    def value_label(self) -> str:
        return f"{self.name} vs base model ({'1' if self.similarity else '0'} = unchanged)"


DRIFT_METRICS = {
    "linear_cka": MetricInfo("linear CKA", True),
    "debiased_cka": MetricInfo("debiased linear CKA", True),
    "cosine": MetricInfo("cosine similarity", True),
    "procrustes": MetricInfo("Procrustes distance", False),
}


def metric_info(metric: str) -> MetricInfo:
    return DRIFT_METRICS.get(metric, MetricInfo(metric.replace("_", " "), True))


def to_drift(metric: str, values):
    """Similarity -> drift (1 - s); distances pass through. 0 = unchanged either way."""
    return 1 - values if metric_info(metric).similarity else values
