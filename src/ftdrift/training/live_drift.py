"""Drift on W&B while a job trains: each snapshot's linear CKA against the base model, per layer
and as the mean over layers, logged to the job's run as soon as the snapshot is taken.

The values are drift.csv's (ftdrift.analysis.drift.drift_table, metric linear_cka): the same
stores, the same checks (probe set, precision) and the same function
(ftdrift.core.drift_metrics.compute -> ftdrift.core.similarity.cka_matrix), one snapshot at a time
instead of all at once (equal to float64 rounding, ~1e-15).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from ftdrift.core import drift_metrics
from ftdrift.core.store import SnapshotStore, check_comparable, read_base
from ftdrift.training.tracking import RunRecord

log = logging.getLogger(__name__)
METRIC = "linear_cka"


def drift_key(pooling: str, layer: str) -> str:
    """The W&B key of one value: `drift/linear_cka/<pooling>/<layer name or "mean">`."""
    return f"drift/{METRIC}/{pooling}/{layer}"


def snapshot_drift(base: dict[str, np.ndarray], store: SnapshotStore, index: int,
                   poolings: tuple[str, ...]) -> dict[str, float] | None:
    """Linear CKA of snapshot `index` of `store` against `base` ({pooling: [layer, example, hidden]}),
    per layer (named by the store's `layer_names`) and its mean over layers, keyed by `drift_key`.
    None if the snapshot holds a NaN or infinite value (a diverging run; the CKA is undefined)."""
    names = store.attrs["layer_names"]
    values = {}
    for pooling in poolings:
        snapshot = store.group[pooling][index]  # [layer, example, hidden]: one snapshot, not the run's array
        if not np.isfinite(snapshot).all():
            return None
        cka = drift_metrics.compute(METRIC, base[pooling], snapshot[None])[0]  # [layer]
        values.update({drift_key(pooling, name): float(v) for name, v in zip(names, cka, strict=True)})
        values[drift_key(pooling, "mean")] = float(cka.mean())
    return values


class LiveDrift(TrainerCallback):
    """Logs the drift of every snapshot not logged yet to the active W&B run (`wandb.log`, with
    `train/global_step` = the snapshot's step, the x-axis WandbCallback defines).

    Place it after the SnapshotCallback (callbacks run in list order): at train begin, each step
    end and train end it logs the snapshots that callback has written. Nothing is logged while no
    run is active (`wandb.run` is None, e.g. W&B disabled, or before WandbCallback started the run):
    those snapshots follow at the next event with a run.

    base_store_path: the task's base representations (ftdrift.core.store.write_base).
    store: the run's SnapshotStore, or its path (opened afresh at each event).
    poolings: the poolings to log (each in both stores).
    every: the SnapshotCallback's cadence (steps); between cadence steps the store is not read.
    work_dir: the job's work folder, whose `RunRecord` lists the snapshot steps already logged, so a
        resumed or retried job that retakes a snapshot does not send it again; default: the store's
        parent folder (where the recipe keeps it).
    A base store taken on other probe examples or in another precision than the run (drift.csv
    refuses the pair too) is reported once as a warning and nothing is logged. Raises
    FileNotFoundError (zarr) if `base_store_path` does not exist.
    """

    def __init__(self, base_store_path: Path, store: SnapshotStore | Path, poolings, work_dir: Path | None = None,
                 every: int = 1):
        self.every = every  # the snapshot cadence: other steps add no snapshot, so they read no store
        self.base_store_path = Path(base_store_path)
        self.store = store
        self.poolings = tuple(poolings)
        store_path = store.path if isinstance(store, SnapshotStore) else Path(store)
        self.record = RunRecord(work_dir if work_dir is not None else store_path.parent)
        self._base: dict[str, np.ndarray] | None = None  # read once, at the first snapshot to log
        self._disabled = False
        self._seen: set[int] = set()  # steps known to be logged: the record is read only for new ones

    def _open_store(self) -> SnapshotStore:
        return self.store if isinstance(self.store, SnapshotStore) else SnapshotStore(self.store, mode="r")

    def _read_base(self, store: SnapshotStore) -> dict[str, np.ndarray] | None:
        if self._base is None and not self._disabled:
            # drift.csv's own pairing checks, so a pair it refuses is not shown live either
            try:
                base, base_attrs = read_base(self.base_store_path)
                attrs = store.attrs
                check_comparable(self.base_store_path, base_attrs, store.path, attrs)
            except ValueError as err:
                log.warning("live drift off: %s", err)
                self._disabled = True
                return None
            missing = [p for p in self.poolings if p not in base or p not in attrs["poolings"]]
            if missing:
                raise ValueError(f"LiveDrift poolings {missing} are not in both {self.base_store_path} "
                                 f"({sorted(base)}) and {store.path} ({attrs['poolings']})")
            self._base = {p: base[p] for p in self.poolings}
        return self._base

    def log_new(self) -> list[int]:
        """Log the snapshots not logged yet (when a W&B run is active); returns their steps."""
        import wandb

        if wandb.run is None or self._disabled:
            return []
        store = self._open_store()
        steps = store.steps()
        if set(steps) <= self._seen:
            return []
        done = self.record.drift_steps()
        sent = []
        for index, step in enumerate(steps):
            if step in done:
                continue
            base = self._read_base(store)
            if base is None:
                return sent
            values = snapshot_drift(base, store, index, self.poolings)
            if values is None:
                log.warning("live drift: the snapshot at step %d of %s holds non-finite values; not logged",
                            step, store.path)
            else:
                wandb.log({**values, "train/global_step": step})
                sent.append(step)
            self.record.mark_drift(step)
        self._seen.update(steps)
        return sent

    def _event(self, state) -> None:
        if state.is_world_process_zero:
            self.log_new()

    def on_train_begin(self, args, state, control, **kwargs):
        self._event(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._event(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._event(state)
