"""One fine-tuning run: the study's protocol on transformers' Trainer, with peft for LoRA.

Work files (checkpoints, best weights, in-progress snapshots, W&B) live in `work_dir`,
outside the rule's declared outputs, so a killed job resumes instead of starting over
(ftdrift.workdir: only state of the same job definition is resumed; optionally mirrored).
Outputs are written at the end, each atomically, `metrics.json` last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
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

from ftdrift import io, metrics, models, qa, workdir
from ftdrift.config import task_kind
from ftdrift.features import encode_classification, encode_probe, encode_qa_eval, encode_qa_train
from ftdrift.monitor import BestModelCallback, TrainingMonitor
from ftdrift.representations import SnapshotCallback, make_batches
from ftdrift.store import SnapshotStore
from ftdrift.resources import micro_batch_plan

log = logging.getLogger("ftdrift.train")


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
    """Trainer whose training order survives a restart bit for bit (see EpochSeededLengthSampler)
    and whose predictions come back in dataset order."""

    def __init__(self, *args, train_lengths: list[int], monitor: TrainingMonitor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths
        self.monitor = monitor

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


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def check_feasible(model, model_cfg: dict, lora_targets: list[str] | None, max_length: int,
                   num_labels: int | None, records: list[dict]) -> None:
    """Fail before training on settings that cannot work, with the reason."""
    limit = models.max_positions(model)
    if limit is not None and max_length > limit:
        raise ValueError(f"config key 'data.max_length': {max_length} exceeds the model's limit of {limit} positions")
    if lora_targets is not None:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in lora_targets if t not in names]
        if missing:
            raise ValueError(f"config key 'lora.target_modules': {missing} not found in {model_cfg['name_or_path']} "
                             f"(module names include {sorted(names)[:20]})")
    if num_labels is not None:
        seen = {r["label"] for r in records}
        if max(seen) >= num_labels:
            raise ValueError(f"label count mismatch: data has label index {max(seen)} but the task declares "
                             f"{num_labels} labels")


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


def finetune(*, run: dict, task_def: dict, settings: dict, model_cfg: dict, lora_cfg: dict, wandb_cfg: dict,
             data_dir: Path, work_dir: Path, outputs: RunOutputs, attempt: int = 1, threads: int | None = None,
             resolved_config: dict | None = None, bootstrap_resamples: int = 1000, confidence: float = 0.95,
             code_version: int | None = None) -> dict:
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    split_files = {name: data_dir / f"{name}.jsonl" for name in ("train", "dev", "validation", "probe")}
    # what the resumable state depends on (not the final evaluation's bootstrap settings:
    # changing those re-evaluates from the last checkpoint)
    job = workdir.fingerprint({"run": run, "task": task_def, "settings": settings, "model": model_cfg,
                               "lora": lora_cfg if run["method"] == "lora" else None,
                               "code_version": code_version}, list(split_files.values()))
    workdir.claim(work_dir, job)
    run_name = f"{run['task']}-{run['method']}-lr{run['lr']}-bs{run['batch_size']}-seed{run['seed']}"
    mirror = workdir.WorkDirMirror.from_env(run_name, work_dir, job)
    if mirror and last_complete_checkpoint(work_dir / "checkpoints") is None:
        mirror.restore()
    if threads:
        torch.set_num_threads(threads)
    kind = task_kind(task_def)
    training, data_settings, rep_settings = settings["training"], settings["data"], settings["representations"]
    family = models.family(model_cfg["family"])
    method, seed, batch_size = run["method"], int(run["seed"]), int(run["batch_size"])
    lr = float(run["lr"])
    plan = micro_batch_plan(batch_size, training["max_micro_batch"], attempt)
    precision = resolve_precision(training["precision"])
    max_length = data_settings["max_length"][kind]

    # -- data
    splits = {name: io.read_jsonl(path) for name, path in split_files.items()}
    tokenizer = models.load_tokenizer(model_cfg)
    num_labels = len(task_def["labels"]) if kind == "classification" else None

    # -- model: the seed fixes the new head's and LoRA's initialisation
    set_seed(seed, deterministic=training["full_determinism"])
    model = models.load_model(model_cfg, kind, num_labels, tokenizer)
    lora_targets = None
    if method == "lora":
        lora_targets = list(lora_cfg["target_modules"] or family.lora_target_modules)
    check_feasible(model, model_cfg, lora_targets, max_length, num_labels,
                   splits["train"] + splits["dev"] if kind == "classification" else [])
    total_params = sum(p.numel() for p in model.parameters())
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS if kind == "classification" else TaskType.QUESTION_ANS,
            r=lora_cfg["r"], lora_alpha=lora_cfg["alpha"], lora_dropout=lora_cfg["dropout"],
            target_modules=lora_targets)
        model = get_peft_model(model, peft_config)  # the task head is trained and saved with the adapter
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if kind == "classification":
        train_ds = encode_classification(splits["train"], tokenizer, max_length)
        dev_ds = encode_classification(splits["dev"], tokenizer, max_length)
    else:
        stride = data_settings["doc_stride"]
        train_ds = encode_qa_train(splits["train"], tokenizer, max_length, stride)
        dev_ds = encode_qa_train(splits["dev"], tokenizer, max_length, stride)

    # -- snapshots: a store in the work dir that survives restarts
    poolings = family.poolings
    probe_batches = make_batches(encode_probe(splits["probe"], tokenizer, kind, max_length), tokenizer,
                                 rep_settings["batch_size"])
    store = SnapshotStore(work_dir / "representations.zarr", attrs={
        "model": model_cfg["name_or_path"], "poolings": list(poolings), "run": run,
        "probe_ids": [r["id"] for r in splits["probe"]],
        "layer_names": models.layer_names(model.config.num_hidden_layers)})

    checkpoint_dir = work_dir / "checkpoints"
    report_to = _wandb_env(wandb_cfg, run_name, f"{run['task']}-{method}", [run["task"], method, f"seed_{seed}"], work_dir)
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        run_name=run_name,
        learning_rate=lr,
        per_device_train_batch_size=plan["micro_batch"],
        gradient_accumulation_steps=plan["accumulation"],
        per_device_eval_batch_size=max(plan["micro_batch"], rep_settings["batch_size"]),
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
    best = BestModelCallback(work_dir / "best")
    monitor = TrainingMonitor(batch_size, checkpoint_dir, check_finite=precision != "fp16")
    callbacks = [monitor, SnapshotCallback(store, probe_batches, poolings, rep_settings["snapshot_steps"],
                                           rep_settings["dtype"]), best]
    if training["early_stopping_patience"]:
        callbacks.append(EarlyStoppingCallback(training["early_stopping_patience"]))
    if mirror:
        callbacks.append(mirror)  # after the others: it copies what they wrote
    compute_metrics = None
    if kind == "classification":
        def compute_metrics(prediction):
            return metrics.classification_metrics(prediction.label_ids, prediction.predictions.argmax(-1),
                                                  task_def["metrics"])
    trainer = StudyTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=compute_metrics, callbacks=callbacks, train_lengths=train_ds["length"],
                      monitor=monitor)
    if report_to:
        # our monitor must enrich the log entries before W&B sends them
        trainer.pop_callback(WandbCallback)
        trainer.add_callback(WandbCallback)
        trainer.add_callback(_ConfigToWandb(resolved_config or {}))
    last = last_complete_checkpoint(checkpoint_dir)
    if last:
        log.info("resuming %s from %s", run_name, last)
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    train_seconds = time.time() - started

    # -- best dev weights back in, then the final evaluations
    best_info = best.restore(model)
    dev_metrics, _ = evaluate(trainer, splits["dev"], kind, task_def, tokenizer, data_settings)
    val_metrics, predictions = evaluate(trainer, splits["validation"], kind, task_def, tokenizer, data_settings,
                                        bootstrap=(bootstrap_resamples, confidence, seed))
    state = trainer.state
    meta = {
        "run": run, "attempt": attempt, "precision": precision, **plan,
        "steps": state.global_step, "max_steps": state.max_steps,
        "stopped_early": state.global_step < state.max_steps,
        "best_step": best_info["step"] if best_info else None,
        "best_dev_loss": best_info["eval_loss"] if best_info else None,
        "trainable_params": trainable_params, "total_params": total_params,
        "trainable_fraction": trainable_params / total_params,
        "train_seconds": train_seconds, "resumed_from": last,
        "snapshot_steps": store.steps(),
    }

    # -- outputs, each atomic; metrics.json last marks the run complete
    with io.atomic_path(outputs.representations) as tmp:
        shutil.copytree(store.path, tmp)
    with io.atomic_path(outputs.model) as tmp:
        model.save_pretrained(tmp)  # peft saves the adapter plus the trained head
        tokenizer.save_pretrained(tmp)
    io.write_json(outputs.predictions, predictions)
    io.write_csv(outputs.train_log, pd.DataFrame(state.log_history))
    result = {"task": run["task"], "main_metric": task_def["main_metric"], "dev": dev_metrics,
              "validation": val_metrics, "meta": meta}
    io.write_json(outputs.metrics, result)
    if mirror:
        mirror.discard()
    return result


def evaluate(trainer: Trainer, records: list[dict], kind: str, task_def: dict, tokenizer, data_settings: dict,
             bootstrap: tuple[int, float, int] | None = None) -> tuple[dict, dict]:
    """Task metrics of the trainer's current model on a split; with `bootstrap`, a CI of the main metric."""
    max_length = data_settings["max_length"][kind]
    main = task_def["main_metric"]
    if kind == "classification":
        dataset = encode_classification(records, tokenizer, max_length, with_labels=False)
        logits = trainer.predict(dataset.remove_columns("length")).predictions
        y_pred = logits.argmax(-1)
        y_true = np.array([r["label"] for r in records])
        result = metrics.classification_metrics(y_true, y_pred, task_def["metrics"])
        if bootstrap:
            n, confidence, seed = bootstrap
            low, high = metrics.bootstrap_ci(
                lambda t, p: metrics.classification_metrics(t, p, [main])[main], y_true, y_pred,
                n_resamples=n, confidence=confidence, seed=seed)
            result[f"{main}_ci_low"], result[f"{main}_ci_high"] = low, high
        return result, {"predictions": {r["id"]: int(p) for r, p in zip(records, y_pred)}}
    dataset, meta = encode_qa_eval(records, tokenizer, max_length, data_settings["doc_stride"])
    start_logits, end_logits = trainer.predict(dataset).predictions[:2]
    predictions, na_probs = qa.postprocess(records, meta, start_logits, end_logits)
    squad = qa.records_to_squad(records)
    result = metrics.squad_v2(squad, predictions, na_probs)
    if bootstrap:
        n, confidence, seed = bootstrap
        per_question = metrics.squad_v2_per_question(squad, predictions)
        key = 1 if main == "f1" else 0
        scores = np.array([per_question[r["id"]][key] for r in records], dtype=float)
        low, high = metrics.bootstrap_ci(lambda s: 100.0 * float(np.mean(s)), scores,
                                         n_resamples=n, confidence=confidence, seed=seed)
        result[f"{main}_ci_low"], result[f"{main}_ci_high"] = low, high
    return result, {"predictions": predictions, "na_probs": na_probs}
