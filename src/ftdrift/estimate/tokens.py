"""Token counts of the data really held: each task's splits carved and tokenised as the workflow
does (ftdrift.data.tasks, ftdrift.data.features), and the padded tokens of the batches the
training job forms (length-grouped, seeded sampler; dynamic padding per micro-batch)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftdrift.core import io
from ftdrift.data import tasks as ftasks
from ftdrift.study.config import resolve_data_dir, task_kind, task_settings
from ftdrift.study.families import qa_null_at_end
from ftdrift.study.resources import micro_batch_plan

log = logging.getLogger("ftdrift.estimate")
STAND_IN = "embedded:all-MiniLM-L6-v2"


@dataclass
class TaskLengths:
    """Sequence lengths in tokens (special tokens included, after truncation) of each split as the
    jobs see it: classification one per example; extractive QA one per window for train/dev/
    validation (data.doc_stride) and the first window for the probe."""

    train: list[int]
    dev: list[int]
    validation: list[int]
    probe: list[int]
    source: str  # where the records came from


def load_tokenizer(model_cfg: dict, override: str | None = None):
    """(tokenizer, its name, a note or None). `override` (e.g. 'embedded:all-MiniLM-L6-v2') is used
    as asked; else the model's own tokenizer, falling back to the embedded MiniLM one (with a note
    saying the counts come from a stand-in) when it cannot be loaded, e.g. without network."""
    from ftdrift.modeling import models

    if override:
        cfg = {"name_or_path": override, "family": "encoder" if override.startswith("embedded:") else model_cfg["family"]}
        note = None if override == model_cfg["name_or_path"] else (
            f"token counts come from the stand-in tokenizer {override} (--tokenizer), not "
            f"{model_cfg['name_or_path']}'s")
        return _with_eos(models.load_tokenizer(cfg)), override, note
    try:
        return models.load_tokenizer(model_cfg), model_cfg["name_or_path"], None
    except Exception as err:  # offline hub, gated repo, missing folder: all mean "not loadable here"
        note = (f"the tokenizer of {model_cfg['name_or_path']} could not be loaded ({type(err).__name__}); token "
                f"counts come from the stand-in tokenizer {STAND_IN} (Llama's SentencePiece gives ~10-30 % more "
                "tokens on English text); pass --tokenizer to choose another")
        return _with_eos(models.load_tokenizer({"name_or_path": STAND_IN, "family": "encoder"})), STAND_IN, note


def _with_eos(tokenizer):
    """A stand-in tokenizer with an end-of-sequence token (its separator where it has none): a
    decoder's QA windows end with one (ftdrift.data.features), which the counts must include."""
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def split_records(config: dict, task: str, workdir: Path = Path(".")) -> tuple[dict[str, list[dict]], str]:
    """The task's train/dev/validation/probe records as rule prepare_data would write them
    (ftdrift.data.tasks: dev carve-out, max_train_examples, probe subset); when the source cannot be
    read, the already prepared results/data/<task>/*.jsonl. DataError if neither is there."""
    settings = task_settings(config, task)["data"]
    task_def = config["task_defs"][task]
    try:
        train_all, source = ftasks.load_split(task_def, resolve_data_dir(config["data_dir"]), "train", task)
        validation_all, _ = ftasks.load_split(task_def, resolve_data_dir(config["data_dir"]), "validation", task)
    except ftasks.DataError as err:
        prepared = Path(workdir) / "results" / "data" / task
        if all((prepared / f"{name}.jsonl").is_file() for name in ftasks.SPLITS):
            return {name: io.read_jsonl(prepared / f"{name}.jsonl") for name in ftasks.SPLITS}, f"prepared {prepared}"
        raise ftasks.DataError(f"task {task}: {err}") from None
    label = source.get("path", "") + (f" [{source['name']}]" if source.get("name") else "")
    return ftasks.study_splits(train_all, validation_all, settings), f"{source['source']} {label}"


def tokenise(records: dict[str, list[dict]], task_def: dict, data_settings: dict, tokenizer,
             null_at_end: bool = False) -> dict[str, list[int]]:
    """Lengths of every split's sequences, tokenised by the workflow's own feature code
    (`null_at_end`: ftdrift.study.families.qa_null_at_end of the model's family)."""
    from ftdrift.data.features import (
        encode_classification,
        encode_probe,
        encode_qa_eval,
        encode_qa_train,
    )

    kind = task_kind(task_def)
    max_length = data_settings["max_length"][kind]
    out = {}
    if kind == "classification":
        for name in ("train", "dev", "validation"):
            out[name] = list(encode_classification(records[name], tokenizer, max_length, with_labels=False)["length"])
    else:
        args = (tokenizer, max_length, data_settings["doc_stride"], data_settings["max_query_length"], null_at_end)
        for name in ("train", "dev"):
            out[name] = list(encode_qa_train(records[name], *args)["length"])
        out["validation"] = [len(ids) for ids in encode_qa_eval(records["validation"], *args)[0]["input_ids"]]
    out["probe"] = [len(f["input_ids"]) for f in encode_probe(records["probe"], tokenizer, kind, max_length,
                                                             data_settings["max_query_length"])]
    return out


