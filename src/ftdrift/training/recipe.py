"""One fine-tuning run: the study's protocol on transformers' Trainer, with peft for LoRA.

Work files (checkpoints, best weights, in-progress snapshots, W&B) live in `work_dir`,
outside the rule's declared outputs, so a killed job resumes instead of starting over
(ftdrift.training.workdir: only state of the same job definition is resumed; optionally mirrored).
Outputs are written at the end, each atomically, `metrics.json` last.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from torch.utils.data import SequentialSampler
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import WandbCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from ftdrift.core import io, loss, metrics
from ftdrift.core.precision import resolve_precision
from ftdrift.core.store import SnapshotStore
from ftdrift.data.features import encode_classification, encode_probe, encode_qa_train
from ftdrift.modeling import lora, models
from ftdrift.representations.extract import make_batches
from ftdrift.representations.snapshots import SnapshotCallback
from ftdrift.study import families
from ftdrift.study.config import task_kind
from ftdrift.study.resources import micro_batch_plan
from ftdrift.training import workdir
from ftdrift.training.monitor import BestModelCallback, TrainingMonitor
from ftdrift.training.predict import predict_split, predictor

log = logging.getLogger("ftdrift.training.recipe")


@dataclass
class RunOutputs:
    metrics: Path
    train_log: Path
    predictions: Path
    representations: Path
    model: Path


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped batches whose order is a pure function of (seed, epoch).

    transformers' own group_by_length sampler draws from the global RNG when an epoch's
    iterator is created, which on resume happens before the checkpoint's RNG state is
    restored: the resumed epoch would see another order. Seeding per epoch makes resume exact.
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class StudyTrainer(Trainer):
    """Trainer whose training order survives a restart bit for bit (see EpochSeededLengthSampler),
    whose loss is the study's per-example mean over the effective batch (ftdrift.core.loss), and
    whose predictions come back in dataset order."""

    # compute_loss below divides by the effective batch's example count itself: the Trainer
    # must not divide by the accumulation steps again (documented Trainer attribute)
    loss_is_scaled_for_ga = True

    def __init__(self, *args, train_lengths: list[int], monitor: TrainingMonitor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths
        self.monitor = monitor

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        # N of ftdrift.core.loss: the examples of all micro-batches of this optimizer step
        return batches, sum(len(batch["input_ids"]) for batch in batches)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = {key: inputs[key] for key in loss.LABEL_KEYS if key in inputs}
        outputs = model(**{key: value for key, value in inputs.items() if key not in labels})
        # evaluation batches are averaged by the Trainer itself, weighted by their size
        n = num_items_in_batch if model.training else None
        value = loss.batch_loss(outputs, labels, inputs.get("attention_mask"), int(n) if n else None)
        return (value, outputs) if return_outputs else value

    def _get_grad_norm(self, model, grad_norm=None):
        # the pre-clip norm the Trainer computes every step feeds the monitor's NaN guard, so it
        # needs no second pass over the gradients (private hook, transformers pinned in pyproject)
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.monitor is not None:
            self.monitor.observe_grad_norm(grad_norm)
        return grad_norm

    def _get_train_sampler(self, train_dataset=None):
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=self.train_lengths, seed=self.args.data_seed)

    def _get_eval_sampler(self, eval_dataset):
        # transformers also length-groups evaluation batches under group_by_length, which returns
        # predictions in a shuffled order; ours are matched to examples by position
        return SequentialSampler(eval_dataset)


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint whose trainer state (written last by the Trainer) is readable.

    The Trainer writes checkpoints in place, so a kill mid-save leaves a partial folder; it is
    removed here and the previous checkpoint is used instead.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted((p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (the job was killed while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def _wandb_env(cfg: dict, run_name: str, group: str, tags: list[str], work_dir: Path) -> list[str]:
    """Configure W&B through its environment variables; return the Trainer's report_to."""
    if cfg["mode"] == "disabled":
        return []
    os.environ.setdefault("WANDB_MODE", cfg["mode"])  # the user's own WANDB_MODE wins
    os.environ["WANDB_PROJECT"] = cfg["project"]
    if cfg.get("entity"):
        os.environ["WANDB_ENTITY"] = cfg["entity"]
    os.environ["WANDB_RUN_GROUP"] = group
    os.environ["WANDB_TAGS"] = ",".join(tags)
    os.environ["WANDB_NAME"] = run_name
    os.environ["WANDB_DIR"] = str(work_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_LOG_MODEL"] = "false"  # weights stay in results/, not in W&B
    return ["wandb"]


class _ConfigToWandb(TrainerCallback):
    """Adds the resolved ftdrift config to the W&B run once the WandbCallback created it."""

    def __init__(self, resolved: dict):
        self.resolved = resolved

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if wandb.run is not None:
            wandb.run.config.update({"ftdrift": self.resolved}, allow_val_change=True)


@dataclass
class TaskData:
    """Everything a training attempt reads, tokenised once per job."""

    splits: dict[str, list[dict]]
    tokenizer: object
    train: object  # datasets.Dataset with a `length` column
    dev: object
    probe_batches: list


def load_data(split_files: dict[str, Path], task_def: dict, model_cfg: dict, data_settings: dict,
              rep_settings: dict) -> TaskData:
    """Stage 1: the prepared splits, tokenised (dynamic padding happens in the collator)."""
    kind = task_kind(task_def)
    splits = {name: io.read_jsonl(path) for name, path in split_files.items()}
    tokenizer = models.load_tokenizer(model_cfg)
    max_length = data_settings["max_length"][kind]
    if kind == "classification":
        train_ds = encode_classification(splits["train"], tokenizer, max_length)
        dev_ds = encode_classification(splits["dev"], tokenizer, max_length)
    else:
        qa_args = (tokenizer, max_length, data_settings["doc_stride"], data_settings["max_query_length"])
        train_ds, dev_ds = encode_qa_train(splits["train"], *qa_args), encode_qa_train(splits["dev"], *qa_args)
    probe = encode_probe(splits["probe"], tokenizer, kind, max_length, data_settings["max_query_length"])
    return TaskData(splits, tokenizer, train_ds, dev_ds, make_batches(probe, tokenizer, rep_settings["batch_size"]))


def build_model(model_cfg: dict, task_def: dict, method: str, lora_cfg: dict | None, seed: int,
                deterministic: bool = False):
    """Stage 2: the task model (new head drawn under `seed`), LoRA-wrapped for method 'lora'.

    Returns (model, lora target modules or None, total parameters of the task model).
    """
    kind = task_kind(task_def)
    num_labels = len(task_def["labels"]) if kind == "classification" else None
    set_seed(seed, deterministic=deterministic)
    tokenizer = models.load_tokenizer(model_cfg)
    model = models.load_model(model_cfg, kind, num_labels, tokenizer)
    total_params = sum(p.numel() for p in model.parameters())
    if method != "lora":
        return model, None, total_params
    targets = list(lora_cfg["target_modules"] or families.family(model_cfg["family"]).lora_target_modules)
    _check_targets(model, model_cfg, targets)
    return lora.wrap(model, lora_cfg, targets), targets, total_params


def _check_targets(model, model_cfg: dict, targets: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"config key 'lora.target_modules': {missing} not found in {model_cfg['name_or_path']} "
                         f"(module names include {sorted(names)[:20]})")


def check_feasible(model, max_length: int, num_labels: int | None, records: list[dict]) -> None:
    """Fail before training on settings that cannot work, with the reason."""
    limit = models.max_positions(model)
    if limit is not None and max_length > limit:
        raise ValueError(f"config key 'data.max_length': {max_length} exceeds the model's limit of {limit} positions")
    if num_labels is not None:
        seen = {r["label"] for r in records}
        if max(seen) >= num_labels:
            raise ValueError(f"label count mismatch: data has label index {max(seen)} but the task declares "
                             f"{num_labels} labels")


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA/CPU allocation failures (accelerate's classification); nothing else is retried."""
    return isinstance(err, torch.OutOfMemoryError) or should_reduce_batch_size(err)


def training_arguments(*, run: dict, training: dict, plan: dict, precision: str, eval_batch_size: int,
                       checkpoint_dir: Path, report_to: list[str]) -> TrainingArguments:
    """Stage 3: the study's protocol as TrainingArguments."""
    seed = int(run["seed"])
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        run_name=run_name(run),
        learning_rate=float(run["lr"]),
        per_device_train_batch_size=plan["micro_batch"],
        gradient_accumulation_steps=plan["accumulation"],
        per_device_eval_batch_size=eval_batch_size,
        num_train_epochs=training["epochs"],
        max_steps=training["max_steps"],
        warmup_steps=training["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=training["lr_scheduler"],
        weight_decay=training["weight_decay"],
        max_grad_norm=training["max_grad_norm"],
        eval_strategy="steps",
        eval_steps=training["eval_steps"],
        save_strategy="steps",
        save_steps=training["save_steps"],
        save_total_limit=training["save_total_limit"],
        logging_steps=training["logging_steps"],
        logging_nan_inf_filter=False,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,
        seed=seed,
        data_seed=seed,
        full_determinism=training["full_determinism"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=training["gradient_checkpointing"] or plan["gradient_checkpointing"],
        train_sampling_strategy="group_by_length",  # with our seeded sampler, see StudyTrainer
        include_num_input_tokens_seen="non_padding",
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=report_to,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def run_name(run: dict) -> str:
    return f"{run['task']}-{run['method']}-lr{run['lr']}-bs{run['batch_size']}-seed{run['seed']}"


def finetune(*, run: dict, task_def: dict, settings: dict, model_cfg: dict, lora_cfg: dict | None, wandb_cfg: dict,
             data_dir: Path, work_dir: Path, outputs: RunOutputs, threads: int | None = None,
             resolved_config: dict | None = None, code_version: int | None = None,
             callbacks: tuple[TrainerCallback, ...] = ()) -> dict:
    """One fine-tuning job: train, evaluate on dev and validation, write the run's outputs.

    `callbacks` are added to the Trainer after ftdrift's own (benchmarks and tests observe the
    real job through them). An out-of-memory error is retried here, in the same process and
    from the last checkpoint, with half the micro-batch and twice the accumulation (the same
    effective batch and, see ftdrift.core.loss, the same objective); from the third attempt with
    activation checkpointing too. Any other error propagates at once. Returns metrics.json's content.
    """
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    split_files = {name: data_dir / f"{name}.jsonl" for name in ("train", "dev", "validation", "probe")}
    method, batch_size = run["method"], int(run["batch_size"])
    training, data_settings, rep_settings = settings["training"], settings["data"], settings["representations"]
    # what the resumable state depends on; the micro-batch plan is not part of it (it does not
    # change the objective), so an out-of-memory retry resumes the same state
    job = workdir.fingerprint({"run": run, "task": task_def, "settings": settings, "model": model_cfg,
                               "lora": lora_cfg if method == "lora" else None,
                               "code_version": code_version}, list(split_files.values()))
    workdir.claim(work_dir, job)
    mirror = workdir.WorkDirMirror.from_env(run_name(run), work_dir, job)
    if mirror and last_complete_checkpoint(work_dir / "checkpoints") is None:
        mirror.restore()
    if threads:
        torch.set_num_threads(threads)
    precision = resolve_precision(training["precision"])
    eval_batch_size = rep_settings["batch_size"]  # final evaluation and validator: fixed, not the micro-batch
    data = load_data(split_files, task_def, model_cfg, data_settings, rep_settings)

    attempt = 1
    while True:
        plan = micro_batch_plan(batch_size, training["max_micro_batch"], attempt)
        try:
            model, trainer, info = train_attempt(
                run=run, task_def=task_def, settings=settings, model_cfg=model_cfg, lora_cfg=lora_cfg,
                wandb_cfg=wandb_cfg, work_dir=work_dir, data=data, plan=plan, precision=precision,
                eval_batch_size=eval_batch_size, mirror=mirror, resolved_config=resolved_config,
                callbacks=callbacks)
            break
        except Exception as err:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
            if not is_out_of_memory(err) or micro_batch_plan(batch_size, training["max_micro_batch"],
                                                              attempt + 1) == plan:
                raise
            log.warning("out of memory at micro-batch %d (attempt %d): %s; retrying from the last checkpoint "
                        "with half the micro-batch", plan["micro_batch"], attempt, err)
        gc.collect()  # the failed attempt's model, optimizer and activations
        clear_device_cache(garbage_collection=True)
        attempt += 1

    # -- best dev weights back in, then the final evaluations (ftdrift.training.predict: the validator's path)
    best_info = info["best"].restore(model)
    predict = predictor(model, data.tokenizer, eval_batch_size, precision)
    dev = predict_split(predict, data.splits["dev"], task_def, data.tokenizer, data_settings)
    validation = predict_split(predict, data.splits["validation"], task_def, data.tokenizer, data_settings)
    state = trainer.state
    meta = {
        "run": run, "attempts": attempt, "precision": precision, **plan, "eval_batch_size": eval_batch_size,
        "steps": state.global_step, "max_steps": state.max_steps,
        "stopped_early": state.global_step < state.max_steps,
        "best_step": best_info["step"] if best_info else None,
        "best_dev_loss": best_info["eval_loss"] if best_info else None,
        "trainable_params": info["trainable_params"], "total_params": info["total_params"],
        "trainable_fraction": info["trainable_params"] / info["total_params"],
        "train_seconds": info["train_seconds"], "resumed_from": info["resumed_from"],
        "snapshot_steps": info["store"].steps(),
    }

    # -- outputs, each atomic; metrics.json last marks the run complete
    with io.atomic_path(outputs.representations) as tmp:
        shutil.copytree(info["store"].path, tmp)
    with io.atomic_path(outputs.model) as tmp:
        model.save_pretrained(tmp)  # peft saves the adapter plus the trained head
        data.tokenizer.save_pretrained(tmp)
    io.write_json(outputs.predictions, validation.predictions)
    io.write_csv(outputs.train_log, pd.DataFrame(state.log_history))
    result = {"task": run["task"], "main_metric": task_def["main_metric"], "dev": dev.metrics,
              "validation": validation.metrics, "meta": meta}
    io.write_json(outputs.metrics, result)
    if mirror:
        mirror.discard()
    return result


def train_attempt(*, run: dict, task_def: dict, settings: dict, model_cfg: dict, lora_cfg: dict | None,
                  wandb_cfg: dict, work_dir: Path, data: TaskData, plan: dict, precision: str,
                  eval_batch_size: int, mirror, resolved_config: dict | None,
                  callbacks: tuple[TrainerCallback, ...]) -> tuple:
    """Stages 2-3: build the model and the Trainer for one micro-batch plan, train (resuming
    from the last complete checkpoint in `work_dir`). Returns (model, trainer, info)."""
    kind = task_kind(task_def)
    training, data_settings, rep_settings = settings["training"], settings["data"], settings["representations"]
    method, seed = run["method"], int(run["seed"])
    num_labels = len(task_def["labels"]) if kind == "classification" else None
    model, lora_targets, total_params = build_model(model_cfg, task_def, method, lora_cfg, seed,
                                                    training["full_determinism"])
    check_feasible(model, data_settings["max_length"][kind], num_labels,
                   data.splits["train"] + data.splits["dev"] if kind == "classification" else [])
    if lora_targets is not None:
        lora.check_passes_inputs(model, data.probe_batches[0][0])
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    family = families.family(model_cfg["family"])
    store = SnapshotStore(work_dir / "representations.zarr", attrs={
        "model": model_cfg["name_or_path"], "poolings": list(family.poolings), "run": run, "precision": precision,
        "probe_ids": [r["id"] for r in data.splits["probe"]],
        "layer_names": models.layer_names(model.config.num_hidden_layers)})
    checkpoint_dir = work_dir / "checkpoints"
    report_to = _wandb_env(wandb_cfg, run_name(run), f"{run['task']}-{method}",
                           [run["task"], method, f"seed_{seed}"], work_dir)
    args = training_arguments(run=run, training=training, plan=plan, precision=precision,
                              eval_batch_size=eval_batch_size, checkpoint_dir=checkpoint_dir, report_to=report_to)
    best = BestModelCallback(work_dir / "best")
    monitor = TrainingMonitor(int(run["batch_size"]), checkpoint_dir, check_finite=precision != "fp16")
    trainer_callbacks = [monitor, SnapshotCallback(store, data.probe_batches, family.poolings,
                                                   rep_settings["snapshot_steps"], rep_settings["dtype"], precision),
                         best]
    if training["early_stopping_patience"]:
        trainer_callbacks.append(EarlyStoppingCallback(training["early_stopping_patience"]))
    if mirror:
        trainer_callbacks.append(mirror)  # after the others: it copies what they wrote
    trainer_callbacks.extend(callbacks)
    def compute_metrics(prediction):  # dev metrics at each evaluation (QA: dev loss only)
        return metrics.classification_metrics(prediction.label_ids, prediction.predictions.argmax(-1),
                                              task_def["metrics"])

    trainer = StudyTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.dev,
                           data_collator=DataCollatorWithPadding(data.tokenizer), processing_class=data.tokenizer,
                           compute_metrics=compute_metrics if kind == "classification" else None,
                           callbacks=trainer_callbacks,
                           train_lengths=data.train["length"], monitor=monitor)
    if report_to:
        # our monitor must enrich the log entries before W&B sends them
        trainer.pop_callback(WandbCallback)
        trainer.add_callback(WandbCallback)
        trainer.add_callback(_ConfigToWandb(resolved_config or {}))
    last = last_complete_checkpoint(checkpoint_dir)
    if last:
        log.info("resuming %s from %s", run_name(run), last)
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    return model, trainer, {"best": best, "store": store, "resumed_from": last,
                            "train_seconds": time.time() - started, "trainable_params": trainable_params,
                            "total_params": total_params}
