"""Out-of-memory errors outside the training step (issue 24, item 4): dev evaluation, probe
snapshots, final predictions and the adapter input check run at config representations.batch_size,
which the training retry's smaller micro-batch does not change. An out-of-memory error there must
split *that* batch (halves, down to one example, the smaller size kept for later batches), re-train
nothing, and give the unsplit batch's results.

The model stays real (a tiny random Llama); a forward hook on its embeddings raises torch's own
OutOfMemoryError when a pass holds more than `limit` examples, as a GPU does when a batch does not
fit.

Tolerance 1e-6 absolute, float32 on the CPU. The pieces of a batch keep the batch's padding
length and every op in eval mode is row-wise, so each row's result is mathematically the same in
any split; but the kernels (oneDNN/MKL matmuls, scaled-dot-product attention) choose their
blocking and reduction order by the number of rows, so values may differ in the last bits.
Measured here: up to 1.2e-7 absolute (1 ulp at 1; relative 3e-5 only on values near 0) in the
pooled representations, up to 1.5e-8 in the logits; the fp16-stored snapshots of a whole job,
the predictions and the metrics came out equal. The same pieces give bitwise the same results
(`predictor(split_limit=...)`, what a validator of a split run needs). On a GPU under bf16/fp16
autocast the kernel choice by shape changes values by that precision's rounding instead.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import DataCollatorWithPadding, TrainerState, TrainingArguments

from ftdrift.core import memory, metrics
from ftdrift.core.store import SnapshotStore
from ftdrift.data.features import encode_classification, encode_probe
from ftdrift.modeling import methods, models
from ftdrift.representations.extract import extract, make_batches
from ftdrift.representations.snapshots import SnapshotCallback
from ftdrift.training import oom
from ftdrift.training.predict import predict_split, predictor
from ftdrift.study import config as ftconfig
from ftdrift.study.methods import Method
from ftdrift.training.recipe import build_model, finetune
from ftdrift.training.trainer import StudyTrainer

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")
ATOL = 1e-6  # see the module doc
LORA = Method("lora", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "qv"})


class OutOfMemoryAbove:
    """Forward hook: a CUDA-style out-of-memory error when the module's output holds more than
    `limit` examples; records the batch size of every pass tried."""

    def __init__(self, limit: int):
        self.limit, self.tried = limit, []

    def __call__(self, module, args, output):
        self.tried.append(int(output.shape[0]))
        if output.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    @property
    def failed(self) -> int:
        return sum(size > self.limit for size in self.tried)


class hooked:
    """`with hooked(model, limit) as hook:` the hook on the model's input embeddings."""

    def __init__(self, model, limit: int):
        self.model, self.hook = model, OutOfMemoryAbove(limit)

    def __enter__(self):
        self.handle = self.model.get_input_embeddings().register_forward_hook(self.hook)
        return self.hook

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def world(tiny):  # the tiny workdir (tests/conftest.py), with its tokenizer
    workdir, cfg, data = tiny
    return workdir, cfg, data, models.load_tokenizer(cfg["model"])


def records(world, task: str, split: str) -> list[dict]:
    workdir = world[0]
    return [json.loads(line) for line in (workdir / "prepared" / task / f"{split}.jsonl").read_text().splitlines()]


def task_model(world, kind: str):
    _, cfg, _, tokenizer = world
    torch.manual_seed(0)
    return models.load_model(cfg["model"], kind, 2 if kind == "classification" else None, tokenizer).eval()


def test_extract_splits_the_batch_that_does_not_fit_and_keeps_the_smaller_size(world):
    tokenizer = world[3]
    probe = records(world, "sst2", "validation")[:12]  # batches of 8 and 4
    batches = make_batches(encode_probe(probe, tokenizer, "classification", 64), tokenizer, 8)
    assert [len(chunk) for _, chunk in batches] == [8, 4]
    model = task_model(world, "classification")
    whole = extract(model, batches, ("mean", "last"), dtype="float32")
    splitter = memory.BatchSplitter("probe representations (config representations.batch_size)")
    with hooked(model, limit=3) as hook:
        split = extract(model, batches, ("mean", "last"), dtype="float32", splitter=splitter)
    # 8 fails, 4 fails, 2 fits; the rest of the batch and the next one start at 2 (no failed try)
    assert hook.tried == [8, 4, 2, 2, 2, 2, 2, 2]
    assert splitter.limit == 2
    for pooling in whole:
        assert split[pooling].shape == whole[pooling].shape == (3, 12, 32)
        np.testing.assert_allclose(split[pooling], whole[pooling], rtol=0, atol=ATOL)


