"""Fine-tuning protocol on a tiny random Llama: determinism, bitwise resume after SIGKILL
(same disk, or a fresh VM from the checkpoint mirror), stale work folders, pre-training checks, the OOM-retry schedule.
A diverging run (a result, not an error) is tested in test_divergence.py."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from transformers import AutoTokenizer, TrainerCallback

from ftdrift.study import config as ftconfig
from ftdrift.study.resources import micro_batch_plan
from ftdrift.training.recipe import finetune
from ftdrift.training.workdir import MIRROR_ENV

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")


def test_two_identical_runs_give_identical_metrics(tiny, tmp_path):
    a = finetune(**tiny.run_kwargs(tmp_path / "a", method="lora", lr="5e-3"))
    b = finetune(**tiny.run_kwargs(tmp_path / "b", method="lora", lr="5e-3"))
    assert tiny.comparable(a) == tiny.comparable(b)
    steps_a, reps_a = tiny.reps(tmp_path / "a" / "reps.zarr")
    steps_b, reps_b = tiny.reps(tmp_path / "b" / "reps.zarr")
    assert list(steps_a) == [0, 2, 4, 6]
    for pooling in reps_a:
        assert np.array_equal(reps_a[pooling], reps_b[pooling])
    assert a["meta"]["trainable_params"] < a["meta"]["total_params"] / 2


@pytest.mark.parametrize("fresh_machine", [False, True], ids=["same-disk", "fresh-vm-from-mirror"])
def test_resume_after_sigkill_is_bitwise_identical(tiny, tmp_path, monkeypatch, fresh_machine):
    """Killed after a checkpoint, run again: on the same disk, or (spot VM) on an empty disk
    with the work folder mirrored to $FTDRIFT_CHECKPOINT_MIRROR."""
    training = {"max_steps": 40, "save_steps": 6, "eval_steps": 3, "early_stopping_patience": None}
    reference = finetune(**tiny.run_kwargs(tmp_path / "ref", **training))

    out = tmp_path / "killed"
    mirror = tmp_path / "bucket"
    env = {**os.environ, MIRROR_ENV: mirror.as_uri()} if fresh_machine else dict(os.environ)
    job = tmp_path / "job.pkl"  # the same job in a child process, to be SIGKILLed
    job.write_bytes(pickle.dumps(tiny.run_kwargs(out, **training)))
    script = tmp_path / "run.py"
    script.write_text("import pickle, sys\n"
                      "from ftdrift.training.recipe import finetune\n"
                      "with open(sys.argv[1], 'rb') as f:\n"
                      "    finetune(**pickle.load(f))\n")
    proc = subprocess.Popen([sys.executable, str(script), str(job)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    checkpoints = (mirror / "sst2" / "full" / "lr1e-3_bs4_seed1" if fresh_machine else out / "work") / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (checkpoints / "checkpoint-12" / "trainer_state.json").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()  # nothing looks complete
    if fresh_machine:
        shutil.rmtree(out / "work")  # the preempted VM's disk is gone
        monkeypatch.setenv(MIRROR_ENV, mirror.as_uri())

    resumed = finetune(**tiny.run_kwargs(out, **training))
    assert resumed["meta"]["resumed_from"] is not None
    assert int(resumed["meta"]["resumed_from"].rsplit("-", 1)[1]) >= 12
    assert tiny.comparable(resumed) == tiny.comparable(reference)
    steps_ref, reps_ref = tiny.reps(tmp_path / "ref" / "reps.zarr")
    steps_res, reps_res = tiny.reps(out / "reps.zarr")
    assert list(steps_res) == list(steps_ref)
    for pooling in reps_ref:
        assert np.array_equal(reps_ref[pooling], reps_res[pooling])
    log_ref = (tmp_path / "ref" / "train_log.csv").read_text().splitlines()
    log_res = (out / "train_log.csv").read_text().splitlines()
    assert len(log_ref) == len(log_res)
    assert not (out / "work" / "checkpoints").exists(), "a finished job's work folder keeps no copy of its state"
    if fresh_machine:  # kept until a later job has read the outputs from storage (ftdrift.training.workdir)
        assert list(mirror.rglob("trainer_state.json")), "the mirror is dropped before the outputs are stored"


def test_state_of_a_changed_job_definition_is_not_resumed(tiny, tmp_path):
    """A config change re-runs a killed job in the same work folder: it must train anew, not pick
    up the old definition's checkpoint."""
    with pytest.raises(KeyboardInterrupt):
        finetune(**tiny.run_kwargs(tmp_path, max_steps=4, save_steps=2, eval_steps=2),
                 callbacks=(tiny.stop_at(2),))
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    changed = finetune(**tiny.run_kwargs(tmp_path, max_steps=4, save_steps=2, eval_steps=2, warmup_ratio=0.5))
    fresh = finetune(**tiny.run_kwargs(tmp_path / "fresh", max_steps=4, save_steps=2, eval_steps=2,
                                  warmup_ratio=0.5))
    assert changed["meta"]["resumed_from"] is None
    assert tiny.comparable(changed) == tiny.comparable(fresh)


