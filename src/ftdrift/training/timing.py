"""Where a fine-tuning job's time goes: wall seconds per stage, logged at the end of the job and
kept in metrics.json's meta (`stage_seconds`) for docs/performance.md's breakdown."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import psutil

log = logging.getLogger("ftdrift.training.timing")

# inside trainer.train(): what is not one of these is the training steps themselves
IN_LOOP = ("dev evaluation", "snapshots", "checkpoint writes")


class StageClock:
    """Accumulates wall seconds per named stage (a stage may be entered many times)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add_start_up(self) -> None:
        """Seconds from this process's start to now: interpreter, imports, Snakemake's script preamble."""
        self.add("start-up", max(0.0, time.time() - psutil.Process().create_time()))

    def in_loop(self) -> float:
        """Seconds booked so far to the stages timed inside trainer.train() (IN_LOOP)."""
        return sum(self.seconds.get(k, 0.0) for k in IN_LOOP)

    def split_loop(self, loop_seconds: float, in_loop_before: float) -> None:
        """Book one trainer.train() call's wall time: its evaluations, snapshots and checkpoint writes
        (booked since `in_loop_before` = in_loop() at its start) were timed where they ran; the rest
        is the training steps (forward, backward, optimizer, logging). A call that raised (an
        out-of-memory attempt) is booked too."""
        self.add("training steps", max(0.0, loop_seconds - (self.in_loop() - in_loop_before)))

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 2) for name, value in self.seconds.items()}

    def log_summary(self, job: str) -> None:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {value:.1f}" for name, value in self.seconds.items())
        log.info("%s: %.1f s by stage (s): %s", job, total, parts)
