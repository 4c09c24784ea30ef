"""Frozen base-model features of one hidden-state layer, for the linear-probe baselines:
pooled per example (classification) or per real token (extractive QA).

The model and its forward pass are those of the base representations (ftdrift.representations.base):
the base model without a task head, loaded in float32, run under autocast in the runs' training
precision; pooling as ftdrift.representations.extract.pool does it, in float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel

from ftdrift.core.precision import autocast
from ftdrift.modeling import models
from ftdrift.representations.extract import pool

# columns of encoded datasets that are labels or bookkeeping, not model inputs
NOT_INPUTS = frozenset({"labels", "length", "start_positions", "end_positions", "offset_mapping",
                        "overflow_to_sample_mapping"})


def load_base_model(model_cfg: dict) -> torch.nn.Module:
    """The base model without a task head (transformers' AutoModel), float32, in eval mode, on the
    GPU when there is one: as base_representations loads it."""
    path = models.resolve_model_path(model_cfg["name_or_path"])
    model = AutoModel.from_pretrained(path, revision=model_cfg.get("revision"), dtype=torch.float32)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def layer_index(layer: int, num_hidden_layers: int) -> int:
    """`layer` as a non-negative index into `hidden_states` (0 = embeddings, `num_hidden_layers` =
    last block's output; negative values count from the end, -1 = last block).

    ValueError naming config key 'baselines.probe_layer' when out of range.
    """
    states = num_hidden_layers + 1
    if not -states <= layer < states:
        raise ValueError(f"config key 'baselines.probe_layer': {layer} is out of range for a model with "
                         f"{num_hidden_layers} blocks ({states} hidden states: -{states} .. {states - 1})")
    return layer % states


def model_inputs(columns: dict[str, list]) -> list[dict]:
    """Per-sequence feature dicts (what make_batches takes) from tokenizer output or dataset columns,
    without label and bookkeeping columns."""
    keys = [k for k in columns if k not in NOT_INPUTS]
    n = len(columns["input_ids"])
    return [{k: columns[k][i] for k in keys} for i in range(n)]


def _layer(model, batch: dict, layer: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [batch, seq, hidden] (float32) of `layer` and the attention mask [batch, seq]."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast(precision, device):
        outputs = model(**batch, output_hidden_states=True)
    return outputs.hidden_states[layer].float(), batch["attention_mask"]


@torch.no_grad()
def pooled_features(model, batches: list[tuple[dict, list[int]]], layer: int, pooling: str, precision: str = "fp32",
                    progress: str | None = None) -> np.ndarray:
    """[examples, hidden] float32: `pooling` of `layer`'s hidden states, in the order of the
    features the batches were made from (ftdrift.representations.extract.make_batches)."""
    rows: dict[int, np.ndarray] = {}
    for batch, chunk in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        hidden, mask = _layer(model, batch, layer, precision)
        for position, row in zip(chunk, pool(hidden, mask, pooling).cpu().numpy()):
            rows[position] = row
    return np.stack([rows[i] for i in range(len(rows))]).astype(np.float32)


@torch.no_grad()
def token_states(model, batches: list[tuple[dict, list[int]]], layer: int, precision: str = "fp32",
                 progress: str | None = None) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Per batch: the sequence positions it holds and each sequence's states of `layer` at its
    real (unmasked) tokens, [tokens, hidden] float32, token order kept. Streams: a caller that
    scores the tokens at once never holds a whole split's token states."""
    for batch, chunk in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        hidden, mask = _layer(model, batch, layer, precision)
        mask = mask.bool()
        yield chunk, [h[m].cpu().numpy() for h, m in zip(hidden, mask)]