def task_lengths(config: dict, task: str, tokenizer, tokenizer_name: str, cache_dir: Path | None,
                 workdir: Path = Path(".")) -> TaskLengths:
    """TaskLengths of one task, cached in `cache_dir` (a JSON file per task, tokenizer, data
    settings and source files' content) so that a re-run does not tokenise again."""
    settings = task_settings(config, task)["data"]
    task_def = config["task_defs"][task]
    data_dir = resolve_data_dir(config["data_dir"])
    files = sorted(str(data_dir / p) for p in task_def["files"].values()) if data_dir else []
    stamp = [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files if Path(f).is_file()]
    key = hashlib.sha256(json.dumps([task, task_def, settings, tokenizer_name, config["model"]["family"], str(data_dir),
                                     stamp],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{task}-{key}.json" if cache_dir else None
    if cache and cache.is_file():
        cached = json.loads(cache.read_text())
        return TaskLengths(**cached)
    records, source = split_records(config, task, workdir)
    lengths = TaskLengths(**tokenise(records, task_def, settings, tokenizer,
                                     qa_null_at_end(config["model"]["family"])), source=source)
    if cache:
        io.write_json(cache, lengths.__dict__)
    return lengths


@dataclass
class TrainTokens:
    """What one run's training passes over (upper bound: no early stop)."""

    steps: int  # optimizer steps
    examples: int  # sequences (QA: windows) trained on
    real_tokens: int
    padded_tokens: int  # what the model computes on: each micro-batch padded to its longest sequence
    micro_batches: int  # forward/backward passes
    micro_batch: int
    accumulation: int


def sampler_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of one epoch: the fine-tuning job's own sampler
    (ftdrift.training.trainer.EpochSeededLengthSampler) over these lengths."""
    from ftdrift.training.trainer import EpochSeededLengthSampler

    sampler = EpochSeededLengthSampler(batch_size, lengths=list(lengths), seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(sampler, dtype=np.int64)


def padded_batches(lengths: np.ndarray, batch: int) -> np.ndarray:
    """Padded tokens of each consecutive batch of `batch` sequences: its size x its longest length."""
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows = math.ceil(n / batch)
    padded = np.zeros(rows * batch, dtype=np.int64)
    padded[:n] = lengths
    sizes = np.full(rows, batch, dtype=np.int64)
    sizes[-1] = n - (rows - 1) * batch
    return padded.reshape(rows, batch).max(axis=1) * sizes


def train_tokens(lengths: list[int], batch_size: int, max_micro_batch: int, epochs: float, max_steps: int,
                 seed: int) -> TrainTokens:
    """Tokens one run trains on: the Trainer's step count (max_steps, else ceil(epochs x steps per
    epoch), steps per epoch = ceil(ceil(n / micro) / accumulation)) over the seeded length-grouped
    order, each micro-batch padded to its longest sequence (DataCollatorWithPadding)."""
    plan = micro_batch_plan(batch_size, max_micro_batch)
    micro, accum = plan["micro_batch"], plan["accumulation"]
    n = len(lengths)
    if n == 0:
        raise ValueError("train_tokens: the train split is empty")
    per_epoch = math.ceil(math.ceil(n / micro) / accum)
    steps = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    array = np.asarray(lengths, dtype=np.int64)
    real = padded = examples = passes = 0
    done, epoch = 0, 0
    while done < steps:
        order = array[sampler_order(lengths, micro * accum, seed, epoch)]
        micro_padded = padded_batches(order, micro)
        take = min(per_epoch, steps - done)
        micro_count = min(len(micro_padded), take * accum)
        used = min(n, micro_count * micro)
        padded += int(micro_padded[:micro_count].sum())
        real += int(order[:used].sum())
        examples += used
        passes += micro_count
        done += take
        epoch += 1
    return TrainTokens(steps, examples, real, padded, passes, micro, accum)


def eval_tokens(lengths: list[int], batch_size: int, sort: bool = False) -> int:
    """Padded tokens of one pass over a split in batches of `batch_size`: in dataset order (the
    Trainer's evaluation and predict before issue 15), or sorted by length (the dev evaluation, predict_split,
    representations.extract.make_batches)."""
    array = np.asarray(lengths, dtype=np.int64)
    return int(padded_batches(np.sort(array) if sort else array, batch_size).sum())


def batches(n: int, batch_size: int) -> int:
    """Batches of one pass over `n` sequences."""
    return math.ceil(n / batch_size)


def subset(lengths: list[int], size: int | None, seed: int) -> list[int]:
    """The lengths of a seeded subset of `size` (all when None or larger): training.eval_subset."""
    return [lengths[i] for i in _subset_index(len(lengths), size, seed)]


def _subset_index(n: int, size: int | None, seed: int) -> list[int]:
    return list(range(n)) if size is None or size >= n else ftasks.seeded_subset(list(range(n)), size, seed)
