"""The out-of-memory policies of a fine-tuning job (its rule has `retries: 0`).

Training (`with_retries`): only out-of-memory errors are retried, in the same process, from the
last checkpoint: with half the micro-batch and twice the gradient accumulation
(ftdrift.study.resources.micro_batch_plan: the same effective batch, and by ftdrift.core.loss the
same objective), from the third attempt with activation checkpointing too, until the plan cannot
shrink further. Any other error (data, config, a bug) propagates at once: retrying it would only
repeat it.

Forward-only passes split their own batch instead (ftdrift.core.memory.BatchSplitter); a
single example that does not fit there (EvalOutOfMemoryError) is not retried here: a smaller
training micro-batch would not make it fit.
"""

from __future__ import annotations

import gc
import logging
from typing import Callable, TypeVar

from accelerate.utils.memory import clear_device_cache

from ftdrift.core.memory import EvalOutOfMemoryError, is_out_of_memory  # noqa: F401 - the policy's classification
from ftdrift.study.resources import micro_batch_plan

log = logging.getLogger("ftdrift.training.oom")
T = TypeVar("T")


def with_retries(attempt: Callable[[dict, int], T], batch_size: int, max_micro_batch: int) -> tuple[T, int, dict]:
    """Call `attempt(plan, number)` for plans 1, 2, ... until one fits in memory.

    Returns (its result, the attempt number, the plan). Re-raises every other error, and an
    out-of-memory error once the plan cannot shrink.
    """
    number = 1
    while True:
        plan = micro_batch_plan(batch_size, max_micro_batch, number)
        try:
            return attempt(plan, number), number, plan
        except Exception as err:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
            if not is_out_of_memory(err) or micro_batch_plan(batch_size, max_micro_batch, number + 1) == plan:
                raise
            log.warning("out of memory at micro-batch %d (attempt %d): %s; retrying from the last checkpoint "
                        "with half the micro-batch", plan["micro_batch"], number, err)
        gc.collect()  # the failed attempt's model, optimizer and activations (after the except block)
        clear_device_cache(garbage_collection=True)
        number += 1
