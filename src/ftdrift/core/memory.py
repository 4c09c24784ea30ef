"""Out-of-memory errors of forward-only passes (dev evaluation, probe snapshots, predictions, the
adapter input check), which run at config `representations.batch_size`: no training plan changes
it, so an out-of-memory error there splits *that* batch in halves (`BatchSplitter`), down to one
example, and later batches start at the size that fitted. Nothing is re-trained, and the results
do not depend on the split: each example's outputs depend on its own row only (eval mode), and a
piece of an already padded batch keeps the batch's padding length; only the last bits may differ,
as kernels pick their blocking by the number of rows (float32 on the CPU: up to 1 ulp, measured in
tests/training/test_oom_eval.py), and the same pieces give the same bits. A single example that does not
fit raises `EvalOutOfMemoryError`, which the training retry (ftdrift.training.oom) does not retry.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

log = logging.getLogger("ftdrift.training.oom")  # one logger for both out-of-memory policies
T = TypeVar("T")


class EvalOutOfMemoryError(RuntimeError):
    """A forward-only pass ran out of memory on a batch of one example: no split can help."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA/CPU allocation failures that a smaller batch may avoid (torch's own type, or
    accelerate's classification); not EvalOutOfMemoryError, which already went down to one example."""
    if isinstance(err, EvalOutOfMemoryError):
        return False
    return isinstance(err, torch.OutOfMemoryError) or should_reduce_batch_size(err)


def batch_rows(batch: dict) -> int:
    """The number of examples of a collated batch: dimension 0 of its first tensor."""
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(f"a batch without a tensor input (keys: {sorted(batch)})")


def split_batch(batch: dict, size: int) -> list[dict]:
    """`batch` cut along dimension 0 into pieces of at most `size` rows, in order (views, no copy).

    Tensors and lists with one entry per row are cut; anything else (a flag, a scalar) goes to
    every piece as it is. The padding length (dimension 1) is the batch's own in every piece.
    """
    rows = batch_rows(batch)
    pieces = []
    for start in range(0, rows, size):
        piece = {}
        for key, value in batch.items():
            per_row = (torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows) or \
                (isinstance(value, (list, tuple)) and len(value) == rows)
            piece[key] = value[start:start + size] if per_row else value
        pieces.append(piece)
    return pieces


class BatchSplitter:
    """Runs a forward-only function on a batch, splitting the batch in halves on out-of-memory.

    `run(fn, batch)` returns `[fn(batch)]` when it fits (one try/except: no cost on that path),
    otherwise `fn` of each piece, in row order, for the caller to concatenate. The largest size
    that fitted is kept in `limit`: later batches are cut to it before their first try. `what`
    names the pass and its config key for the error of a single example that does not fit
    (EvalOutOfMemoryError, from the original error).
    """

    def __init__(self, what: str):
        self.what = what
        self.limit: int | None = None  # rows per piece after an out-of-memory error; None: whole batches

    def run(self, fn: Callable[[dict], T], batch: dict) -> list[T]:
        # the normal path (no error so far, `limit` None) does no more than call `fn` under a try
        if self.limit is None or batch_rows(batch) <= self.limit:
            try:
                return [fn(batch)]
            except Exception as err:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
                if not is_out_of_memory(err):
                    raise
                rows = batch_rows(batch)
                if rows == 1:
                    raise EvalOutOfMemoryError(
                        f"{self.what}: a single example does not fit in memory, so no smaller batch can help "
                        f"(a shorter data.max_length or a larger device would): {err}") from err
                log.warning("%s: out of memory at a batch of %d; splitting it (and later batches) into pieces "
                            "of %d", self.what, rows, (rows + 1) // 2)
            # after the except block, so the failed pass's activations (held by the traceback) can go
            clear_device_cache(garbage_collection=True)
            self.limit = (rows + 1) // 2
        return [result for piece in split_batch(batch, self.limit) for result in self.run(fn, piece)]


def concat_rows(parts: list[Any]) -> Any:
    """Per-piece outputs (tensors, or tuples/lists of them, or None) concatenated along dimension 0."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(concat_rows([part[i] for part in parts]) for i in range(len(first)))
    return torch.cat(parts, dim=0)
