"""Measuring for the deployment benchmark: call times with torch.utils.benchmark, tensor bytes,
resident memory, and the machine and library versions the numbers belong to.

Times come from `torch.utils.benchmark.Timer`, whose default timer synchronises the accelerator
before it reads the clock, so a GPU call is timed to its end. Three ways of sampling:

* `per_call` (forward passes, full-model loads): `Timer.adaptive_autorange` with no variability
  threshold, i.e. torch's 4 samples and at least `min_run_time` seconds, stopped at RUN_TIME_CAP ×
  `min_run_time` (then fewer samples: see the `samples` column); torch sizes the block and for
  calls of about 10 ms or more takes one call per sample (its first call is the warm-up, untimed).
  Faster calls come back in blocks; they are timed again as `single_calls`, so latency
  percentiles are always percentiles of single calls.
* `single_calls`: `Timer.timeit(1)` repeated and merged with `Measurement.merge` (number_per_run
  1). Each `timeit(1)` first runs the statement twice untimed (torch's warm-up).
* `blocked`: `Timer.blocked_autorange`, for calls of microseconds (set_adapter) where one call is
  too short to time alone; its samples are means over blocks of `calls_per_sample` calls.

Memory: on CPU, transformers keeps safetensors weights memory-mapped and the pages enter the
process's resident set only when read; `page_in` reads every weight once, so an RSS delta counts
the weights a served model holds (shared with the page cache: other processes mapping the same
file share them).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import platform
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import peft
import psutil
import torch
import transformers
from torch.utils import benchmark

from ftdrift.analysis.checkpoints import exact_float32
from ftdrift.core.precision import autocast
from ftdrift.representations.extract import make_batches

PERCENTILES = (50, 95, 99)
SINGLE_CALL_MIN_SAMPLES = 10  # single calls are fast (< ~10 ms): enough of them for a tail
# a case stops after 4 samples or this many times min_run_time, whichever comes first (but not
# before min_run_time): slow CPU calls (seconds at batch 32) then get 2-3 samples, not 4
RUN_TIME_CAP = 10


# ---- the timed calls: inputs as the runs' probe is batched, forward passes as served ----

def on_device(batch: Mapping, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def probe_batches(features: list[dict], tokenizer, batch_size: int, device: torch.device) -> list[dict]:
    """The probe as `make_batches` pads it, every batch exactly `batch_size` examples (the probe
    cycled up to a multiple of the batch size), on `device`, in a fixed shuffled order: make_batches
    sorts by length, and a benchmark that stops after a few calls must not see only the shortest."""
    n = -(-len(features) // batch_size) * batch_size
    batches = [on_device(b, device) for b, _ in make_batches([features[i % len(features)] for i in range(n)],
                                                              tokenizer, batch_size)]
    random.Random(0).shuffle(batches)
    return batches


def mixed_batches(features: Mapping[str, list[dict]], tokenizer, batch_size: int, device: torch.device
                  ) -> list[tuple[dict, list[str]]]:
    """Batches of `batch_size` probe examples mixing the tasks of `features` (task -> probe features):
    example i of the stream is task i mod N's next probe example; as many batches as the shortest
    probe lasts (at least one). Each comes with its rows' tasks (make_batches sorts rows by length)."""
    tasks = list(features)
    n = max(1, len(tasks) * min(len(f) for f in features.values()) // batch_size)
    out = []
    for start in range(0, n * batch_size, batch_size):
        stream = range(start, start + batch_size)
        owners = [tasks[i % len(tasks)] for i in stream]
        chosen = [features[t][(i // len(tasks)) % len(features[t])] for i, t in zip(stream, owners, strict=True)]
        ((batch, positions),) = make_batches(chosen, tokenizer, batch_size)
        out.append((on_device(batch, device), [owners[p] for p in positions]))
    return out


def split_by_task(batch: Mapping, owners: Sequence[str]) -> dict[str, dict]:
    """task -> the rows of `batch` that belong to it (as padded in the batch), in order of appearance."""
    return {t: {k: v[[i for i, o in enumerate(owners) if o == t]] for k, v in batch.items()}
            for t in dict.fromkeys(owners)}


def output_tensor(outputs) -> torch.Tensor:
    """[batch, ...] float32 of every *logits output (classification: logits; QA: start and end)."""
    return torch.stack([v.float() for k, v in outputs.items() if k.endswith("logits")], dim=-1)


def run(model, batch: Mapping, precision: str, device: torch.device, **kwargs):
    """One forward pass as served: inference mode, autocast in `precision`."""
    with torch.inference_mode(), autocast(precision, device):
        return model(**batch, **kwargs)


def cycling(items: Sequence, fn) -> Callable[[], None]:
    """A call applying `fn` to the next of `items`, cycling: the statement a Timer repeats."""
    it = itertools.cycle(items)
    return lambda: fn(next(it))


@torch.inference_mode()
def max_diff(a, b, batches: Sequence[dict]) -> float:
    """Largest |output difference| of models `a` and `b` over `batches`, float32 without TF32."""
    with exact_float32():
        return max(float((output_tensor(a(**x)) - output_tensor(b(**x))).abs().max()) for x in batches)


# ---- timing ----


def _timer(fn, threads: int) -> benchmark.Timer:
    # num_threads: Timer runs on 1 thread unless told; the job's own thread count is the setting measured
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)


def single_calls(fn, *, min_run_time: float, threads: int, min_samples: int = SINGLE_CALL_MIN_SAMPLES,
                 samples: int | None = None) -> benchmark.Measurement:
    """Per-call times of `fn()`: `Timer.timeit(1)` until the timed calls add up to `min_run_time`
    seconds and there are `min_samples` of them (exactly `samples` when given), merged into one
    Measurement with number_per_run = 1. Each sample follows torch's two warm-up calls."""
    timer, measured = _timer(fn, threads), []
    while (len(measured) < samples if samples is not None
           else len(measured) < min_samples or sum(m.raw_times[0] for m in measured) < min_run_time):
        measured.append(timer.timeit(1))
    (merged,) = benchmark.Measurement.merge(measured)
    return merged


def per_call(fn, *, min_run_time: float, threads: int) -> benchmark.Measurement:
    """Per-call times of `fn()`: adaptive_autorange (4 samples and ≥ `min_run_time` s, at most
    RUN_TIME_CAP × min_run_time; warm-up excluded); calls torch timed in blocks (too fast for one
    call per sample) are timed again as single_calls."""
    measurement = _timer(fn, threads).adaptive_autorange(threshold=math.inf, min_run_time=min_run_time,
                                                         max_run_time=RUN_TIME_CAP * min_run_time)
    if measurement.number_per_run == 1:
        return measurement
    return single_calls(fn, min_run_time=min_run_time, threads=threads)


def blocked(fn, *, min_run_time: float, threads: int) -> benchmark.Measurement:
    """`Timer.blocked_autorange(min_run_time)` of `fn()`: block means, block size chosen by torch."""
    return _timer(fn, threads).blocked_autorange(min_run_time=min_run_time)


def summarise(measurement: benchmark.Measurement, batch_size: int | None = None) -> dict:
    """Statistics of a Measurement in milliseconds per call: samples, calls_per_sample, mean_ms,
    median_ms, iqr_ms, p50_ms, p95_ms, p99_ms (numpy's linear interpolation between samples),
    min_ms, max_ms; and examples_per_s = batch_size / mean when a batch size is given."""
    times = np.asarray(measurement.times, dtype=float) * 1e3
    row = {"samples": len(times), "calls_per_sample": measurement.number_per_run,
           "mean_ms": float(times.mean()), "median_ms": measurement.median * 1e3, "iqr_ms": measurement.iqr * 1e3}
    row.update({f"p{q}_ms": float(np.percentile(times, q)) for q in PERCENTILES})
    row.update(min_ms=float(times.min()), max_ms=float(times.max()))
    if batch_size is not None:
        row["examples_per_s"] = batch_size / (row["mean_ms"] / 1e3)
    return row


def tensor_bytes(module: torch.nn.Module) -> dict:
    """{'param_bytes', 'buffer_bytes'} of `module`: numel × element size of every parameter and
    buffer, each tensor once (tied weights count once, as `parameters()` yields them once)."""
    return {"param_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in module.buffers())}


def page_in(modules: Sequence[torch.nn.Module]) -> None:
    """Read every parameter and buffer once (memory-mapped weights are paged in by the read)."""
    with torch.no_grad():
        for module in modules:
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                tensor.sum()


def memory_probe(device: torch.device) -> tuple[str, Callable[[], int]]:
    """(what is measured, a function returning the current bytes) on `device`: CUDA's
    `memory_allocated` on a GPU, else the process's resident set size (psutil)."""
    if device.type == "cuda":
        return "torch.cuda.memory_allocated delta", lambda: torch.cuda.memory_allocated(device)
    process = psutil.Process()
    return "process RSS delta (CPU, psutil)", lambda: process.memory_info().rss


@dataclass
class Resident:
    """What loading inside `resident(device)` added: `bytes` and how they were measured (`how`)."""

    how: str = ""
    bytes: int = 0
    _start: int = field(default=0, repr=False)


@contextmanager
def resident(device: torch.device):
    """Measure the memory that stays allocated after the block (garbage collected before and after).

    An RSS delta counts what the allocator kept from the process's view, load-time temporaries
    freed to its free lists included; on CUDA the allocated tensors only.
    """
    how, current = memory_probe(device)
    gc.collect()
    result = Resident(how=how, _start=current())
    yield result
    gc.collect()
    result.bytes = current() - result._start


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """The machine the timings belong to: device, CPU model and threads, GPU name where used."""
    info = {"device": device.type, "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        info.update(gpu_name=torch.cuda.get_device_name(device), gpu_count=torch.cuda.device_count(),
                    gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return info


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
