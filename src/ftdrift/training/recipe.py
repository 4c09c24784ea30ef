"""One fine-tuning job as a recipe of named stages, on transformers' Trainer with peft for LoRA.

    finetune(...)       the whole job, as the `finetune` rule runs it
      claim_work_dir    stage 0: the resumable state of this job definition only (ftdrift.training.workdir)
      load_data         stage 1: the prepared splits, tokenised once
      train             stages 2-4: build_model, the Trainer, trainer.train(); out-of-memory
                        errors retried with a smaller micro-batch (ftdrift.training.oom); a
                        diverging run stops there, as a result (ftdrift.training.monitor)
      evaluate          stage 5: the best dev weights back in; dev and validation predictions
                        (ftdrift.training.predict, the checkpoint validator's code path)
      save              stage 6: the run's outputs, each atomic, metrics.json last

A diverged run (non-finite loss or gradient, or a logged loss far above its first) is not an
error: the job goes on through evaluate and save with the weights it has (the best dev-loss ones
if any were kept) and metrics.json's meta says status "diverged", where and why. Any other
error fails the job.

Work files (checkpoints, best weights, snapshots so far, W&B) live in the job's work folder,
outside the rule's declared outputs, so a killed job resumes instead of starting over; once the
outputs are written its resumable state is removed (its mirror stays until the outputs are
stored: the lifecycle is in ftdrift.training.workdir).
Benchmarks and tests drive the same stages, and observe training through `callbacks`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainerCallback, set_seed

from ftdrift.core import io, metrics
from ftdrift.core.precision import resolve_precision
from ftdrift.core.store import SnapshotStore
from ftdrift.data import tasks as ftasks
from ftdrift.data.features import encode_classification, encode_probe, encode_qa_train
from ftdrift.modeling import methods, models
from ftdrift.modeling.checkpoint import check_max_length
from ftdrift.representations.base_check import BaseModelGuard
from ftdrift.representations.extract import make_batches
from ftdrift.representations.snapshots import SnapshotCallback
from ftdrift.study import families
from ftdrift.study.config import task_kind
from ftdrift.study.grid import run_slug
from ftdrift.study.methods import Method
from ftdrift.training import oom, tracking, workdir
from ftdrift.training.live_drift import LiveDrift
from ftdrift.training.monitor import BestModelCallback, Divergence, TrainingMonitor
from ftdrift.training.predict import SplitPrediction, predict_split, predictor
from ftdrift.training.timing import StageClock
from ftdrift.training.trainer import StudyTrainer, last_complete_checkpoint, training_arguments

log = logging.getLogger("ftdrift.training.recipe")


@dataclass
class RunOutputs:
    metrics: Path
    train_log: Path
    predictions: Path
    representations: Path
    model: Path


@dataclass
class Job:
    """What one fine-tuning job is: a grid point and the settings that reach it."""

    run: dict  # task, method, lr (canonical string), batch_size, seed
    task_def: dict
    settings: dict  # data, training, representations (task overrides applied)
    model_cfg: dict
    method_spec: dict  # the run's entry of config `methods`: {} (full fine-tuning) or {"peft": {...}}
    wandb_cfg: dict
    data_dir: Path  # the prepared splits
    work_dir: Path
    outputs: RunOutputs
    resolved_config: dict | None = None  # sent to W&B
    code_version: int | None = None
    callbacks: tuple[TrainerCallback, ...] = ()
    clock: StageClock = field(default_factory=StageClock)
    base_store: Path | None = None  # the task's base representations: the step-0 guard compares with them
    cpu_threads: list[int] = field(default_factory=list)  # torch threads of each session that trained

    @property
    def name(self) -> str:
        return run_slug(self.run)

    @property
    def kind(self) -> str:
        return task_kind(self.task_def)

    @property
    def method(self) -> Method:
        return Method.from_spec(self.run["method"], self.method_spec)

    @property
    def initial_adapter(self) -> Path:
        # methods whose initialisation rewrites the base weights save their adapter as initialised here
        return self.work_dir / workdir.INITIAL_ADAPTER

    @property
    def precision(self) -> str:
        return resolve_precision(self.settings["training"]["precision"])

    @property
    def eval_batch_size(self) -> int:
        # the final evaluation and the validator use one fixed batch size, not the micro-batch
        return self.settings["representations"]["batch_size"]

    @property
    def split_files(self) -> dict[str, Path]:
        return {name: Path(self.data_dir) / f"{name}.jsonl" for name in ftasks.SPLITS}


@dataclass
class Trained:
    """What the training stages leave behind."""

    model: object
    trainer: StudyTrainer
    best: BestModelCallback
    store: SnapshotStore
    resumed_from: str | None
    train_seconds: float
    trainable_params: int
    total_params: int
    method_info: dict = field(default_factory=dict)  # ftdrift.modeling.methods.adapt's info
    attempts: int = 1
    plan: dict = field(default_factory=dict)
    best_info: dict | None = None  # {step, eval_loss} of the restored best dev-loss weights
    divergence: Divergence | None = None  # set when training stopped because the run diverged
    eval_split_limit: int | None = None  # rows per piece of the final predictions after an out-of-memory error


def finetune(*, run: dict, task_def: dict, settings: dict, model_cfg: dict, method_spec: dict, wandb_cfg: dict,
             data_dir: Path, work_dir: Path, outputs: RunOutputs, threads: int | None = None,
             resolved_config: dict | None = None, code_version: int | None = None,
             callbacks: tuple[TrainerCallback, ...] = (), base_store: Path | None = None) -> dict:
    """One fine-tuning job, stage by stage (see the module doc). Returns metrics.json's content.

    `base_store`: the task's base representations (rule base_representations); when given, the job
    fails before its first update unless its step-0 snapshot equals them
    (ftdrift.representations.base_check). `method_spec`: the run's entry of the resolved config's
    `methods` (ftdrift.study.methods).
    """
    job = Job(run, task_def, settings, model_cfg, method_spec, wandb_cfg, Path(data_dir), Path(work_dir), outputs,
              resolved_config, code_version, tuple(callbacks), base_store=Path(base_store) if base_store else None)
    clock = job.clock
    clock.add_start_up()
    if threads:
        torch.set_num_threads(threads)
    with clock.stage("work folder"):
        mirror = claim_work_dir(job)
    with clock.stage("load data"):
        data = load_data(job.split_files, task_def, model_cfg, settings["data"], settings["representations"])
    trained = train(job, data, mirror)
    with clock.stage("final evaluation"):
        dev, validation = evaluate(job, data, trained)
    with clock.stage("outputs"):
        result = save(job, data, trained, dev, validation)
    # the folder's copy of the state goes now; the mirror stays until the outputs are stored (workdir)
    workdir.drop(job.work_dir)
    clock.log_summary(job.name)
    return result


def claim_work_dir(job: Job):
    """Stage 0: keep the work folder's state only if it is this job definition's (else empty it),
    fill it from the checkpoint mirror when that holds a newer checkpoint; returns the mirror (or None)."""
    # the micro-batch plan is not part of the definition (it does not change the objective), so
    # an out-of-memory retry resumes the same state
    fingerprint = workdir.fingerprint({"run": job.run, "task": job.task_def, "settings": job.settings,
                                       "model": job.model_cfg, "method": job.method_spec,
                                       "code_version": job.code_version}, list(job.split_files.values()))
    workdir.claim(job.work_dir, fingerprint)
    mirror = workdir.WorkDirMirror.from_env(job.run, job.work_dir, fingerprint)
    if mirror:
        mirror.restore(last_complete_checkpoint(job.work_dir / "checkpoints"))
    job.cpu_threads = record_threads(job.work_dir, job.name)
    return mirror


def record_threads(work_dir: Path, name: str) -> list[int]:
    """The CPU thread counts (torch.get_num_threads) of every session that trained in `work_dir`,
    this one last, kept in the work folder (and so in its mirror). On a CPU the thread count changes
    the order of floating-point reductions: the same job under 1 and 2 threads differs in weights by
    up to ~1e-5. A resume under another count is therefore said, in the log and in metrics.json's
    meta.cpu_threads_used; the work folder is kept, as an uninterrupted rerun would cost the work."""
    path, now = Path(work_dir) / workdir.THREADS_FILE, torch.get_num_threads()
    used = io.read_json(path)["used"] if path.is_file() and last_complete_checkpoint(Path(work_dir) / "checkpoints") \
        else []
    if used and used[-1] != now:
        log.warning("%s resumes under %d CPU threads after %s: its numbers may differ from an uninterrupted run's "
                    "by float rounding (the reduction order changes with the thread count)", name, now, used)
    if not used or used[-1] != now:
        used = used + [now]
        io.write_json(path, {"used": used})
    return used


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
        qa_args = (tokenizer, max_length, data_settings["doc_stride"], data_settings["max_query_length"],
                   families.qa_null_at_end(model_cfg["family"]))
        train_ds, dev_ds = encode_qa_train(splits["train"], *qa_args), encode_qa_train(splits["dev"], *qa_args)
    probe = encode_probe(splits["probe"], tokenizer, kind, max_length, data_settings["max_query_length"])
    return TaskData(splits, tokenizer, train_ds, dev_ds, make_batches(probe, tokenizer, rep_settings["batch_size"]))


def build_model(model_cfg: dict, task_def: dict, method: Method, seed: int, deterministic: bool = False,
                tokenizer=None, initial_adapter: Path | None = None):
    """Stage 2: the task model (new head drawn under `seed`) adapted by `method`
    (ftdrift.modeling.methods.adapt; full fine-tuning: the model itself).

    `tokenizer`: the job's (for the pad token), else loaded. `initial_adapter`: where a method whose
    initialisation rewrites the base weights (PiSSA) saves its adapter as initialised (the saved
    adapter is converted against it, so that it applies to the original weights). Returns
    (model, info): info is adapt's (method, adapted modules, trainable and total parameters, ...).
    """
    kind = task_kind(task_def)
    num_labels = len(task_def["labels"]) if kind == "classification" else None
    set_seed(seed, deterministic=deterministic)
    model = models.load_model(model_cfg, kind, num_labels, tokenizer or models.load_tokenizer(model_cfg))
    model, info = methods.adapt(model, method)
    if initial_adapter is not None:
        methods.save_initial(model, method, initial_adapter)
    return model, info


def check_feasible(model, max_length: int, num_labels: int | None, records: list[dict]) -> None:
    """Fail before training on settings that cannot work, with the reason."""
    check_max_length(model.config.to_dict(), max_length, model=type(model).__name__)
    if num_labels is not None:
        seen = {r["label"] for r in records}
        if max(seen) >= num_labels:
            raise ValueError(f"label count mismatch: data has label index {max(seen)} but the task declares "
                             f"{num_labels} labels")


def train(job: Job, data: TaskData, mirror=None) -> Trained:
    """Stages 2-4 with the out-of-memory retry policy (ftdrift.training.oom)."""
    training = job.settings["training"]
    trained, attempts, plan = oom.with_retries(lambda plan, number: train_attempt(job, data, plan, mirror),
                                               int(job.run["batch_size"]), training["max_micro_batch"])
    trained.attempts, trained.plan = attempts, plan
    return trained


def train_attempt(job: Job, data: TaskData, plan: dict, mirror=None) -> Trained:
    """Build the model and the Trainer for one micro-batch plan and train, resuming from the last
    complete checkpoint in the work folder."""
    run, training, data_settings = job.run, job.settings["training"], job.settings["data"]
    rep_settings, kind, precision = job.settings["representations"], job.kind, job.precision
    num_labels = len(job.task_def["labels"]) if kind == "classification" else None
    with job.clock.stage("model load"):
        model, method_info = build_model(job.model_cfg, job.task_def, job.method, int(run["seed"]),
                                         training["full_determinism"], data.tokenizer, job.initial_adapter)
    check_feasible(model, data_settings["max_length"][kind], num_labels,
                   data.splits["train"] + data.splits["dev"] if kind == "classification" else [])
    if not job.method.is_full:
        methods.check_passes_inputs(model, data.probe_batches[0][0])

    family = families.family(job.model_cfg["family"])
    store = SnapshotStore(job.work_dir / "representations.zarr", attrs={
        "model": job.model_cfg["name_or_path"], "poolings": list(family.poolings), "run": run, "precision": precision,
        "probe_ids": [r["id"] for r in data.splits["probe"]],
        "layer_names": models.layer_names(model.config.num_hidden_layers)})
    checkpoint_dir = job.work_dir / "checkpoints"
    report_to = tracking.report_to(job.wandb_cfg, job.name, f"{run['task']}-{run['method']}",
                                   [run["task"], run["method"], f"seed_{run['seed']}"], job.work_dir)
    args = training_arguments(run=run, name=job.name, training=training, plan=plan, precision=precision,
                              eval_batch_size=job.eval_batch_size, checkpoint_dir=checkpoint_dir, report_to=report_to)
    best = BestModelCallback(job.work_dir / "best")
    monitor = TrainingMonitor(int(run["batch_size"]), checkpoint_dir, check_finite=precision != "fp16",
                              loss_factor=training["divergence_loss_factor"])
    snapshots = SnapshotCallback(store, data.probe_batches, family.poolings, rep_settings["snapshot_steps"],
                                 rep_settings["dtype"], precision, clock=job.clock)
    callbacks = [monitor, snapshots, best]
    if job.base_store is not None:  # right after the step-0 snapshot it checks
        callbacks.insert(2, BaseModelGuard(job.base_store, store, job.model_cfg["name_or_path"]))
        if report_to:  # after the SnapshotCallback: logs the drift of what it wrote
            callbacks.append(LiveDrift(job.base_store, store, family.poolings, job.work_dir,
                                       every=rep_settings["snapshot_steps"]))
    if training["early_stopping_patience"]:
        callbacks.append(EarlyStoppingCallback(training["early_stopping_patience"]))
    if mirror:
        callbacks.append(mirror)  # after the others: it copies what they wrote
    callbacks.extend(job.callbacks)

    def compute_metrics(prediction):  # dev metrics at each evaluation (QA: dev loss only)
        return metrics.classification_metrics(prediction.label_ids, prediction.predictions.argmax(-1),
                                              job.task_def["metrics"])

    dev = dev_at_cadence(data.dev, training["eval_subset"], data_settings["split_seed"])
    trainer = StudyTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=dev,
                           data_collator=DataCollatorWithPadding(data.tokenizer), processing_class=data.tokenizer,
                           compute_metrics=compute_metrics if kind == "classification" else None,
                           callbacks=callbacks, train_lengths=data.train["length"], eval_lengths=dev["length"],
                           monitor=monitor, clock=job.clock)
    if report_to:
        tracking.attach(trainer, job.resolved_config, job.work_dir)
    last = last_complete_checkpoint(checkpoint_dir)
    if last:
        log.info("resuming %s from %s", job.name, last)
    started, in_loop = time.time(), job.clock.in_loop()
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        job.clock.split_loop(time.time() - started, in_loop)
    if monitor.divergence is not None:
        log.warning("%s diverged: %s; last good checkpoint: %s", job.name, monitor.divergence.reason,
                    monitor.divergence.last_good_checkpoint)
        keep_finite_snapshots(store, before=monitor.divergence.step)
    return Trained(model, trainer, best, store, last, time.time() - started,
                   sum(p.numel() for p in model.parameters() if p.requires_grad), method_info["total_params"],
                   method_info,
                   divergence=monitor.divergence)


def dev_at_cadence(dev, size: int | None, seed: int):
    """The dev examples (QA: windows) evaluated every `eval_steps`: all of them, or a fixed random
    subset of `size` (config `training.eval_subset`) drawn with `seed`. Early stopping and the best
    dev-loss weights read this subset's loss; the whole dev split is predicted once at the end
    (stage 5), and its metrics choose the hyperparameters."""
    if size is None or size >= len(dev):
        return dev
    return dev.select(sorted(np.random.default_rng(seed).choice(len(dev), size, replace=False).tolist()))


def keep_finite_snapshots(store: SnapshotStore, before: int) -> None:
    """Of a diverged run's snapshots keep those taken before step `before`, up to the first with
    a NaN or infinite value (float16 storage overflows early); the drift analysis refuses
    non-finite representations. The step-0 snapshot (the base model) always stays."""
    steps = store.steps()
    keep = sum(1 for step in steps if step < before)
    for index in range(1, keep):  # one snapshot at a time: a study run's whole array is gigabytes
        if not all(np.isfinite(store.group[pooling][index]).all() for pooling in store.attrs["poolings"]):
            keep = index
            break
    keep = max(keep, 1)
    if keep < len(steps):
        log.warning("keeping the diverged run's snapshots at steps %s of %s", steps[:keep], steps)
        store.truncate_after(steps[keep - 1])


def evaluate(job: Job, data: TaskData, trained: Trained) -> tuple[SplitPrediction, SplitPrediction]:
    """Stage 5: the best dev-loss weights back in; dev and validation predictions and metrics."""
    trained.best_info = trained.best.restore(trained.model)
    predict = predictor(trained.model, data.tokenizer, job.eval_batch_size, job.precision)
    settings = job.settings["data"]
    null_at_end = families.qa_null_at_end(job.model_cfg["family"])
    predictions = tuple(predict_split(predict, data.splits[split], job.task_def, data.tokenizer, settings, null_at_end)
                        for split in ("dev", "validation"))
    trained.eval_split_limit = predict.eval_splitter.limit  # the validator re-predicts with the same pieces
    return predictions


def run_status(steps: int, max_steps: int, divergence: Divergence | None) -> str:
    """metrics.json's meta.status: 'diverged' (see ftdrift.training.monitor), 'stopped_early'
    (early stopping on dev loss, before `max_steps`), or 'completed'."""
    if divergence is not None:
        return "diverged"
    return "stopped_early" if steps < max_steps else "completed"


def train_log(history: list[dict]) -> pd.DataFrame:
    """The Trainer's log history as train_log.csv: the same for a resumed run as for an
    uninterrupted one. A resumed run's history comes back from trainer_state.json with its keys
    sorted (columns in a fixed order here), and the Trainer's closing `train_loss` averages only the
    last session's steps (transformers 5.24, `_finalize_training`): it is left out; the per-step
    `loss` rows are the training curve."""
    frame = pd.DataFrame([{k: v for k, v in row.items() if k != "train_loss"} for row in history])
    first = [c for c in ("step", "epoch") if c in frame.columns]
    return frame[first + sorted(c for c in frame.columns if c not in first)]


def sort_target_modules(path: Path) -> None:
    """peft stores `target_modules` as a set, written in the order of the process's string hashing:
    sorted, adapter_config.json is the same file in every run."""
    if path.is_file():
        config = io.read_json(path)
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save(job: Job, data: TaskData, trained: Trained, dev: SplitPrediction, validation: SplitPrediction) -> dict:
    """Stage 6: the run's outputs, each atomic; metrics.json last marks the run complete."""
    state, best_info, outputs = trained.trainer.state, trained.best_info, job.outputs
    meta = {
        "run": job.run, "attempts": trained.attempts, "precision": job.precision, **trained.plan,
        "eval_batch_size": job.eval_batch_size, "eval_split_limit": trained.eval_split_limit, "steps": state.global_step, "max_steps": state.max_steps,
        "cpu_threads": torch.get_num_threads(), "cpu_threads_used": job.cpu_threads,
        "status": run_status(state.global_step, state.max_steps, trained.divergence),
        "stopped_early": state.global_step < state.max_steps,
        **(trained.divergence.meta() if trained.divergence else {}),
        "best_step": best_info["step"] if best_info else None,
        "best_dev_loss": best_info["eval_loss"] if best_info else None,
        "trainable_params": trained.trainable_params, "total_params": trained.total_params,
        "trainable_fraction": trained.trainable_params / trained.total_params,
        "method": job.method_spec, "method_info": trained.method_info,
        "train_seconds": trained.train_seconds, "resumed_from": trained.resumed_from,
        "snapshot_steps": trained.store.steps(),
        "stage_seconds": job.clock.rounded(),  # so far: the outputs are written after metrics.json's content
    }
    with io.atomic_path(outputs.representations) as tmp:
        shutil.copytree(trained.store.path, tmp, ignore=shutil.ignore_patterns("*.partial"))
    with io.atomic_path(outputs.model) as tmp:
        # an adapter is saved with its trained head, for the original base weights (PiSSA converted)
        methods.save_adapter(trained.model, job.method, tmp,
                             initial=job.initial_adapter if job.method.mutates_base else None)
        data.tokenizer.save_pretrained(tmp)
        sort_target_modules(Path(tmp) / "adapter_config.json")
    io.write_json(outputs.predictions, validation.predictions)
    io.write_csv(outputs.train_log, train_log(state.log_history))
    result = {"task": job.run["task"], "main_metric": job.task_def["main_metric"], "dev": dev.metrics,
              "validation": validation.metrics, "meta": meta}
    io.write_json(outputs.metrics, result)
    return result
