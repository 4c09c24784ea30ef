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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MINILM, data_dir, load, median, prepare  # noqa: E402
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
                n_threads: int, snapshot_steps: int, snapshot_batch: int, snapshot_repeats: int = 2) -> dict:
    """ftdrift's real fine-tuning job, its stages driven in `finetune`'s order and observed only
    through a callback; then one snapshot timed on the trained model (see the module doc)."""
    import torch

    from ftdrift.training import recipe

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
    snapshot_s, extract_s = time_snapshot(job, data, trained, out_dir / "timed-snapshots.zarr", snapshot_repeats)
    dev, validation = stage("evaluate", recipe.evaluate, job, data, trained)
    result = stage("save", recipe.save, job, data, trained, dev, validation)
    if mirror:
        mirror.discard()

    meta = result["meta"]
    out = timer.summary(int(trained.trainer.state.num_input_tokens_seen), batch)
    out.update(train_call_s=meta["train_seconds"], job_s=sum(stage_s.values()), stage_s=stage_s,
               snapshot_steps=meta["snapshot_steps"], snapshot_s=snapshot_s, snapshot_extract_s=extract_s,
               **timer.after_step(), probe_examples=len(data.splits["probe"]))
    return out


def time_snapshot(job, data, trained, path: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds of `repeats` snapshots of the trained model, each what SnapshotCallback does for
    one: extract over the job's probe batches with its poolings, dtype and precision, then append to
    a store (a scratch one with the job store's attributes). Returns (snapshot_s, extract_s)."""
    from ftdrift.core.store import SnapshotStore
    from ftdrift.representations.extract import extract
    from ftdrift.study import families

    poolings = families.family(job.model_cfg["family"]).poolings  # as train_attempt gives SnapshotCallback
    rep = job.settings["representations"]
    store = SnapshotStore(path, attrs=trained.store.attrs)
    snapshot_s, extract_s = [], []
    for step in range(repeats):
        t = time.perf_counter()
        pooled = extract(trained.model, data.probe_batches, poolings, rep["dtype"], precision=job.precision)
        extracted = time.perf_counter()
        store.append(step, pooled)
        snapshot_s.append(time.perf_counter() - t)
        extract_s.append(extracted - t)
    return snapshot_s, extract_s


def _catalog():
    from _common import REPO

    from ftdrift.study import config as ftconfig

    return ftconfig.load_catalog(REPO / "config" / "tasks.yaml")


def run(data: str | None = None, steps: int = 24, batch: int = 16, lr: float = 1e-4, seed: int = 42,
        n_threads: int = 1, cadence: int = 100, probe: int = 256, study_probe: int = 1000,
        snapshot_batch: int = 32, scratch: Path | None = None, snapshot_repeats: int = 2) -> dict:
    """Baseline, ftdrift, baseline again (A-B-A: load drift on a shared machine shows as a gap
    between the two baselines; their mean is the reference)."""
    own_scratch = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ftdrift-bench-"))
    try:
        # validation capped at the probe size: the job's final evaluation is not what is measured
        folder, settings = prepare("sst2", data_dir(data), scratch, probe_size=probe, max_validation=probe)
        from ftdrift.data.tasks import load_split

        full_validation = len(load_split(_catalog()["sst2"], data_dir(data), "validation")[0])
        with limit_threads(n_threads):
            load_before = load()
            base_a = run_baseline(folder, settings, scratch, steps, batch, lr, seed, n_threads)
            ft = run_ftdrift(folder, settings, scratch, steps, batch, lr, seed, n_threads, cadence, snapshot_batch,
                             snapshot_repeats)
            base_b = run_baseline(folder, settings, scratch, steps, batch, lr, seed, n_threads)
        base_eps = (base_a["examples_per_s"] + base_b["examples_per_s"]) / 2
        base_tps = (base_a["tokens_per_s"] + base_b["tokens_per_s"]) / 2
        snap = ft["snapshot_s"]
        snap_mean = sum(snap) / len(snap)
        # the study's probe set for this task: min(probe_size, validation split)
        study_n = min(study_probe, full_validation)
        snap_study = snap_mean / ft["probe_examples"] * study_n
        return {
            "config": {"model": MINILM["name_or_path"], "task": "sst2", "steps": steps, "micro_batch": batch,
                       "precision": "fp32", "torch_threads": n_threads, "device": "cpu",
                       "study_snapshot_cadence_steps": cadence, "snapshot_batch": snapshot_batch,
                       "probe_examples_measured": ft["probe_examples"], "probe_examples_study": study_n,
                       "snapshot_repeats": snapshot_repeats},
            "baseline_a": base_a, "ftdrift": ft, "baseline_b": base_b,
            "baseline_examples_per_s": base_eps, "baseline_tokens_per_s": base_tps,
            "baseline_spread": abs(base_a["examples_per_s"] - base_b["examples_per_s"]) / base_eps,
            # 1: training throughput, same steps and batches (>= 1.0: ftdrift is not slower)
            "throughput_ratio": ft["examples_per_s"] / base_eps,
            "throughput_ratio_median_step": (base_a["step_s_median"] + base_b["step_s_median"]) / 2
                                            / ft["step_s_median"],
            # 3: steady-state snapshot overhead at the study's cadence and probe size
            "snapshot_mean_s_measured": snap_mean,
            "snapshot_s_study_probe": snap_study,
            "train_s_per_cadence": cadence * ft["step_s_mean"],
            "snapshot_overhead_at_cadence": snap_study / (cadence * ft["step_s_mean"]),
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
    a = p.parse_args()
    print(json.dumps(run(a.data_dir, a.steps, a.batch, n_threads=a.threads, cadence=a.cadence, probe=a.probe),
                     indent=2, default=str))