def test_impossible_settings_fail_before_training(tiny, tmp_path):
    workdir, cfg, data = tiny
    kwargs = tiny.run_kwargs(tmp_path, method="lora")
    kwargs["method_spec"] = {"peft": {**cfg["methods"]["lora"]["peft"], "target_modules": ["query_proj_that_does_not_exist"]}}
    with pytest.raises(ValueError, match="method 'lora'.*query_proj_that_does_not_exist"):
        finetune(**kwargs)
    kwargs = tiny.run_kwargs(tmp_path)
    kwargs["settings"]["data"]["max_length"]["classification"] = 4096
    with pytest.raises(ValueError, match="'data.max_length': 4096 tokens exceed the 512 positions"):
        finetune(**kwargs)
    kwargs = tiny.run_kwargs(tmp_path)
    kwargs["task_def"] = {**CATALOG["sst2"], "labels": ["0"]}
    with pytest.raises(ValueError, match="label count mismatch"):
        finetune(**kwargs)
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_oom_retry_schedule_keeps_effective_batch():
    assert micro_batch_plan(16, 8, attempt=1) == {"micro_batch": 8, "accumulation": 2, "gradient_checkpointing": False}
    assert micro_batch_plan(16, 8, attempt=2) == {"micro_batch": 4, "accumulation": 4, "gradient_checkpointing": False}
    assert micro_batch_plan(16, 8, attempt=3) == {"micro_batch": 2, "accumulation": 8, "gradient_checkpointing": True}
    assert micro_batch_plan(8, 8, attempt=1)["accumulation"] == 1
    assert micro_batch_plan(12, 8, attempt=1) == {"micro_batch": 6, "accumulation": 2, "gradient_checkpointing": False}
    for attempt in range(1, 6):
        plan = micro_batch_plan(16, 8, attempt)
        assert plan["micro_batch"] * plan["accumulation"] == 16


# -- micro-batching, out-of-memory retries, step-0 representations -----------------------------

def train_log(out: Path) -> pd.DataFrame:
    log = pd.read_csv(out / "train_log.csv")
    return log[log["loss"].notna()].set_index("step")[["loss", "grad_norm"]]


def no_dropout_kwargs(tiny, out, task, method, **training):
    training = {"max_steps": 3, "logging_steps": 1, "eval_steps": 3, "save_steps": 3,
                "early_stopping_patience": None, **training}
    kwargs = tiny.run_kwargs(out, task=task, method=method, lr="1e-3" if method == "full" else "5e-3", **training)
    # dropout draws other masks for other micro-batch shapes; without it, micro-batching must not
    # matter at all (the tiny Llama has no dropout of its own)
    if method in AXIS:
        kwargs["method_spec"] = {"peft": registry_check(method)}
    if kwargs["method_spec"].get("peft", {}).get("peft_type") == "LORA":
        kwargs["method_spec"] = {"peft": {**kwargs["method_spec"]["peft"], "lora_dropout": 0.0}}
    return kwargs


