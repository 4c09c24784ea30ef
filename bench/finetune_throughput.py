"""Benchmarks 1 and 3: ftdrift's fine-tuning job vs a plain transformers.Trainer, and the snapshot cost.

Both sides train the embedded all-MiniLM-L6-v2 on the same prepared SST-2 split, fp32 on the CPU,
with the same micro-batch, optimizer, schedule, number of optimizer steps and the *same batches*
(the plain Trainer is given ftdrift's seeded length-grouped sampler, so the padding is identical;
what padding itself is worth is benchmark 2). W&B is disabled.

* baseline -- `transformers.Trainer`, no callbacks of ours, no evaluation, no checkpoints.
* ftdrift  -- the real job of `ftdrift.training.recipe`, driven stage by stage exactly as
  `finetune(...)` runs it (claim_work_dir, load_data, train, evaluate, save): StudyTrainer,
  TrainingMonitor (NaN guard on the Trainer's own gradient norm, per-parameter norms at logging
  steps), logging, SnapshotCallback, BestModelCallback, evaluation and a checkpoint at the last
  step, then the final evaluations and the atomic outputs. Nothing of ftdrift is patched or
  wrapped: the benchmark observes the job only through a TrainerCallback handed to the recipe
  (`Job.callbacks`, the `callbacks=` of `finetune`), which the recipe appends after its own.
  Every ftdrift run gets a fresh work folder, so it never resumes an earlier run's checkpoint.

Timing: a callback records every optimizer step's start (on_step_begin) and end (on_step_end) on
both sides. "Training loop" time = first step start -> last step end: forward, backward, clipping,
the monitor, the optimizer, the snapshot callback's cadence check and every logging step in
between, i.e. everything ftdrift adds per step. On the ftdrift side the callback also records when
on_log, on_evaluate, on_save, on_train_begin and on_train_end reach it. After on_step_end the
Trainer logs, then evaluates (Trainer.evaluate logs its metrics, then calls on_evaluate), then
writes the checkpoint (then on_save); after the loop it logs its summary, then calls on_train_end.
The evaluation, checkpoint write and logging that follow a step are therefore not timed directly:
each duration is *derived from consecutive event times* (log = step end -> train on_log; evaluate
= previous event -> on_evaluate, its own metrics log included; checkpoint = previous event ->
on_save; train end = summary on_log -> on_train_end). ftdrift's callbacks run before ours for the
same event, so each such duration includes ftdrift's hooks for that event (e.g. the evaluation
includes BestModelCallback writing the best weights; the train end includes the end-of-training
snapshot when the last step is not a cadence step).

Dropped: the old "callbacks_in_loop_share" (time inside ftdrift's own callbacks during the loop).
Measuring it needed wrapping TrainingMonitor's and SnapshotCallback's hooks; a callback passed
through `callbacks=` runs after ftdrift's and only sees the time between events, never the time
inside another callback, so that figure can no longer be measured without patching. What
ftdrift adds to the loop shows in the throughput ratio against the baseline.

Order: a short discarded warm-up baseline, then baseline, ftdrift, baseline, ... (`rounds` ftdrift
runs, each between two baselines); each ftdrift run's throughput over the mean of its two
neighbours, the median over rounds is the ratio. `--ablate` and `--micro` (see `ablate` and
`micro_costs`) take the step apart: one difference from the plain Trainer at a time, and the
per-step cost of each of ftdrift's additions in microseconds.

Benchmark 3 also times a bare no-grad forward pass over the same probe batches (same autocast, no
hidden states, no pooling, no store), interleaved with the snapshots: the best snapshot over the
best bare pass is the code's overhead over the physical floor (goal <= 1.1x).

Benchmark 3 (snapshot overhead at the study's cadence): the time of one snapshot of the study's
probe set for SST-2 (probe_size 1000, capped by the 872 validation examples; batch 32, float16),
divided by the time of the 100 training steps between two snapshots (100 x the measured ftdrift
step time). The snapshot is timed right after the `train` stage, on the trained model, by doing
exactly what SnapshotCallback does for one snapshot: `ftdrift.representations.extract.extract`
over the job's own probe batches (`TaskData.probe_batches`, built by `load_data` with the job's
batch size), poolings, dtype and precision, then `SnapshotStore.append` into a scratch store
(`snapshot_repeats` times; the mean is used). The run snapshots `probe` examples (default 256,
a seeded subset like the study's) and the time is scaled linearly to 872: a snapshot is a
fixed-batch forward pass over a random subset, so its cost is proportional to the number of
examples. This is the steady-state overhead of a long run. The wall time of this short run's
trainer.train() is recorded too, and "without snapshots" subtracts the run's snapshots (step 0
and the last step: the study's cadence of 100 steps is longer than the run) at the measured mean:
an estimate, as the in-run snapshots are not timed individually. The validation split is capped
at the probe size so the job's final evaluation (timed as a stage, not a figure) stays short.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import MINILM, data_dir, load, median, prepare
from _common import threads as limit_threads


class StepTimer:
    """TrainerCallback recording each optimizer step's start and end (perf_counter)."""

    def __init__(self):
        self.begin: list[float] = []
        self.end: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.end.append(time.perf_counter())

    def summary(self, tokens: int, examples_per_step: int) -> dict:
        steps = len(self.end)
        loop = self.end[-1] - self.begin[0]
        per_step = [e - b for b, e in zip(self.begin, self.end)]
        # step-to-step intervals include the logging between on_step_end and the next step
        intervals = [b2 - b1 for b1, b2 in zip(self.begin, self.begin[1:])]
        return {"steps": steps, "loop_s": loop, "step_s_mean": loop / steps,
                "step_s_median": median(intervals or per_step),
                "examples_per_s": steps * examples_per_step / loop, "tokens_per_s": tokens / loop,
                "tokens": tokens}


