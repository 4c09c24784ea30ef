"""A run's saved model as every analysis loads it, for any method (ftdrift.study.methods).

A run's `model/` folder holds, by the method's training mode, the whole fine-tuned task model
(full fine-tuning: `save_pretrained`) or a peft adapter with its trained task head that applies to
the ORIGINAL base task model (ftdrift.modeling.methods.save_adapter; PiSSA-style initialisations
saved converted). `load_tuned` gives either as a task model; `merge=True` folds an adapter into
the base weights (`methods.merged`), which is what the weight analysis, forgetting and the
intruder intervention read. Nothing here names a method: the Method's properties decide.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftdrift.modeling import methods, models
from ftdrift.study.config import task_kind
from ftdrift.study.methods import Method


def method_of(name: str, spec: dict | None) -> Method:
    """The Method of a run from its name (the `{method}` wildcard) and its config entry
    (`CONFIG['methods'][name]`: {} or {'peft': {...}}; None counts as {})."""
    return Method.from_spec(name, spec)


def num_labels(task_def: dict) -> int | None:
    return len(task_def["labels"]) if task_kind(task_def) == "classification" else None


def base_task_model(model_cfg: dict, task_def: dict, tokenizer=None, dtype: torch.dtype = torch.float32):
    """The base task model of the task (the checkpoint's backbone, a newly drawn head)."""
    tokenizer = tokenizer or models.load_tokenizer(model_cfg)
    return models.load_model(model_cfg, task_kind(task_def), num_labels(task_def), tokenizer, dtype=dtype)


def load_tuned(model_dir, method: Method, model_cfg: dict, task_def: dict, tokenizer=None, *, base=None,
               merge: bool = False, trainable: bool = False):
    """The run's fine-tuned task model in float32 (on the CPU, train/eval mode as loaded).

    Full fine-tuning: the saved task model. An adapter method: `base` (else a freshly loaded base
    task model; adapted in place) with the saved adapter (`methods.load`; `trainable` marks the
    trained parameters as requiring gradients, to count them), and with `merge` its merged copy
    (peft `merge_and_unload`: the plain task model). RuntimeError/ValueError from the loaders name
    the folder.
    """
    if method.is_full:
        return models.load_fine_tuned(model_dir, task_kind(task_def))
    if base is None:
        base = base_task_model(model_cfg, task_def, tokenizer)
    model = methods.load(base, Path(model_dir), trainable=trainable)
    return methods.merged(model) if merge else model
