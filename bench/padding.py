"""Benchmark 2: dynamic padding + length-grouped batches vs padding every example to max length.

Training steps (forward, backward, gradient clipping, AdamW) of the embedded all-MiniLM-L6-v2,
fp32 on the CPU, micro-batch 8 (the smaller of the study's two batch sizes; keeps the padded
variant affordable on 2 cores), on the prepared SST-2 and RTE train splits:

* padded  -- random order, every example padded to 512 tokens (the study's classification
  max_length), what `padding="max_length"` in a tokenizer call gives;
* dynamic -- ftdrift's training input: ftdrift's seeded length-grouped sampler
  (ftdrift.training.trainer.EpochSeededLengthSampler) and DataCollatorWithPadding (pad to the longest
  example of each batch).

Both truncate at 512 and see batches of the same size from the same split; examples/s and
tokens/s (real, non-padding tokens) are over the timed steps, after one untimed warm-up step.
The padded variant is ~30x more work per step on SST-2, so it runs few steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import MINILM, data_dir, load, prepare
from _common import threads as limit_threads

MAX_LENGTH = 512


def _train_steps(model, optimizer, batches) -> tuple[float, int, int]:
    """(seconds, real tokens, padded tokens) of training on `batches`."""
    import torch

    model.train()
    real = padded = 0
    t0 = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    return time.perf_counter() - t0, real, padded


def bench_task(task: str, folder: Path, batch: int, dynamic_steps: int, padded_steps: int, seed: int) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from ftdrift.core import io
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.training.trainer import EpochSeededLengthSampler

    tokenizer = models.load_tokenizer(MINILM)
    set_seed(seed)
    model = models.load_model(MINILM, "classification", 2, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    records = io.read_jsonl(folder / "train.jsonl")
    ds = encode_classification(records, tokenizer, MAX_LENGTH)
    features = [{k: ds[i][k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in ds[i]}
                for i in range(len(ds))]
    lengths = ds["length"]

    dynamic_collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    padded_collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=MAX_LENGTH,
                                             return_tensors="pt")
    order = list(EpochSeededLengthSampler(batch, lengths=lengths, seed=seed))
    dynamic = [dynamic_collate([features[i] for i in order[s * batch:(s + 1) * batch]])
               for s in range(dynamic_steps + 1)]
    perm = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    padded = [padded_collate([features[i] for i in perm[s * batch:(s + 1) * batch]]) for s in range(padded_steps)]

    _train_steps(model, optimizer, dynamic[:1])  # warm-up (allocator, first-call overheads)
    out = {"train_examples": len(features), "mean_length": sum(lengths) / len(lengths), "max_length": max(lengths)}
    for name, batches in (("dynamic", dynamic[1:]), ("padded", padded)):
        seconds, real, total = _train_steps(model, optimizer, batches)
        n = len(batches) * batch
        out[name] = {"steps": len(batches), "seconds": seconds, "examples_per_s": n / seconds,
                     "tokens_per_s": real / seconds, "padding_fraction": 1 - real / total,
                     "tokens_per_batch": total / len(batches)}
    out["speedup"] = out["dynamic"]["examples_per_s"] / out["padded"]["examples_per_s"]
    return out


def run(data: str | None = None, batch: int = 8, n_threads: int = 1, seed: int = 42,
        steps: dict | None = None, scratch: Path | None = None) -> dict:
    steps = steps or {"sst2": (16, 1), "rte": (6, 1)}
    own = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ftdrift-bench-"))
    try:
        result = {"config": {"model": MINILM["name_or_path"], "micro_batch": batch, "precision": "fp32",
                             "torch_threads": n_threads, "max_length": MAX_LENGTH, "device": "cpu"},
                  "load_avg_before": load()}
        with limit_threads(n_threads):
            for task, (dyn, pad) in steps.items():
                folder, _ = prepare(task, data_dir(data), scratch)
                result[task] = bench_task(task, folder, batch, dyn, pad, seed)
        result["load_avg_after"] = load()
        return result
    finally:
        if own:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(run(a.data_dir, a.batch, a.threads), indent=2))