class EventTimer(StepTimer):
    """StepTimer that also records (event, global_step, perf_counter) for the events after a step.

    Passed to the recipe through `callbacks=`, it runs after ftdrift's own callbacks for every
    event, so an interval between two of its events includes ftdrift's hooks of the later one.
    """

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, int, float]] = []

    def _mark(self, name: str, state) -> None:
        self.events.append((name, state.global_step, time.perf_counter()))

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark("train_begin", state)

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self._mark("step_end", state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            kind = "log"  # a logging step's training entry
        elif any(key.startswith("eval_") for key in logs):
            kind = "eval_log"  # Trainer.evaluate logs its metrics before on_evaluate
        elif "train_loss" in logs:
            kind = "summary_log"  # after the loop, before on_train_end
        else:
            kind = "other_log"
        self._mark(kind, state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark("evaluate", state)

    def on_save(self, args, state, control, **kwargs):
        self._mark("save", state)

    def on_train_end(self, args, state, control, **kwargs):
        self._mark("train_end", state)

    def after_step(self) -> dict[str, list[float]]:
        """Durations derived from consecutive event times: each event's time minus the previous
        recorded event's (the evaluation's own metrics log counts as part of the evaluation)."""
        keys = {"log": "log_s", "evaluate": "evaluate_s", "save": "save_checkpoint_s", "train_end": "train_end_s"}
        out: dict[str, list[float]] = {key: [] for key in keys.values()}
        previous = None
        for name, _, t in self.events:
            if name == "eval_log":
                continue
            if previous is not None and name in keys:
                out[keys[name]].append(t - previous)
            previous = t
        return out


def tokens_seen(lengths: list[int], batch: int, steps: int, seed: int) -> int:
    """Real (non-padding) tokens of the first `steps` batches of the seeded length-grouped order."""
    from ftdrift.training.trainer import EpochSeededLengthSampler

    sampler = EpochSeededLengthSampler(batch, lengths=lengths, seed=seed)
    sampler.set_epoch(0)
    return sum(lengths[i] for i in list(sampler)[: steps * batch])


def _callback(timer):
    """A TrainerCallback forwarding to the timer's on_* methods (transformers imported lazily)."""
    from transformers import TrainerCallback

    hooks = {name: getattr(timer, name) for name in dir(timer) if name.startswith("on_")}
    return type("_Timer", (TrainerCallback,), hooks)()


def run_baseline(folder: Path, settings: dict, work: Path, steps: int, batch: int, lr: float, seed: int,
                 n_threads: int) -> dict:
    """The plain Trainer script: what a user writes without ftdrift (plus the same sampler)."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from ftdrift.core import io
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.training.trainer import EpochSeededLengthSampler

    torch.set_num_threads(n_threads)
    t0 = time.perf_counter()
    training = settings["training"]
    tokenizer = models.load_tokenizer(MINILM)
    set_seed(seed)
    model = models.load_model(MINILM, "classification", 2, tokenizer)
    train = encode_classification(io.read_jsonl(folder / "train.jsonl"), tokenizer,
                                  settings["data"]["max_length"]["classification"])
    lengths = train["length"]

    class SameBatches(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return EpochSeededLengthSampler(self.args.train_batch_size, lengths=lengths, seed=seed)

    args = TrainingArguments(
        output_dir=str(work / "baseline"), learning_rate=lr, per_device_train_batch_size=batch,
        max_steps=steps, warmup_steps=training["warmup_ratio"], lr_scheduler_type=training["lr_scheduler"],
        weight_decay=training["weight_decay"], max_grad_norm=training["max_grad_norm"],
        logging_steps=training["logging_steps"], eval_strategy="no", save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, optim="adamw_torch", use_cpu=True, dataloader_pin_memory=False)
    timer = StepTimer()
    trainer = SameBatches(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          callbacks=[_callback(timer)])
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    out = timer.summary(tokens_seen(lengths, batch, steps, seed), batch)
    out.update(setup_s=setup, train_call_s=train_s, job_s=time.perf_counter() - t0)
    return out


def run_ftdrift(folder: Path, settings: dict, work: Path, steps: int, batch: int, lr: float, seed: int,
                n_threads: int, snapshot_steps: int, snapshot_batch: int, snapshot_repeats: int = 3) -> dict:
    """ftdrift's real fine-tuning job, its stages driven in `finetune`'s order and observed only
    through a callback; then one snapshot timed on the trained model (see the module doc)."""
    import torch

    from ftdrift.training import recipe, workdir

    settings = json.loads(json.dumps(settings))
    settings["training"].update(max_steps=steps, epochs=1, eval_steps=steps, save_steps=steps,
                                early_stopping_patience=None, max_micro_batch=batch, precision="fp32")
    settings["representations"].update(snapshot_steps=snapshot_steps, batch_size=snapshot_batch, dtype="float16")
    out_dir = Path(tempfile.mkdtemp(prefix="ftdrift-", dir=work))  # fresh: never resume an earlier run
    timer = EventTimer()
    job = recipe.Job(
        run={"task": "sst2", "method": "full", "lr": str(lr), "batch_size": batch, "seed": seed},
        task_def=_catalog()["sst2"], settings=settings, model_cfg=MINILM,
        lora_cfg={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None},
        wandb_cfg={"mode": "disabled", "project": "ftdrift", "entity": None},
        data_dir=folder, work_dir=out_dir / "work",
        outputs=recipe.RunOutputs(metrics=out_dir / "metrics.json", train_log=out_dir / "train_log.csv",
                                  predictions=out_dir / "predictions.json", representations=out_dir / "reps.zarr",
                                  model=out_dir / "model"),
        callbacks=(_callback(timer),))
    stage_s: dict[str, float] = {}

    def stage(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        stage_s[name] = time.perf_counter() - t
        return result

    # what recipe.finetune(...) does, stage by stage (finetune sets the threads first, too)
    torch.set_num_threads(n_threads)
    mirror = stage("claim_work_dir", recipe.claim_work_dir, job)
    data = stage("load_data", recipe.load_data, job.split_files, job.task_def, job.model_cfg, settings["data"],
                 settings["representations"])
    trained = stage("train", recipe.train, job, data, mirror)
    snapshot_s, extract_s, bare_s = time_snapshot(job, data, trained, out_dir / "timed-snapshots.zarr",
                                                  snapshot_repeats)
    dev, validation = stage("evaluate", recipe.evaluate, job, data, trained)
    result = stage("save", recipe.save, job, data, trained, dev, validation)
    workdir.drop(job.work_dir)  # as finetune does; no later job reads these outputs, so the mirror goes too
    if mirror:
        workdir.release(job.run)

    meta = result["meta"]
    out = timer.summary(int(trained.trainer.state.num_input_tokens_seen), batch)
    out.update(train_call_s=meta["train_seconds"], job_s=sum(stage_s.values()), stage_s=stage_s,
               snapshot_steps=meta["snapshot_steps"], snapshot_s=snapshot_s, snapshot_extract_s=extract_s,
               bare_forward_s=bare_s, probe_mean_tokens=_mean_tokens(data.probe_batches),
               train_mean_tokens=float(sum(data.train["length"]) / len(data.train)),
               **timer.after_step(), probe_examples=len(data.splits["probe"]))
    return out


def time_snapshot(job, data, trained, path: Path, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Wall seconds of `repeats` snapshots of the trained model, each what SnapshotCallback does for
    one: extract over the job's probe batches with its poolings, dtype and precision, then append to
    a store (a scratch one with the job store's attributes); and, interleaved with them (bare,
    snapshot, bare, snapshot, ...), of a bare no-grad forward pass over exactly the same batches:
    `model(**batch)` in eval mode under the same autocast, no hidden states, no pooling, no
    store. The bare pass is the floor a snapshot is held to (goal: snapshot <= 1.1x bare).
    Returns (snapshot_s, extract_s, bare_forward_s)."""
    import torch

    from ftdrift.core.precision import autocast
    from ftdrift.core.store import SnapshotStore
    from ftdrift.representations.extract import extract
    from ftdrift.study import families

    poolings = families.family(job.model_cfg).poolings  # as train_attempt gives SnapshotCallback
    rep = job.settings["representations"]
    store = SnapshotStore(path, attrs=trained.store.attrs)
    model = trained.model
    device = next(model.parameters()).device

    def bare() -> float:
        was_training = model.training
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for batch, _ in data.probe_batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(job.precision, device):
                    model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
        model.train(was_training)
        return seconds

    snapshot_s, extract_s, bare_s = [], [], []
    if repeats:  # warm-up: the first eval-mode pass after training pays one-off costs; neither side gets them
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast(job.precision, device):
            model(**{k: v.to(device) for k, v in data.probe_batches[0][0].items()})
        model.train(was_training)
    for step in range(repeats):
        bare_s.append(bare())
        t = time.perf_counter()
        pooled = extract(model, data.probe_batches, poolings, rep["dtype"], precision=job.precision)
        extracted = time.perf_counter()
        store.append(step, pooled)
        snapshot_s.append(time.perf_counter() - t)
        extract_s.append(extracted - t)
    return snapshot_s, extract_s, bare_s


ABLATIONS = ("baseline", "nan_filter_off", "tokens_non_padding", "group_by_length", "eval_save_steps",
             "study_trainer", "study_trainer_monitor", "ftdrift_args", "ftdrift_all")


def ablate(data: str | None = None, steps: int = 20, batch: int = 16, lr: float = 1e-4, seed: int = 42,
           n_threads: int = 1, rounds: int = 3, variants: tuple[str, ...] = ABLATIONS, skip: int = 2,
           scratch: Path | None = None) -> dict:
    """Where a step of ftdrift's Trainer differs from the plain Trainer's: each variant is the
    baseline's plain Trainer with ONE of ftdrift's differences added, plus ftdrift's full set.

    * nan_filter_off      -- logging_nan_inf_filter=False (ftdrift) instead of True (the default,
      an isnan/isinf of every micro-batch's loss, i.e. one host sync per micro-batch);
    * tokens_non_padding  -- include_num_input_tokens_seen="non_padding": a per-micro-batch count of
      the non-padding tokens, gathered and `.item()`-ed;
    * group_by_length     -- train_sampling_strategy="group_by_length" (the sampler itself is ours
      on both sides);
    * eval_save_steps     -- eval/save strategy "steps" with eval_steps = save_steps beyond the run
      (only the per-step flow checks; no evaluation or checkpoint happens), metric_for_best_model,
      restore_callback_states_from_checkpoint, an eval dataset;
    * study_trainer       -- StudyTrainer (the study's compute_loss, get_batch_samples, training_step
      and _get_grad_norm overrides), no monitor;
    * study_trainer_monitor -- the same with TrainingMonitor (one isfinite sync per step, the clip
      counter, per-parameter norms at logging steps);
    * ftdrift_args        -- the plain Trainer with `training_arguments(...)` exactly as the job builds
      them (eval/save beyond the run);
    * ftdrift_all         -- StudyTrainer + monitor + `training_arguments(...)`: the job's Trainer
      without snapshots, the best-model callback and the final evaluation.

    Every run starts from the same initial weights (a state_dict copy), sees the same batches, and
    runs `steps` optimizer steps; the figure is the median interval between consecutive step
    starts after the first `skip` steps (logging steps fall in the interval they follow; the
    median drops them). Rounds interleave the variants (A B C ... A B C ...), so slow drift of the
    machine's load hits every variant alike; each variant's ratio is taken against the baseline
    of its own round, then the median over rounds is reported.
    """
    import copy

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from ftdrift.core import io
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.training.monitor import TrainingMonitor
    from ftdrift.training.trainer import EpochSeededLengthSampler, StudyTrainer, training_arguments

    own_scratch = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ftdrift-ablate-"))
    unknown = set(variants) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {sorted(unknown)}; known: {', '.join(ABLATIONS)}")
    try:
        folder, settings = prepare("sst2", data_dir(data), scratch, probe_size=64, max_validation=64)
        training = json.loads(json.dumps(settings["training"]))
        training.update(max_steps=steps, epochs=1, eval_steps=10 * steps, save_steps=10 * steps,
                        early_stopping_patience=None)
        tokenizer = models.load_tokenizer(MINILM)
        set_seed(seed)
        model0 = models.load_model(MINILM, "classification", 2, tokenizer)
        initial = copy.deepcopy(model0.state_dict())
        max_length = settings["data"]["max_length"]["classification"]
        train = encode_classification(io.read_jsonl(folder / "train.jsonl"), tokenizer, max_length)
        dev = encode_classification(io.read_jsonl(folder / "dev.jsonl")[:32], tokenizer, max_length)
        lengths = train["length"]

        class SameBatches(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return EpochSeededLengthSampler(self.args.train_batch_size, lengths=lengths, seed=seed)

        def baseline_args(out: Path, **extra) -> TrainingArguments:
            kw = dict(output_dir=str(out), learning_rate=lr, per_device_train_batch_size=batch, max_steps=steps,
                      warmup_steps=training["warmup_ratio"], lr_scheduler_type=training["lr_scheduler"],
                      weight_decay=training["weight_decay"], max_grad_norm=training["max_grad_norm"],
                      logging_steps=training["logging_steps"], eval_strategy="no", save_strategy="no",
                      report_to=[], seed=seed, data_seed=seed, optim="adamw_torch", use_cpu=True,
                      dataloader_pin_memory=False)
            kw.update(extra)
            return TrainingArguments(**kw)

        def one(variant: str, out: Path) -> dict:
            model0.load_state_dict(initial)
            model0.train()
            timer = StepTimer()
            common = dict(model=model0, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer)
            extra = {"nan_filter_off": dict(logging_nan_inf_filter=False),
                     "tokens_non_padding": dict(include_num_input_tokens_seen="non_padding"),
                     "group_by_length": dict(train_sampling_strategy="group_by_length"),
                     "eval_save_steps": dict(eval_strategy="steps", eval_steps=10 * steps, save_strategy="steps",
                                             save_steps=10 * steps, metric_for_best_model="eval_loss",
                                             greater_is_better=False, restore_callback_states_from_checkpoint=True),
                     }.get(variant, {})
            if variant in ("ftdrift_args", "ftdrift_all"):
                args = training_arguments(run={"seed": seed, "lr": lr}, name=variant, training=training,
                                          plan={"micro_batch": batch, "accumulation": 1,
                                                "gradient_checkpointing": False},
                                          precision="fp32", eval_batch_size=batch, checkpoint_dir=out, report_to=[])
            else:
                args = baseline_args(out, **extra)
            if variant in ("study_trainer", "study_trainer_monitor", "ftdrift_all"):
                monitor = (TrainingMonitor(batch, out) if variant != "study_trainer" else None)
                trainer = StudyTrainer(args=args, eval_dataset=dev, train_lengths=lengths, monitor=monitor,
                                       callbacks=[c for c in (monitor, _callback(timer)) if c is not None], **common)
            else:
                cls = SameBatches if variant != "ftdrift_args" else type(
                    "SameBatchesSeq", (SameBatches,), {"_get_eval_sampler": StudyTrainer._get_eval_sampler})
                trainer = cls(args=args, eval_dataset=dev if args.eval_strategy != "no" else None,
                              callbacks=[_callback(timer)], **common)
            trainer.train()
            intervals = [b2 - b1 for b1, b2 in zip(timer.begin, timer.begin[1:])][skip:]
            return {"step_s_median": median(intervals), "loop_s": timer.end[-1] - timer.begin[skip],
                    "final_loss": float(trainer.state.log_history[-1].get("train_loss", float("nan")))}

        results: dict[str, list[dict]] = {v: [] for v in variants}
        load_before = load()
        with limit_threads(n_threads):
            one(variants[0], scratch / "warm-up")  # the process's first run pays one-off costs (kernels, allocator)
            for r in range(rounds):
                for v in variants:
                    results[v].append(one(v, scratch / f"{v}-{r}"))
                    print(f"[ablate] round {r} {v}: median step {results[v][-1]['step_s_median'] * 1000:.1f} ms "
                          f"(load {load()})", file=sys.stderr, flush=True)
        summary = {}
        for v in variants:
            ratios = [b["step_s_median"] / x["step_s_median"] for b, x in zip(results["baseline"], results[v])] \
                if "baseline" in results else []
            summary[v] = {"step_s_median": median([x["step_s_median"] for x in results[v]]),
                          "throughput_vs_baseline_median": median(ratios),
                          "throughput_vs_baseline_per_round": ratios,
                          "final_train_loss": [x["final_loss"] for x in results[v]]}
        return {"config": {"steps": steps, "micro_batch": batch, "rounds": rounds, "skip": skip,
                           "torch_threads": n_threads},
                "variants": summary, "load_avg": {"before": load_before, "after": load()}}
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def micro_costs(data: str | None = None, batch: int = 16, seed: int = 42, n_threads: int = 1, number: int = 200,
                scratch: Path | None = None) -> dict:
    """Per-step cost (microseconds) of each thing ftdrift's Trainer does that the plain one does not,
    each timed alone with timeit on a real SST-2 micro-batch and MiniLM's real gradients. Load
    noise that swamps a whole-step A/B barely moves these (each is timed `number` times, best of 5).

    * tokens_non_padding -- Trainer._track_num_input_tokens with "non_padding" (mask sum, gather, .item())
    * nan_inf_filter     -- the baseline's isnan/isinf test of the micro-batch loss (ftdrift skips it)
    * study_loss         -- ftdrift.core.loss.batch_loss on the logits vs the model's own CE
      (the difference is what StudyTrainer.compute_loss adds; the forward pass is the same)
    * monitor_step       -- observe_loss + observe_grad_norm + on_pre_optimizer_step at a
      non-logging step (one isfinite sync, the clip counter)
    * monitor_logging_step -- on_pre_optimizer_step at a logging step (per-parameter norms), and
      its on_log (psutil, float conversions): per logging step, i.e. / logging_steps per step
    * snapshot_cadence_check -- SnapshotCallback.on_step_end at a non-cadence step
    * trainer_floating_point_ops -- NOT an ftdrift addition: what the plain Trainer pays per micro-batch
      for its total_flos (model.num_parameters, a walk over every module); StudyTrainer.floating_point_ops
      counts the parameters once, so this is what that override saves ftdrift per micro-batch
    * callback_dispatch  -- the 4 per-step events dispatched to ftdrift's callbacks (beyond the flow
      callback), their per-step bodies excluded where measured above
    """
    import timeit

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerControl, TrainerState, TrainingArguments

    from ftdrift.core import io, loss
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.training.monitor import TrainingMonitor

    own_scratch = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ftdrift-micro-"))
    try:
        folder, settings = prepare("sst2", data_dir(data), scratch, probe_size=64, max_validation=64)
        tokenizer = models.load_tokenizer(MINILM)
        model = models.load_model(MINILM, "classification", 2, tokenizer)
        rows = encode_classification(io.read_jsonl(folder / "train.jsonl")[:batch], tokenizer,
                                     settings["data"]["max_length"]["classification"])
        keep = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in rows.column_names]
        inputs = DataCollatorWithPadding(tokenizer)([{k: rows[i][k] for k in keep} for i in range(batch)])
        out: dict[str, float] = {}

        def t(name, fn):
            fn()
            out[name] = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6

        with limit_threads(n_threads):
            args = TrainingArguments(output_dir=str(scratch / "m"), include_num_input_tokens_seen="non_padding",
                                     use_cpu=True, report_to=[], logging_steps=10, max_grad_norm=1.0)
            trainer = Trainer(model=model, args=args, processing_class=tokenizer)
            t("tokens_non_padding", lambda: trainer._track_num_input_tokens(inputs))
            # paid by the plain Trainer every micro-batch (Trainer.floating_point_ops walks every module
            # and parameter for model.num_parameters); StudyTrainer counts once, which makes it ~free
            t("trainer_floating_point_ops", lambda: trainer.floating_point_ops(inputs))
            model.train()
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            logits = outputs.logits.detach().requires_grad_()
            step_loss = torch.nn.functional.cross_entropy(logits, inputs["labels"]).detach()
            t("nan_inf_filter", lambda: bool(torch.isnan(step_loss) or torch.isinf(step_loss)))
            own = lambda: torch.nn.functional.cross_entropy(logits.view(-1, 2), inputs["labels"].view(-1))  # noqa: E731
            study = lambda: loss.batch_loss({"logits": logits}, {"labels": inputs["labels"]},  # noqa: E731
                                            inputs["attention_mask"], batch)
            t("_model_own_ce", own)
            t("_study_batch_loss", study)
            out["study_loss"] = out["_study_batch_loss"] - out["_model_own_ce"]
            full = model(**inputs)
            full.loss.backward()  # real gradients for the monitor
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            monitor = TrainingMonitor(batch, scratch / "m")
            state, control = TrainerState(), TrainerControl()
            state.global_step = 0

            def monitor_step():
                monitor.observe_loss(step_loss)
                monitor.observe_grad_norm(grad_norm)
                monitor.on_pre_optimizer_step(args, state, control, model=model)

            state.global_step = 3  # step 4: not a logging step
            t("monitor_step", monitor_step)
            monitor._pending = None
            state.global_step = 9  # step 10: a logging step

            def monitor_logging_step():
                monitor_step()
                state.global_step = 10
                logs = {"loss": 0.69, "grad_norm": float(grad_norm), "learning_rate": 1e-4}
                monitor.on_log(args, state, control, logs=logs)
                state.global_step = 9

            monitor.on_train_begin(args, state, control)
            t("monitor_logging_step", monitor_logging_step)
            out["monitor_logging_step_per_step"] = out["monitor_logging_step"] / args.logging_steps

            from ftdrift.representations.snapshots import SnapshotCallback

            snap = SnapshotCallback(None, [], ("mean",), 100, "float16")
            state.global_step = 7
            t("snapshot_cadence_check", lambda: snap.on_step_end(args, state, control, model=model))
            from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

            plain = CallbackHandler([DefaultFlowCallback()], model, tokenizer, None, None)
            ours = CallbackHandler([DefaultFlowCallback(), monitor, snap], model, tokenizer, None, None)
            state.global_step, state.max_steps = 3, 1000
            t("_dispatch_step_end_plain", lambda: plain.on_step_end(args, state, control))
            t("_dispatch_step_end_ours", lambda: ours.on_step_end(args, state, control))
            # every step fires on_step_begin, on_pre_optimizer_step, on_optimizer_step, on_step_end
            out["callback_dispatch"] = 4 * (out["_dispatch_step_end_ours"] - out["_dispatch_step_end_plain"])
        return {"microseconds": out, "batch": batch, "torch_threads": n_threads, "load": load()}
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _mean_tokens(batches) -> float:
    """Mean real (non-padding) tokens per example of probe batches [(batch, positions), ...]."""
    real = sum(int(b["attention_mask"].sum()) for b, _ in batches)
    return real / sum(len(chunk) for _, chunk in batches)


def snapshot_share(probe: int, cadence: int, batch: int, fwd_over_train: float) -> float:
    """A snapshot's cost as a share of the training it follows (docs/performance.md, benchmark 3):

        share = (P * c_fwd) / (C * B * c_train)

    P probe examples per snapshot, C snapshot cadence in optimizer steps, B examples per step,
    c_fwd / c_train (`fwd_over_train`) the cost of one probe example's no-grad forward pass over
    one training example's step (forward + backward ~ 3 forwards, so ~1/3 x the probe/train
    length ratio). The code's share is only what a snapshot costs beyond a bare forward pass.
    """
    return probe * fwd_over_train / (cadence * batch)


def _catalog():
    from _common import REPO

    from ftdrift.study import config as ftconfig

    return ftconfig.load_catalog(REPO / "config" / "tasks.yaml")


def run(data: str | None = None, steps: int = 24, batch: int = 16, lr: float = 1e-4, seed: int = 42,
        n_threads: int = 1, cadence: int = 100, probe: int = 256, study_probe: int = 1000,
        snapshot_batch: int = 32, scratch: Path | None = None, snapshot_repeats: int = 3, rounds: int = 3) -> dict:
    """A short discarded warm-up baseline, then baseline, ftdrift, baseline, ftdrift, ... baseline
    (`rounds` ftdrift runs, each between two baselines: load drift on a shared machine shows as a
    gap between neighbouring baselines). Each ftdrift run is compared with the mean of its two
    neighbours and the median of those ratios is the figure; the snapshot is timed in the first
    ftdrift run only."""
    own_scratch = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ftdrift-bench-"))
    try:
        # validation capped at the probe size: the job's final evaluation is not what is measured
        folder, settings = prepare("sst2", data_dir(data), scratch, probe_size=probe, max_validation=probe)
        from ftdrift.data.tasks import load_split

        full_validation = len(load_split(_catalog()["sst2"], data_dir(data), "validation")[0])
        with limit_threads(n_threads):
            load_before = load()
            # the process's first training pays one-off costs (kernel selection, allocator growth):
            # a few discarded steps keep them out of the first baseline
            run_baseline(folder, settings, scratch, 3, batch, lr, seed, n_threads)
            baselines = [run_baseline(folder, settings, scratch, steps, batch, lr, seed, n_threads)]
            fts = []
            for r in range(max(1, rounds)):
                fts.append(run_ftdrift(folder, settings, scratch, steps, batch, lr, seed, n_threads, cadence,
                                       snapshot_batch, snapshot_repeats if r == 0 else 0))
                baselines.append(run_baseline(folder, settings, scratch, steps, batch, lr, seed, n_threads))
        pairs = list(zip(fts, baselines, baselines[1:]))
        ratios = [f["examples_per_s"] / ((a["examples_per_s"] + b["examples_per_s"]) / 2) for f, a, b in pairs]
        step_ratios = [(a["step_s_median"] + b["step_s_median"]) / 2 / f["step_s_median"] for f, a, b in pairs]
        spreads = [abs(a["examples_per_s"] - b["examples_per_s"]) / ((a["examples_per_s"] + b["examples_per_s"]) / 2)
                   for _, a, b in pairs]
        base_eps = median([b["examples_per_s"] for b in baselines])
        base_tps = median([b["tokens_per_s"] for b in baselines])
        ft = dict(fts[0])  # the run with the snapshot timings; its throughput figures are the medians
        ft.update(examples_per_s=median([f["examples_per_s"] for f in fts]),
                  tokens_per_s=median([f["tokens_per_s"] for f in fts]),
                  step_s_mean=median([f["step_s_mean"] for f in fts]),
                  step_s_median=median([f["step_s_median"] for f in fts]))
        snap = ft["snapshot_s"]
        snap_mean = sum(snap) / len(snap)
        # the study's probe set for this task: min(probe_size, validation split)
        study_n = min(study_probe, full_validation)
        snap_study = snap_mean / ft["probe_examples"] * study_n
        bare_mean = sum(ft["bare_forward_s"]) / len(ft["bare_forward_s"])
        # the formula's inputs: nominal (a training example = 3 forwards, times the length ratio)
        # and measured (this run's bare forward per probe example over its step time per example)
        length_ratio = ft["probe_mean_tokens"] / ft["train_mean_tokens"]
        nominal = length_ratio / 3
        measured = (bare_mean / ft["probe_examples"]) / (ft["step_s_mean"] / batch)
        share = {"formula": "share = (P * c_fwd) / (C * B * c_train)", "P": study_n, "C": cadence,
                 "probe_mean_tokens": ft["probe_mean_tokens"], "train_mean_tokens": ft["train_mean_tokens"],
                 "c_fwd_over_c_train_nominal": nominal, "c_fwd_over_c_train_measured": measured,
                 "by_batch": {str(b): {"nominal": snapshot_share(study_n, cadence, b, nominal),
                                       "measured": snapshot_share(study_n, cadence, b, measured),
                                       "equal_lengths": snapshot_share(study_n, cadence, b, 1 / 3)}
                              for b in (8, 16)}}
        return {
            "config": {"model": MINILM["name_or_path"], "task": "sst2", "steps": steps, "micro_batch": batch,
                       "precision": "fp32", "torch_threads": n_threads, "device": "cpu",
                       "study_snapshot_cadence_steps": cadence, "snapshot_batch": snapshot_batch,
                       "probe_examples_measured": ft["probe_examples"], "probe_examples_study": study_n,
                       "snapshot_repeats": snapshot_repeats, "rounds": len(fts)},
            "baselines": baselines, "ftdrift": ft, "ftdrift_runs": fts,
            "baseline_examples_per_s": base_eps, "baseline_tokens_per_s": base_tps,
            "baseline_spread": max(spreads),
            # 1: training throughput, same steps and batches (>= 1.0: ftdrift is not slower): the
            # median over rounds of each ftdrift run against the mean of its neighbouring baselines
            "throughput_ratio": median(ratios), "throughput_ratios": ratios,
            "throughput_ratio_median_step": median(step_ratios), "throughput_ratios_median_step": step_ratios,
            # 3: steady-state snapshot overhead at the study's cadence and probe size
            "snapshot_mean_s_measured": snap_mean,
            "snapshot_s_study_probe": snap_study,
            "train_s_per_cadence": cadence * ft["step_s_mean"],
            "snapshot_overhead_at_cadence": snap_study / (cadence * ft["step_s_mean"]),
            # 3: the snapshot against its physical floor, a bare no-grad forward over the same batches
            "bare_forward_mean_s_measured": bare_mean,
            # best over best: the least load-sensitive figure (as _common.best_of); the mean's beside it
            "snapshot_over_bare_forward": min(snap) / min(ft["bare_forward_s"]),
            "snapshot_over_bare_forward_mean": snap_mean / bare_mean,
            "snapshot_share_formula": share,
            # this short run: trainer.train() wall time with its snapshots vs without them (an
            # estimate: the run's snapshots, step 0 and the last step, at the measured mean)
            "this_run_train_s_with_snapshots": ft["train_call_s"],
            "this_run_train_s_without_snapshots": ft["train_call_s"] - len(ft["snapshot_steps"]) * snap_mean,
            "load_avg": {"before": load_before, "after": load()},
        }
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--probe", type=int, default=256, help="probe examples snapshotted (scaled to the study's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cadence", type=int, default=100, help="the study's snapshot_steps")
    p.add_argument("--rounds", type=int, default=3,
                   help="ftdrift runs, each between two baselines (with --ablate: interleaved rounds)")
    p.add_argument("--ablate", action="store_true",
                   help="instead: one-difference-at-a-time A/B of the Trainer step (see `ablate`)")
    p.add_argument("--variants", default=",".join(ABLATIONS), help="--ablate: comma-separated subset")
    p.add_argument("--micro", action="store_true", help="instead: per-step micro-costs (see `micro_costs`)")
    a = p.parse_args()
    if a.micro:
        print(json.dumps(micro_costs(a.data_dir, a.batch, n_threads=a.threads), indent=2, default=str))
        sys.exit(0)
    if a.ablate:
        print(json.dumps(ablate(a.data_dir, a.steps, a.batch, n_threads=a.threads, rounds=a.rounds,
                                variants=tuple(v for v in a.variants.split(",") if v)), indent=2, default=str))
        sys.exit(0)
    print(json.dumps(run(a.data_dir, a.steps, a.batch, n_threads=a.threads, cadence=a.cadence, probe=a.probe,
                         rounds=a.rounds),
                     indent=2, default=str))
