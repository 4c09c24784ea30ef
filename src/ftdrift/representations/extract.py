"""Layer representations of the probe set: pooling and extraction (one forward pass per batch)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from ftdrift.core.memory import BatchSplitter
from ftdrift.core.precision import autocast

POOLINGS = ("mean", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, dim] -> [batch, dim]: mean over real tokens, or the last real token (right padding)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling '{pooling}' (known: {POOLINGS})")


def make_batches(features: list[dict], tokenizer, batch_size: int) -> list[tuple[dict, list[int]]]:
    """Fixed, padded batches of similar length, each with the probe positions it holds.

    Sorting by length roughly halves the padded tokens of a probe pass; `extract` puts the
    results back in probe order. No sampler is involved, so no RNG is consumed.
    """
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [(collate([features[i] for i in chunk]), chunk) for chunk in chunks]


@torch.no_grad()
def extract(model, batches: list[tuple[dict, list[int]]], poolings: tuple[str, ...], dtype: str = "float16",
            progress: str | None = None, precision: str = "fp32", splitter: BatchSplitter | None = None
            ) -> dict[str, np.ndarray]:
    """Pooled hidden states of every layer: {pooling: [layer, example, hidden]} in `dtype`.

    The forward pass runs under autocast in `precision` (ftdrift.core.precision: the training
    precision, for base models and snapshots alike); pooling is done in float32, as `pool` does it.
    A batch that runs out of memory is split in halves by `splitter` (ftdrift.core.memory; pass
    one to keep its reduced size across calls, as the snapshot callback does); the results do not
    depend on the split (to float rounding, see ftdrift.core.memory). Raises ValueError for an
    unknown pooling (before any forward pass), and ftdrift.core.memory.EvalOutOfMemoryError when a
    single example does not fit.
    """
    for p in poolings:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling '{p}' (known: {POOLINGS})")
    splitter = splitter or BatchSplitter("probe representations (config representations.batch_size)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    forward = partial(_pooled_layers, model, poolings=poolings, precision=precision, device=device)
    out: dict[str, list[torch.Tensor]] = {p: [] for p in poolings}
    positions: list[int] = []
    for batch, chunk in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        positions.extend(chunk)
        for pooled in splitter.run(forward, {k: v.to(device) for k, v in batch.items()}):
            for p in poolings:
                out[p].append(pooled[p])
    if was_training:
        model.train()
    inverse = torch.empty(len(positions), dtype=torch.long)
    inverse[torch.tensor(positions)] = torch.arange(len(positions))
    return {p: torch.cat(chunks, dim=1)[:, inverse].numpy().astype(dtype) for p, chunks in out.items()}


def _pooled_layers(model, batch: dict, poolings: tuple[str, ...], precision: str, device: torch.device
                   ) -> dict[str, torch.Tensor]:
    """One forward pass of `batch` (on `device`, the model's): {pooling: [layer, batch, hidden]} float32 on the CPU."""
    with autocast(precision, device):
        outputs = model(**batch, output_hidden_states=True)
    # Pool each layer's hidden state as it comes: stacking all layers into one float32
    # [layer, batch, seq, dim] tensor first costs a copy of every layer (and the mask
    # product another), which made a snapshot measurably dearer than the bare forward pass.
    mask = batch["attention_mask"]
    weights = mask.to(torch.float32).unsqueeze(-1)  # [batch, seq, 1]
    counts = weights.sum(1).clamp(min=1)  # [batch, 1]
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = mask.sum(1).long() - 1
    pooled: dict[str, list[torch.Tensor]] = {p: [] for p in poolings}
    for h in outputs.hidden_states:
        if "mean" in pooled:
            # `pool`'s arithmetic, layer by layer: the same values, bit for bit
            pooled["mean"].append((h.float() * weights).sum(1) / counts)
        if "last" in pooled:
            pooled["last"].append(h[rows, last].float())
    return {p: torch.stack(pooled[p]).cpu() for p in poolings}  # [layer, batch, dim]