LOSS_RTOL = 1e-5  # float32 sums in another order; measured differences are ~1e-7 relative


@pytest.mark.parametrize("task, method", [("sst2", "full"), ("sst2", "lora"), ("squad_v2", "full"),
                                          ("squad_v2", "lora"), *(("sst2", m) for m in ("rslora_r16", "dora_r8",
                                                                                       "pissa_r8", "ia3"))])
def test_micro_batching_does_not_change_the_optimisation(tiny, tmp_path, task, method):
    """(micro-batch m, accumulation k) logs the loss and gradient norm of (m*k, 1) and ends with
    its metrics: effective batch 4 as 4 x 1, 2 x 2 and 1 x 4."""
    results, logs = {}, {}
    for micro in (4, 2, 1):
        results[micro] = finetune(**no_dropout_kwargs(tiny, tmp_path / str(micro), task, method,
                                                     max_micro_batch=micro))
        logs[micro] = train_log(tmp_path / str(micro))
        assert results[micro]["meta"]["accumulation"] == 4 // micro
    assert list(logs[4].index) == [1, 2, 3]
    for micro in (2, 1):
        np.testing.assert_allclose(logs[micro].to_numpy(), logs[4].to_numpy(), rtol=LOSS_RTOL)
        for split in ("dev", "validation"):
            assert results[micro][split] == pytest.approx(results[4][split], abs=1e-6), (micro, split)


def test_logged_loss_is_the_mean_cross_entropy_of_the_first_batch(tiny, tmp_path):
    """Step 1's logged loss, recomputed here from the initial model and the seeded batch order."""
    import torch
    from transformers import DataCollatorWithPadding

    from ftdrift.core import io
    from ftdrift.data.features import encode_classification
    from ftdrift.modeling import models
    from ftdrift.study.methods import Method
    from ftdrift.training.recipe import build_model
    from ftdrift.training.trainer import EpochSeededLengthSampler

    workdir, cfg, data = tiny
    finetune(**no_dropout_kwargs(tiny, tmp_path, "sst2", "full", max_micro_batch=2))
    logged = train_log(tmp_path).loc[1, "loss"]

    tokenizer = models.load_tokenizer(cfg["model"])
    records = io.read_jsonl(workdir / "prepared" / "sst2" / "train.jsonl")
    dataset = encode_classification(records, tokenizer, data["sst2"]["data"]["max_length"]["classification"])
    sampler = EpochSeededLengthSampler(4, lengths=dataset["length"], seed=1)
    first = list(sampler)[:4]
    batch = DataCollatorWithPadding(tokenizer, return_tensors="pt")(
        [{k: dataset[i][k] for k in ("input_ids", "attention_mask")} for i in first])
    model, _ = build_model(cfg["model"], CATALOG["sst2"], Method("full"), seed=1)
    model.train()
    with torch.no_grad():
        logits = model(**batch).logits.double()
    labels = torch.tensor([records[i]["label"] for i in first])
    expected = float(-torch.log_softmax(logits, -1)[torch.arange(4), labels].mean())
    assert logged == pytest.approx(expected, rel=1e-5)

    # two more conventions the job relies on: throughput counts real tokens (not padding), and
    # warmup_steps < 1 is a ratio of the steps (3 steps, ratio 0.1 -> 1 warmup step; the Trainer
    # logs the rate an update used: 0 during warmup, then linear decay to 0 at step 3)
    log = pd.read_csv(tmp_path / "train_log.csv").dropna(subset=["loss"]).set_index("step")
    assert log.loc[1, "num_input_tokens_seen"] == sum(dataset[i]["length"] for i in first)
    assert list(log.learning_rate) == pytest.approx([0.0, 1e-3, 1e-3 / 2])


