"""Snapshots of the probe set's representations during training (a Trainer callback)."""

from __future__ import annotations

import time

from transformers import TrainerCallback

from ftdrift.core.memory import BatchSplitter
from ftdrift.core.store import SnapshotStore
from ftdrift.representations.extract import extract


class SnapshotCallback(TrainerCallback):
    """Snapshots the probe-set representations at step 0, every N steps, and at the end.

    A probe batch that runs out of memory is split in halves (ftdrift.core.memory.BatchSplitter),
    and every later snapshot starts at the size that fitted: the training run goes on, nothing
    is re-trained, and the representations do not depend on the split.
    """

    def __init__(self, store: SnapshotStore, batches: list[dict], poolings: tuple[str, ...],
                 every: int, dtype: str, precision: str = "fp32", clock=None):
        self.store, self.batches, self.poolings = store, batches, poolings
        self.every, self.dtype, self.precision = every, dtype, precision
        self.clock = clock  # ftdrift.training.timing.StageClock, or None
        self.splitter = BatchSplitter("probe snapshot (config representations.batch_size)")

    def _snapshot(self, model, step: int) -> None:
        if step in self.store.steps():
            return  # taken before a restart: resume keeps it
        started = time.perf_counter()
        self.store.append(step, extract(model, self.batches, self.poolings, self.dtype, precision=self.precision,
                                        splitter=self.splitter))
        if self.clock is not None:
            self.clock.add("snapshots", time.perf_counter() - started)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # a resumed run redoes the steps after its checkpoint: drop the snapshots it will retake.
        # Snapshot only where an uninterrupted run does (step 0, the cadence): a checkpoint between
        # two cadence steps must not add one (found by tests/system/chaos_slurm.py)
        self.store.truncate_after(state.global_step)
        if state.global_step == 0 or state.global_step % self.every == 0:
            self._snapshot(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._snapshot(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._snapshot(model, state.global_step)