def test_snapshots_keep_the_smaller_size_across_snapshots(world, tmp_path):
    tokenizer = world[3]
    probe = records(world, "sst2", "probe")
    batches = make_batches(encode_probe(probe, tokenizer, "classification", 64), tokenizer, 8)
    model = task_model(world, "classification")
    whole = extract(model, batches, ("mean",), dtype="float32")
    store = SnapshotStore(tmp_path / "reps.zarr", attrs={"poolings": ["mean"]})
    callback = SnapshotCallback(store, batches, ("mean",), every=1, dtype="float32")
    state = TrainerState()
    with hooked(model, limit=5) as hook:
        callback.on_train_begin(None, state, None, model=model)  # step 0
        state.global_step = 1
        callback.on_step_end(None, state, None, model=model)
    assert store.steps() == [0, 1]
    assert hook.tried == [8, 4, 4] + [4, 4]  # the second snapshot does not try 8 again
    group = zarr.open_group(str(tmp_path / "reps.zarr"), mode="r")
    for index in range(2):
        np.testing.assert_allclose(group["mean"][index], whole["mean"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("task", ["sst2", "squad_v2"])
def test_predictions_do_not_depend_on_the_split(world, task):
    _, _, data, tokenizer = world
    kind = "classification" if task == "sst2" else "extractive_qa"
    split = records(world, task, "validation")
    model = task_model(world, kind)
    whole = predict_split(predictor(model, tokenizer, 8, "fp32"), split, CATALOG[task], tokenizer, data[task]["data"])
    trainer = predictor(model, tokenizer, 8, "fp32")
    with hooked(model, limit=3) as hook:
        pieces = predict_split(trainer, split, CATALOG[task], tokenizer, data[task]["data"])
    assert hook.failed == 2 and max(hook.tried[2:]) == 2  # 8, then 4 failed once; every later pass at 2
    assert trainer.eval_splitter.limit == 2
    assert len(pieces.logits) == len(whole.logits)
    for a, b in zip(pieces.logits, whole.logits, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    assert pieces.predictions == whole.predictions
    assert pieces.metrics == whole.metrics
    # the same pieces without an error (a validator given the job's limit): bitwise the same
    again = predict_split(predictor(model, tokenizer, 8, "fp32", split_limit=2), split, CATALOG[task], tokenizer,
                          data[task]["data"])
    assert all(np.array_equal(a, b) for a, b in zip(again.logits, pieces.logits, strict=True))


def test_dev_evaluation_loss_and_metrics_do_not_depend_on_the_split(world, tmp_path):
    tokenizer = world[3]
    dev = encode_classification(records(world, "sst2", "validation"), tokenizer, 64)
    model = task_model(world, "classification")

    def evaluate(limit: int | None):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, use_cpu=True, report_to=[],
                                 disable_tqdm=True)
        trainer = StudyTrainer(model=model, args=args, eval_dataset=dev,
                               data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=lambda p: metrics.classification_metrics(
                                   p.label_ids, p.predictions.argmax(-1), CATALOG["sst2"]["metrics"]),
                               train_lengths=[], eval_lengths=dev["length"])
        if limit is None:
            return trainer.evaluate(), None
        with hooked(model, limit) as hook:
            return trainer.evaluate(), hook

    whole, _ = evaluate(None)
    split, hook = evaluate(3)
    assert hook.failed == 2 and max(hook.tried[2:]) == 2
    # by hand: the mean cross-entropy of the unsplit model over every dev example
    with torch.no_grad():
        batch = DataCollatorWithPadding(tokenizer)([{k: row[k] for k in ("input_ids", "attention_mask")}
                                                    for row in dev])
        expected = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor(dev["labels"]))
    assert whole["eval_loss"] == pytest.approx(float(expected), rel=1e-6)
    assert split["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-6)
    quality = [k for k in whole if k.startswith("eval_") and not k.endswith(("_time", "_runtime", "_per_second"))]
    assert {"eval_loss", "eval_accuracy"} <= set(quality)
    assert {k: split[k] for k in quality} == pytest.approx({k: whole[k] for k in quality}, rel=1e-6)


def test_adapter_input_check_splits_and_still_catches_a_wrapper_that_changes_inputs(world):
    _, cfg, _, tokenizer = world
    probe = records(world, "sst2", "probe")
    ((batch, _),) = make_batches(encode_probe(probe, tokenizer, "classification", 64), tokenizer, 8)
    adapted, _ = build_model(cfg["model"], CATALOG["sst2"], LORA, seed=0)
    with hooked(adapted.get_base_model(), limit=3) as hook:
        methods.check_passes_inputs(adapted, batch)
    # 8 and 4 failed on the wrapper's pass; then 4 pieces of 2, each through both paths
    assert hook.tried == [8, 4] + [2] * 8

    def shift_tokens(module, args, kwargs):  # a wrapper that alters what it passes on
        return args, {**kwargs, "input_ids": kwargs["input_ids"].roll(1, dims=1)}

    handle = adapted.register_forward_pre_hook(shift_tokens, with_kwargs=True)
    try:
        with hooked(adapted.get_base_model(), limit=3), \
                pytest.raises(RuntimeError, match="changes the model's inputs: its logits differs"):
            methods.check_passes_inputs(adapted, batch)
    finally:
        handle.remove()


def test_a_single_example_that_does_not_fit_fails_clearly_and_is_not_retrained(world):
    tokenizer = world[3]
    probe = records(world, "sst2", "probe")
    batches = make_batches(encode_probe(probe, tokenizer, "classification", 64), tokenizer, 8)
    model = task_model(world, "classification")
    with hooked(model, limit=0) as hook, pytest.raises(memory.EvalOutOfMemoryError,
                                                       match="config representations.batch_size") as caught:
        extract(model, batches, ("mean",))
    assert hook.tried == [8, 4, 2, 1]
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    assert not oom.is_out_of_memory(caught.value)  # so the training retry does not re-train for it
    calls = []

    def attempt(plan, number):
        calls.append(plan["micro_batch"])
        raise caught.value

    with pytest.raises(memory.EvalOutOfMemoryError):
        oom.with_retries(attempt, batch_size=4, max_micro_batch=4)
    assert calls == [4]


def lora_job(tiny, out: Path) -> dict:
    """finetune's arguments: LoRA on SST-2 without dropout, 4 steps, snapshots and checkpoints every 2."""
    kwargs = tiny.run_kwargs(out, method="lora", lr="5e-3", max_steps=4, eval_steps=2, save_steps=2)
    kwargs["settings"]["representations"]["snapshot_steps"] = 2
    kwargs["method_spec"] = {"peft": {**kwargs["method_spec"]["peft"], "lora_dropout": 0.0}}
    return kwargs


def test_a_training_job_splits_outside_the_training_step_and_retrains_nothing(tiny, tmp_path, caplog):
    """Every forward-only pass of a LoRA job (adapter check, step-0 and periodic snapshots, dev
    evaluation, final predictions) runs at representations.batch_size 8; training micro-batches
    are 2. With no more than 3 examples fitting, the job finishes in one attempt with the
    unsplit job's results (before the fix: the training retry halved the micro-batch, which
    changed nothing, until it gave up with the out-of-memory error)."""
    reference = finetune(**lora_job(tiny, tmp_path / "ref"))
    hook = OutOfMemoryAbove(3)

    def on_embeddings(module, args, output):
        if isinstance(module, torch.nn.Embedding):
            hook(module, args, output)

    handle = torch.nn.modules.module.register_module_forward_hook(on_embeddings)
    try:
        with caplog.at_level(logging.WARNING, logger="ftdrift.training.oom"):
            result = finetune(**lora_job(tiny, tmp_path / "oom"))
    finally:
        handle.remove()
    assert result["meta"]["attempts"] == 1 and result["meta"]["micro_batch"] == 2
    assert not any("retrying from the last checkpoint" in r.getMessage() for r in caplog.records)
    splits = [(r.args[0], r.args[1]) for r in caplog.records if r.name == "ftdrift.training.oom"]  # (pass, batch)
    check, probe = "the adapter input check", "probe snapshot"
    evaluation = "evaluation/prediction at per_device_eval_batch_size=8"
    key = " (config representations.batch_size)"
    # 8 failed, then 4, once in each place: the later snapshots, dev evaluations and prediction
    # batches start at 2 (dev evaluation: the StudyTrainer; final predictions: their own Trainer)
    assert splits == [(check + key, 8), (check + key, 4), (probe + key, 8), (probe + key, 4),
                      (evaluation + key, 8), (evaluation + key, 4), (evaluation + key, 8), (evaluation + key, 4)]
    assert hook.failed == 8
    for split in ("dev", "validation"):
        assert result[split] == pytest.approx(reference[split], rel=1e-6)
    for name in ("predictions.json",):
        assert json.loads((tmp_path / "oom" / name).read_text()) == json.loads((tmp_path / "ref" / name).read_text())
    ref_log = (tmp_path / "ref" / "train_log.csv").read_text().splitlines()
    oom_log = (tmp_path / "oom" / "train_log.csv").read_text().splitlines()
    assert ref_log[0] == oom_log[0] and len(ref_log) == len(oom_log)
    ref_reps = zarr.open_group(str(tmp_path / "ref" / "reps.zarr"), mode="r")
    oom_reps = zarr.open_group(str(tmp_path / "oom" / "reps.zarr"), mode="r")
    assert list(oom_reps["step"][...]) == list(ref_reps["step"][...]) == [0, 2, 4]
    for pooling in ref_reps.attrs["poolings"]:
        np.testing.assert_allclose(oom_reps[pooling][...].astype(np.float32),
                                   ref_reps[pooling][...].astype(np.float32), rtol=0, atol=ATOL)