class OutOfMemoryAt:
    """Raises a CUDA-style out-of-memory error at `step` while the micro-batch exceeds `limit`
    (what a GPU does when a plan does not fit); counts the attempts that began training."""

    def __init__(self, step: int, limit: int, error=None):
        self.step, self.limit, self.error = step, limit, error
        self.attempts = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.attempts += 1

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and args.per_device_train_batch_size > self.limit:
            import torch

            raise self.error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def test_out_of_memory_is_retried_in_the_job_with_the_same_experiment(tiny, tmp_path):
    reference = finetune(**no_dropout_kwargs(tiny, tmp_path / "ref", "sst2", "lora", max_micro_batch=4,
                                             save_steps=1, eval_steps=1))
    oom = OutOfMemoryAt(step=3, limit=2)
    retried = finetune(**no_dropout_kwargs(tiny, tmp_path / "oom", "sst2", "lora", max_micro_batch=4,
                                           save_steps=1, eval_steps=1), callbacks=(oom,))
    assert oom.attempts == 2  # once at micro-batch 4, once at 2 (resumed from the step-2 checkpoint)
    meta = retried["meta"]
    assert meta["attempts"] == 2 and meta["micro_batch"] == 2 and meta["accumulation"] == 2
    assert meta["resumed_from"].endswith("checkpoint-2")
    np.testing.assert_allclose(train_log(tmp_path / "oom").to_numpy(), train_log(tmp_path / "ref").to_numpy(),
                               rtol=LOSS_RTOL)
    for split in ("dev", "validation"):
        assert retried[split] == pytest.approx(reference[split], abs=1e-6)


def test_other_errors_are_not_retried(tiny, tmp_path):
    failing = OutOfMemoryAt(step=2, limit=0, error=ValueError("a data error"))
    with pytest.raises(ValueError, match="a data error"):
        finetune(**tiny.run_kwargs(tmp_path, max_steps=3), callbacks=(failing,))
    assert failing.attempts == 1
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("family, task, precision", [
    ("bert", "sst2", "fp32"), ("bert", "squad_v2", "fp32"), ("llama", "sst2", "fp32"), ("llama", "squad_v2", "fp32"),
    ("llama", "sst2", "bf16")])
def test_step0_snapshot_is_the_base_model_s_representation(tiny, tmp_path, hand_linear_cka, family, task,
                                                              precision):
    """At step 0 a LoRA model (B = 0) is the base model: CKA 1 to 1e-6 in every layer and pooling,
    for BERT-style inputs with token types (the embedded MiniLM) and for Llama; also in bf16
    (autocast on the CPU here, the study's precision on GPUs), where the Trainer's autocast
    stays on the model and the base model must be extracted in the same precision."""
    from ftdrift.representations.base import base_representations

    workdir, cfg, data = tiny
    kwargs = tiny.run_kwargs(tmp_path, task=task, method="lora", lr="5e-3", max_steps=1, save_steps=1,
                        eval_steps=1, precision=precision)
    if family == "bert":
        kwargs["model_cfg"] = {"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"}
    finetune(**kwargs)
    base_representations(probe_path=workdir / "prepared" / task / "probe.jsonl", store_path=tmp_path / "base.zarr",
                         model_cfg=kwargs["model_cfg"], task_def=CATALOG[task], data_settings=kwargs["settings"]["data"],
                         rep_settings=kwargs["settings"]["representations"], precision=precision)
    base = zarr.open_group(str(tmp_path / "base.zarr"), mode="r")
    assert base.attrs["precision"] == precision
    steps, run = tiny.reps(tmp_path / "reps.zarr")
    assert steps[0] == 0
    for pooling, snapshots in run.items():
        layers = base[pooling][...]
        assert snapshots.shape[1:] == layers.shape
        for layer in range(layers.shape[0]):
            assert hand_linear_cka(layers[layer], snapshots[0, layer]) == pytest.approx(1.0, abs=1e-6), (pooling, layer)


class EvalSeen(TrainerCallback):
    """Records what each in-training evaluation read: each example's real tokens, in batch order."""

    def __init__(self):
        self.evaluations = []

    def on_evaluate(self, args, state, control, eval_dataloader=None, **kwargs):
        self.evaluations.append([tuple(i for i, m in zip(ids, mask) if m) for batch in eval_dataloader
                                 for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())])


