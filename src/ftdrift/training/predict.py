"""Predictions and metrics of a task model on a split: one code path for the training job's
final evaluation and the checkpoint validator, so a reloaded model can be compared bitwise.

Batches of similar length (longest first, a fixed order: ftdrift.training.trainer.by_length) with
dynamic padding (transformers' DataCollatorWithPadding) at a fixed batch size, through the
Trainer's own `predict` (device placement, autocast in the training precision); the outputs are
put back in dataset order. Sorting pads less: 1.3-1.4x faster than dataset order on MRPC.
A batch that runs out of memory is split in halves (ftdrift.training.trainer.SplittingEvalTrainer):
the predictions do not depend on the split.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from ftdrift.core import metrics
from ftdrift.data import qa
from ftdrift.data.features import encode_classification, encode_qa_eval
from ftdrift.study.config import task_kind
from ftdrift.training.trainer import SplittingEvalTrainer, by_length


@dataclass
class SplitPrediction:
    metrics: dict  # task metrics (as metrics.json stores them)
    predictions: dict  # as predictions.json stores them: {"predictions": {id: ...}[, "na_probs": {id: p}]}
    logits: list[np.ndarray]  # classification [examples, classes]; QA start and end [windows, seq], padding = 0


def predictor(model, tokenizer, batch_size: int, precision: str, split_limit: int | None = None
              ) -> SplittingEvalTrainer:
    """A Trainer used only for `predict`: sequential batches of `batch_size`, autocast in
    `precision` ('fp32', 'bf16' or 'fp16' as resolved by the training job); a batch that runs
    out of memory is split in halves, and later batches start at the size that fitted
    (`trainer.eval_splitter.limit` afterwards; None when nothing was split).

    `split_limit` starts with that size (each padded batch cut into pieces of at most that many
    rows): a validator that passes the training job's limit computes on the same pieces.
    """
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=tempfile.gettempdir(), per_device_eval_batch_size=batch_size,
                             bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda,
                             dataloader_pin_memory=cuda, report_to=[], disable_tqdm=True)
    trainer = SplittingEvalTrainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.eval_splitter.limit = split_limit
    return trainer


def _pad_zero(logits: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Zero the positions past each window's length (padding of its batch, or the Trainer's -100 fill)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    for row, length in enumerate(lengths):
        out[row, length:] = 0
    return out


def _predict_sorted(trainer: Trainer, dataset) -> tuple[np.ndarray, ...]:
    """trainer.predict over `dataset` in by_length order; each output's rows back in dataset order."""
    order = by_length([len(ids) for ids in dataset["input_ids"]])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    outputs = trainer.predict(dataset.select(order)).predictions
    return tuple(np.asarray(x)[inverse] for x in (outputs if isinstance(outputs, tuple) else (outputs,)))


def predict_split(trainer: Trainer, records: list[dict], task_def: dict, tokenizer, data_settings: dict,
                  null_at_end: bool = False) -> SplitPrediction:
    """Task metrics, predictions and raw logits of `trainer.model` on `records`; `null_at_end`: QA's
    no-answer position (ftdrift.study.families.qa_null_at_end of the model's family)."""
    kind = task_kind(task_def)
    max_length = data_settings["max_length"][kind]
    if kind == "classification":
        dataset = encode_classification(records, tokenizer, max_length, with_labels=False)
        logits = _predict_sorted(trainer, dataset.remove_columns("length"))[0].astype(np.float32)
        y_pred = logits.argmax(-1)
        y_true = np.array([r["label"] for r in records])
        result = metrics.classification_metrics(y_true, y_pred, task_def["metrics"])
        return SplitPrediction(result, {"predictions": {r["id"]: int(p) for r, p in zip(records, y_pred)}}, [logits])
    dataset, meta = encode_qa_eval(records, tokenizer, max_length, data_settings["doc_stride"],
                                   data_settings["max_query_length"], null_at_end)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    start_logits, end_logits = (_pad_zero(x, lengths) for x in _predict_sorted(trainer, dataset)[:2])
    predictions, na_probs = qa.postprocess(records, meta, start_logits, end_logits)
    result = metrics.squad_v2(qa.records_to_squad(records), predictions, na_probs)
    return SplitPrediction(result, {"predictions": predictions, "na_probs": na_probs}, [start_logits, end_logits])
