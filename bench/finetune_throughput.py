"""Benchmarks 1 and 3: ftdrift's fine-tuning job vs a plain transformers.Trainer, and the snapshot cost.

Both sides train the embedded all-MiniLM-L6-v2 on the same prepared SST-2 split, fp32 on the CPU,
with the same micro-batch, optimizer, schedule, number of optimizer steps and the *same batches*
(the plain Trainer is given ftdrift's seeded length-grouped sampler, so the padding is identical;
what padding itself is worth is benchmark 2). W&B is disabled.

* baseline -- `transformers.Trainer`, no callbacks of ours, no evaluation, no checkpoints.
* ftdrift  -- `ftdrift.training.recipe.finetune(...)`, the real job: TrainingMonitor (NaN guard on the
  Trainer's own gradient norm, per-parameter norms at logging steps), logging, SnapshotCallback, BestModelCallback, evaluation and a checkpoint
  at the last step, then the final evaluations and the atomic outputs.

Timing: a callback records every optimizer step's start (on_step_begin) and end (on_step_end) on
both sides. "Training loop" time = first step start -> last step end: forward, backward, clipping,
the monitor, the optimizer and every logging step in between, i.e. everything ftdrift adds per
step. Snapshots (step 0 and the last step: the study's cadence of 100 steps is longer than the
run), the evaluation and the checkpoint at the last step fall outside that window; they are
timed separately by wrapping SnapshotCallback._snapshot, Trainer.evaluate and
Trainer._save_checkpoint in this process (the library is not modified). Every ftdrift run gets
a fresh work folder, so it never resumes an earlier run's checkpoint.

Benchmark 3 (snapshot overhead at the study's cadence): the time of one snapshot of the study's
probe set for SST-2 (probe_size 1000, capped by the 872 validation examples; batch 32, float16),
divided by the time of the 100 training steps between two snapshots (100 x the measured ftdrift
step time). The run snapshots `probe` examples (default 256, a seeded subset like the study's)
and the time is scaled linearly to 872: a snapshot is a fixed-batch forward pass over a random
subset, so its cost is proportional to the number of examples. This is the steady-state
overhead of a long run; the wall time of this short run's trainer.train() with and without its
two snapshots is recorded too. The validation split is capped at the probe size so the job's
final evaluation (not measured) stays short.
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


def tokens_seen(lengths: list[int], batch: int, steps: int, seed: int) -> int:
    """Real (non-padding) tokens of the first `steps` batches of the seeded length-grouped order."""
    from ftdrift.training.recipe import EpochSeededLengthSampler

    sampler = EpochSeededLengthSampler(batch, lengths=lengths, seed=seed)
    sampler.set_epoch(0)
    return sum(lengths[i] for i in list(sampler)[: steps * batch])


def _callback(timer):
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        on_step_begin = timer.on_step_begin
        on_step_end = timer.on_step_end

    return _Timer()


def run_baseline(folder: Path, settings: dict, work: Path, steps: int, batch: int, lr: float, seed: int,
                 n_threads: int) -> dict:
    """The plain Trainer script: what a user writes without ftdrift (plus the same sampler)."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from ftdrift.core import io
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.training.recipe import EpochSeededLengthSampler

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
                n_threads: int, snapshot_steps: int, snapshot_batch: int) -> dict:
    """ftdrift's real fine-tuning job, instrumented from the outside."""
    import pandas as pd

    import ftdrift.training.recipe as ftrain
    from ftdrift.representations.snapshots import SnapshotCallback
    from ftdrift.training.monitor import TrainingMonitor
    from ftdrift.training.recipe import RunOutputs, finetune

    timings = {"snapshot": [], "evaluate": [], "save_checkpoint": [], "callbacks_in_loop": []}
    timer = StepTimer()

    original_snapshot = SnapshotCallback._snapshot

    def timed_snapshot(self, model, step):
        before = len(self.store.steps())
        t = time.perf_counter()
        original_snapshot(self, model, step)
        if len(self.store.steps()) > before:  # the end-of-training call is a no-op when step N was taken
            timings["snapshot"].append(time.perf_counter() - t)

    base_trainer = ftrain.StudyTrainer

    class TimedTrainer(base_trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(_callback(timer))

        def evaluate(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super().evaluate(*a, **kw)
            finally:
                timings["evaluate"].append(time.perf_counter() - t)

        def _save_checkpoint(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._save_checkpoint(*a, **kw)
            finally:
                timings["save_checkpoint"].append(time.perf_counter() - t)

    settings = json.loads(json.dumps(settings))
    settings["training"].update(max_steps=steps, epochs=1, eval_steps=steps, save_steps=steps,
                                early_stopping_patience=None, max_micro_batch=batch, precision="fp32")
    settings["representations"].update(snapshot_steps=snapshot_steps, batch_size=snapshot_batch, dtype="float16")
    out_dir = Path(tempfile.mkdtemp(prefix="ftdrift-", dir=work))  # fresh: never resume an earlier run
    kwargs = dict(
        run={"task": "sst2", "method": "full", "lr": str(lr), "batch_size": batch, "seed": seed},
        task_def=_catalog()["sst2"],
        settings=settings, model_cfg=MINILM, lora_cfg={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None},
        wandb_cfg={"mode": "disabled", "project": "ftdrift", "entity": None},
        data_dir=folder, work_dir=out_dir / "work",
        outputs=RunOutputs(metrics=out_dir / "metrics.json", train_log=out_dir / "train_log.csv",
                           predictions=out_dir / "predictions.json", representations=out_dir / "reps.zarr",
                           model=out_dir / "model"),
        threads=n_threads)
    # ftdrift's own per-step callback work inside the loop (snapshots themselves excluded)
    hooks = [(TrainingMonitor, "on_pre_optimizer_step"), (TrainingMonitor, "on_log"),
             (SnapshotCallback, "on_step_end")]
    originals = [(cls, name, cls.__dict__.get(name)) for cls, name in hooks]

    def account(fn):
        def wrapper(self, args, state, control, **kw):
            if state.global_step >= steps and fn.__name__ == "on_log":
                return fn(self, args, state, control, **kw)  # the final summary entry: after the loop
            before = sum(timings["snapshot"])
            t = time.perf_counter()
            try:
                return fn(self, args, state, control, **kw)
            finally:
                timings["callbacks_in_loop"].append(time.perf_counter() - t - (sum(timings["snapshot"]) - before))
        wrapper.__name__ = fn.__name__
        return wrapper

    SnapshotCallback._snapshot = timed_snapshot
    ftrain.StudyTrainer = TimedTrainer
    for cls, name in hooks:
        setattr(cls, name, account(getattr(cls, name)))
    try:
        t0 = time.perf_counter()
        result = finetune(**kwargs)
        job_s = time.perf_counter() - t0
    finally:
        SnapshotCallback._snapshot = original_snapshot
        ftrain.StudyTrainer = base_trainer
        for cls, name, fn in originals:
            if fn is None:
                delattr(cls, name)
            else:
                setattr(cls, name, fn)
    meta = result["meta"]
    log = pd.read_csv(out_dir / "train_log.csv")
    tokens = int(log["num_input_tokens_seen"].dropna().max()) if "num_input_tokens_seen" in log else 0
    out = timer.summary(tokens, batch)
    out.update(callbacks_in_loop_s=sum(timings["callbacks_in_loop"]),
               callbacks_in_loop_share=sum(timings["callbacks_in_loop"]) / out["loop_s"],
               train_call_s=meta["train_seconds"], job_s=job_s, snapshot_steps=meta["snapshot_steps"],
               snapshot_s=timings["snapshot"], evaluate_s=timings["evaluate"],
               save_checkpoint_s=timings["save_checkpoint"],
               probe_examples=len(ftrain.io.read_jsonl(folder / "probe.jsonl")))
    return out


def _catalog():
    from _common import REPO

    from ftdrift.study import config as ftconfig

    return ftconfig.load_catalog(REPO / "config" / "tasks.yaml")


def run(data: str | None = None, steps: int = 24, batch: int = 16, lr: float = 1e-4, seed: int = 42,
        n_threads: int = 1, cadence: int = 100, probe: int = 256, study_probe: int = 1000,
        snapshot_batch: int = 32, scratch: Path | None = None) -> dict:
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
            ft = run_ftdrift(folder, settings, scratch, steps, batch, lr, seed, n_threads, cadence, snapshot_batch)
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
                       "probe_examples_measured": ft["probe_examples"], "probe_examples_study": study_n},
            "baseline_a": base_a, "ftdrift": ft, "baseline_b": base_b,
            "baseline_examples_per_s": base_eps, "baseline_tokens_per_s": base_tps,
            "baseline_spread": abs(base_a["examples_per_s"] - base_b["examples_per_s"]) / base_eps,
            # 1: training throughput, same steps and batches (>= 1.0: ftdrift is not slower)
            "throughput_ratio": ft["examples_per_s"] / base_eps,
            "throughput_ratio_median_step": (base_a["step_s_median"] + base_b["step_s_median"]) / 2
                                            / ft["step_s_median"],
            # ftdrift's own callback work inside the training loop, measured in the run itself:
            # insensitive to the machine's speed drifting between runs
            "callbacks_in_loop_share": ft["callbacks_in_loop_share"],
            # 3: steady-state snapshot overhead at the study's cadence and probe size
            "snapshot_mean_s_measured": snap_mean,
            "snapshot_s_study_probe": snap_study,
            "train_s_per_cadence": cadence * ft["step_s_mean"],
            "snapshot_overhead_at_cadence": snap_study / (cadence * ft["step_s_mean"]),
            # this short run: trainer.train() wall time with its snapshots vs without them
            "this_run_train_s_with_snapshots": ft["train_call_s"],
            "this_run_train_s_without_snapshots": ft["train_call_s"] - sum(snap),
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