def test_eval_subset_is_a_fixed_subset_at_every_evaluation_and_the_times_add_up(tiny, tmp_path):
    """training.eval_subset: every evaluation during training reads the same `eval_subset` dev
    examples, longest first; the whole dev split is still predicted at the end (metrics.json); the
    stage times cover the job's wall time."""
    seen = EvalSeen()
    kwargs = tiny.run_kwargs(tmp_path, eval_subset=5, eval_steps=2, max_steps=6)
    kwargs["callbacks"] = (seen,)
    started = time.time()
    result = finetune(**kwargs)
    wall = time.time() - started
    dev = [json.loads(line) for line in (kwargs["data_dir"] / "dev.jsonl").read_text().splitlines()]
    assert len(dev) > 5 and len(seen.evaluations) == 3
    assert all(e == seen.evaluations[0] for e in seen.evaluations)
    # the 5 are drawn once with data.split_seed (re-drawn here by hand), evaluated longest first
    tokenizer = AutoTokenizer.from_pretrained(kwargs["model_cfg"]["name_or_path"])
    pick = np.random.default_rng(kwargs["settings"]["data"]["split_seed"]).choice(len(dev), 5, replace=False)
    expected = {tuple(tokenizer(dev[i]["text"], truncation=True, max_length=64)["input_ids"]) for i in pick}
    first = seen.evaluations[0]
    assert set(first) == expected and len(first) == 5
    assert [len(e) for e in first] == sorted((len(e) for e in first), reverse=True)
    # the final dev metrics are over the whole dev split: accuracy is a multiple of 1/len(dev)
    accuracy = result["dev"]["accuracy"]
    assert abs(accuracy * len(dev) - round(accuracy * len(dev))) < 1e-9
    stages = result["meta"]["stage_seconds"]
    assert {"start-up", "load data", "model load", "training steps", "dev evaluation", "snapshots",
            "checkpoint writes", "final evaluation"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    in_call = sum(v for k, v in stages.items() if k != "start-up")
    assert 0.8 * wall <= in_call <= wall  # metrics.json's content is taken inside the "outputs" stage


def test_predictions_come_back_in_dataset_order(tiny, tmp_path):
    """predict_split batches by length; each example's logits must still be its own: equal to a
    forward pass of that example alone (no padding), in dataset order."""
    import torch

    from ftdrift.modeling import models
    from ftdrift.training.predict import predict_split, predictor

    workdir, cfg, data = tiny
    records = [json.loads(line) for line in (workdir / "prepared" / "sst2" / "validation.jsonl").read_text().splitlines()]
    tokenizer = models.load_tokenizer(cfg["model"])
    torch.manual_seed(0)
    model = models.load_model(cfg["model"], "classification", 2, tokenizer).eval()
    out = predict_split(predictor(model, tokenizer, 4, "fp32"), records, CATALOG["sst2"], tokenizer,
                        data["sst2"]["data"])
    with torch.no_grad():
        alone = np.stack([model(**tokenizer(r["text"], return_tensors="pt", truncation=True,
                                             max_length=data["sst2"]["data"]["max_length"]["classification"])
                                ).logits[0].numpy() for r in records])
    np.testing.assert_allclose(out.logits[0], alone, atol=1e-5)
    assert list(out.predictions["predictions"]) == [r["id"] for r in records]
    assert [out.predictions["predictions"][r["id"]] for r in records] == alone.argmax(-1).tolist()


def test_a_resume_between_snapshot_steps_adds_no_snapshot(tiny, tmp_path):
    """A checkpoint off the snapshot cadence (checkpoints every 2 steps, snapshots every 3): the
    resumed run snapshots where an uninterrupted one does, no more (tests/system/chaos_slurm.py found the
    extra one), and its train log is the same table."""
    class StopAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt  # a kill right after checkpoint-4 (off the cadence of 3)

    full = tiny.run_kwargs(tmp_path / "full", max_steps=8, eval_steps=2, save_steps=2, logging_steps=1)
    full["settings"]["representations"]["snapshot_steps"] = 3
    finetune(**full)
    cut = tiny.run_kwargs(tmp_path / "cut", max_steps=8, eval_steps=2, save_steps=2, logging_steps=1)
    cut["settings"]["representations"]["snapshot_steps"] = 3
    with pytest.raises(KeyboardInterrupt):
        finetune(**{**cut, "callbacks": (StopAt(),)})
    assert (tmp_path / "cut" / "work" / "checkpoints" / "checkpoint-4").is_dir()
    finetune(**cut)
    steps_full, reps_full = tiny.reps(tmp_path / "full" / "reps.zarr")
    steps_cut, reps_cut = tiny.reps(tmp_path / "cut" / "reps.zarr")
    assert list(steps_full) == list(steps_cut) == [0, 3, 6, 8]
    for pooling in reps_full:
        assert np.array_equal(reps_full[pooling], reps_cut[pooling])
    logs = [pd.read_csv(tmp_path / run / "train_log.csv") for run in ("full", "cut")]
    assert list(logs[0].columns) == list(logs[1].columns)
    clock = [c for c in logs[0].columns if "runtime" in c or "per_second" in c or c == "cpu_rss_mb"]
    pd.testing.assert_frame_equal(*(log.drop(columns=clock) for log in logs))


# -- every method of the axis through the whole job ---------------------------------------------

AXIS = {  # issue 21's methods, small: each trains, saves, reloads and merges
    "lora_all_r16": {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "rslora_r16": {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "use_rslora": True, "target_modules": "all-linear"},
    "dora_r8": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True, "target_modules": "qv"},
    "pissa_r8": {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "init_lora_weights": "pissa", "target_modules": "qv"},
    "ia3": {"peft_type": "IA3"},
}


@pytest.fixture(scope="module")
def sst2_base_store(tiny, tmp_path_factory):
    from ftdrift.representations.base import base_representations

    workdir, cfg, data = tiny
    path = tmp_path_factory.mktemp("base") / "sst2.zarr"
    base_representations(probe_path=workdir / "prepared" / "sst2" / "probe.jsonl", store_path=path,
                         model_cfg=cfg["model"], task_def=CATALOG["sst2"], data_settings=data["sst2"]["data"],
                         rep_settings=data["sst2"]["representations"])
    return path


@pytest.mark.parametrize("name", AXIS)
def test_every_method_starts_at_the_base_model_and_its_saved_model_reproduces_its_predictions(
        tiny, sst2_base_store, tmp_path, name):
    """The job's step-0 guard (linear CKA with the base store within 1e-6 of 1, every layer) passes
    for each method; only the adapter and the head train; the saved adapter (PiSSA: converted for
    the original weights) reloaded on a fresh base model, and merged, reproduces the predictions."""
    from ftdrift.analysis.checkpoints import validate_run
    from ftdrift.study.methods import Method

    workdir, cfg, data = tiny
    kwargs = tiny.run_kwargs(tmp_path, method=name, lr="5e-3", max_steps=2, eval_steps=2, save_steps=2)
    kwargs["method_spec"] = {"peft": registry_check(name)}
    result = finetune(**kwargs, base_store=sst2_base_store)
    info = result["meta"]["method_info"]
    assert info["method"] == name and info["peft_type"] == AXIS[name]["peft_type"] and info["adapted"]
    assert 0 < result["meta"]["trainable_params"] < result["meta"]["total_params"]
    record = validate_run(model_dir=tmp_path / "model", metrics_path=tmp_path / "metrics.json",
                          predictions_path=tmp_path / "predictions.json",
                          validation_path=workdir / "prepared" / "sst2" / "validation.jsonl",
                          model_cfg=cfg["model"], task_def=CATALOG["sst2"],
                          method=Method(name, kwargs["method_spec"]["peft"]), data_settings=data["sst2"]["data"])
    assert record["passed"], record
    assert record["merge_max_abs_logit_diff"] is not None and record["merge_max_abs_logit_diff"] < 1e-4


def registry_check(name: str) -> dict:
    from ftdrift.study.methods import parse_methods

    return parse_methods({name: {"peft": AXIS[name]}})[name].peft
