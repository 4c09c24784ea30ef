"""Evidence behind the findings in docs/performance.md (not part of run_all).

    python bench/investigate.py monitor        # TrainingMonitor's per-step cost vs a training step
    python bench/investigate.py blas-threads   # cka_matrix with 1 vs 2 BLAS threads

Each prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from _common import MINILM, load, median
from _common import threads as limit_threads


def _timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def monitor(n_threads: int = 1, batch: int = 16, seq: int = 24, repeats: int = 15) -> dict:
    """Per-step work of TrainingMonitor.on_pre_optimizer_step on a non-logging step (finiteness
    of the Trainer's pre-clip norm, clip counter) next to the Trainer's own clip_grad_norm_ pass
    and a whole training step of MiniLM at SST-2-like length."""
    import torch

    from ftdrift.modeling import models
    from ftdrift.training.monitor import TrainingMonitor

    with limit_threads(n_threads):
        tokenizer = models.load_tokenizer(MINILM)
        model = models.load_model(MINILM, "classification", 2, tokenizer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        inputs = {"input_ids": torch.randint(1000, 2000, (batch, seq)),
                  "attention_mask": torch.ones(batch, seq, dtype=torch.long),
                  "labels": torch.zeros(batch, dtype=torch.long)}
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            model(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

        step()
        step_s = _timeit(step, repeats)
        model(**inputs).loss.backward()
        mon = TrainingMonitor(batch, Path(tempfile.gettempdir()) / "no-checkpoints")
        args = SimpleNamespace(max_grad_norm=1.0, logging_steps=10)
        state = SimpleNamespace(global_step=0)

        total = torch.nn.utils.clip_grad_norm_(params, float("inf"))

        def monitor_call():
            state.global_step += 10  # +1 below: never a logging step
            mon.observe_grad_norm(total)
            mon.on_pre_optimizer_step(args, SimpleNamespace(global_step=state.global_step), None, model=model)

        monitor_s = _timeit(monitor_call, repeats * 2)
        clip_s = _timeit(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), repeats * 2)
    return {"threads": n_threads, "batch": batch, "seq": seq, "grad_elements": sum(p.numel() for p in params),
            "train_step_s": step_s, "monitor_per_step_s": monitor_s, "clip_grad_norm_s": clip_s,
            "monitor_share_of_step": monitor_s / step_s, "load_avg": load()}


def blas_threads(repeats: int = 2) -> dict:
    import cka
    from threadpoolctl import threadpool_limits

    from ftdrift.core.similarity import cka_matrix

    base, snaps = cka.make_inputs(7, 10, 1000, 384)
    out = {"load_avg_before": load()}
    for n in (1, 2):
        with threadpool_limits(n):
            out[f"cka_matrix_s_{n}_threads"] = min(
                _timeit(lambda: cka_matrix(base, snaps, device="cpu"), 1) for _ in range(repeats))
    out["load_avg_after"] = load()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["monitor", "blas-threads"])
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.what == "monitor":
        res = monitor(a.threads)
    else:
        res = blas_threads()
    print(json.dumps(res, indent=2))
