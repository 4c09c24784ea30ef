"""Base-model representations of a task's probe set."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel

from ftdrift.core import io
from ftdrift.core.precision import resolve_precision
from ftdrift.core.store import write_base
from ftdrift.data.features import encode_probe
from ftdrift.modeling import models
from ftdrift.modeling.checkpoint import check_max_length
from ftdrift.representations.extract import extract, make_batches
from ftdrift.study import families
from ftdrift.study.config import task_kind


def probe_representations(model, records: list[dict], tokenizer, task_def: dict, data_settings: dict,
                          rep_settings: dict, poolings: tuple[str, ...], precision: str = "fp32",
                          progress: str | None = None) -> dict[str, np.ndarray]:
    """Pooled representations of a probe set by an already loaded model: {pooling: [layer, example,
    hidden]} in `rep_settings["dtype"]`, layer 0 = the embeddings (`hidden_states` order).

    The one code path of the base store: the task's tokenisation (`encode_probe` with its kind and
    `data_settings` lengths), `make_batches` of `rep_settings["batch_size"]`, `extract` under autocast
    in `precision` (already resolved, not 'auto'). `model` is a backbone (AutoModel) or a task model:
    both return the same `hidden_states`.
    """
    kind = task_kind(task_def)
    batches = make_batches(encode_probe(records, tokenizer, kind, data_settings["max_length"][kind],
                                        data_settings["max_query_length"]),
                           tokenizer, rep_settings["batch_size"])
    return extract(model, batches, poolings, rep_settings["dtype"], progress=progress, precision=precision)


def base_representations(*, probe_path, store_path, model_cfg: dict, task_def: dict, data_settings: dict,
                         rep_settings: dict, precision: str = "fp32") -> None:
    """The base model's pooled representations of the probe set, in the runs' training
    `precision` (as configured: 'auto' resolves on this machine), written atomically."""
    precision = resolve_precision(precision)
    records = io.read_jsonl(probe_path)
    tokenizer = models.load_tokenizer(model_cfg)
    path = models.resolve_model_path(model_cfg["name_or_path"])
    model = AutoModel.from_pretrained(path, revision=model_cfg.get("revision"), dtype=torch.float32)
    kind = task_kind(task_def)
    check_max_length(model.config.to_dict(), data_settings["max_length"][kind], model=model_cfg["name_or_path"])
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    family = families.family(model_cfg)
    pooled = probe_representations(model, records, tokenizer, task_def, data_settings, rep_settings,
                                   family.poolings, precision, progress="base representations")
    with io.atomic_path(store_path) as tmp:
        write_base(tmp, pooled, {
            "model": model_cfg["name_or_path"], "poolings": list(family.poolings), "precision": precision,
            "probe_ids": [r["id"] for r in records],
            "layer_names": models.layer_names(model.config.num_hidden_layers)})
