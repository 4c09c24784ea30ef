"""W&B tracking of a fine-tuning job (ftdrift.training.tracking, ftdrift.training.live_drift), on a
tiny random Llama with W&B offline, read back from the offline runs' transaction logs (.wandb):
one run per job across processes, each Trainer step sent once across an out-of-memory retry, and
live drift equal to the drift analysis (drift.csv) of the same stores."""

import json
import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wandb
from transformers import TrainerCallback
from wandb.proto import wandb_internal_pb2

from ftdrift.analysis.drift import drift_table
from ftdrift.representations.base import base_representations
from ftdrift.study import config as ftconfig
from ftdrift.study import families
from ftdrift.training.live_drift import LiveDrift
from ftdrift.training.recipe import finetune

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")
TASK = "sst2"
LOSS_RTOL = 1e-5  # an OOM retry's micro-batch sums float32 in another order (tests/training/test_recipe.py)
# what report_to sets in the process environment; each test starts without them and restores them
WANDB_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NAME",
             "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_SILENT", "WANDB_LOG_MODEL")


# -- reading an offline run back: wandb's transaction log is a LevelDB-style log (32 KiB blocks of
# chunks with a 7-byte header: crc32, length, type full/first/middle/last) after a 7-byte file
# header (":W&B", magic 0xBEE1, version 0), each record a wandb_internal_pb2.Record
_FILE_HEADER, _CHUNK_HEADER, _BLOCK = struct.Struct("<4sHB"), struct.Struct("<IHB"), 32768


def transaction_log(path: Path):
    """The protobuf Records of one .wandb file, in order."""
    data = path.read_bytes()
    ident, magic, _ = _FILE_HEADER.unpack_from(data, 0)
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    pos, parts = _FILE_HEADER.size, []
    while pos + _CHUNK_HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER.size:  # a block's tail too short for a header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 or pos + _CHUNK_HEADER.size + length > len(data):  # the end, or a chunk being written
            break
        pos += _CHUNK_HEADER.size
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def finished_log(path: Path, timeout: float = 30.0) -> list:
    """The Records of a finished run's .wandb file, once its exit record is there: wandb.finish()
    returns when the service handled the exit, and its writer may still be flushing the file."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(transaction_log(path))
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.1)


def offline_runs(work_dir: Path) -> list[dict]:
    """Each offline run W&B wrote in the job's work folder, oldest first: {id, name, history},
    history being the logged rows ({key: value}, keys as sent, e.g. 'train/loss')."""
    runs = []
    for path in sorted(Path(work_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        run = {"history": []}
        for record in finished_log(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, name=record.run.display_name)
            elif kind == "history":
                run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                       for item in record.history.item})
        runs.append(run)
    return runs


def logged(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(train/global_step, value) of each row that sent `key`, in the order sent."""
    return [(row["train/global_step"], row[key]) for row in history if key in row]


# -- fixtures
@pytest.fixture(scope="module")
def world(tiny):
    """The tiny job (tests/conftest.py) and the base model's representations of SST-2's probe set."""
    workdir, cfg, data = tiny
    settings = data[TASK]
    base = workdir / "base.zarr"
    base_representations(probe_path=workdir / "prepared" / TASK / "probe.jsonl", store_path=base,
                         model_cfg=cfg["model"], task_def=CATALOG[TASK], data_settings=settings["data"],
                         rep_settings=settings["representations"])
    return tiny, base


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, its files in tmp, no run left open afterwards."""
    for key in WANDB_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))  # report_to moves it to the work folder
    yield
    wandb.finish()


def job(world, out: Path, snapshot_steps: int = 2, **training) -> dict:
    """finetune's arguments for a full fine-tuning of SST-2 with W&B offline (batch 4)."""
    tiny, _ = world
    kwargs = tiny.run_kwargs(out, task=TASK, **{
        "max_steps": 6, "save_steps": 2, "eval_steps": 3, "logging_steps": 1, "max_micro_batch": 4, **training})
    kwargs["settings"]["representations"]["snapshot_steps"] = snapshot_steps
    kwargs["wandb_cfg"] = {"mode": "offline", "project": "ftdrift-test", "entity": None}
    return kwargs


def live_drift(world, out: Path) -> LiveDrift:
    """LiveDrift on the job's snapshot store, as the recipe adds it after its SnapshotCallback."""
    tiny, base = world
    return LiveDrift(base, out / "work" / "representations.zarr", families.family(tiny.cfg["model"]["family"]).poolings)


class OutOfMemoryAt(TrainerCallback):
    """A CUDA-style out-of-memory error at the start of `step` while the micro-batch exceeds 2: the
    job's retry (ftdrift.training.oom) resumes from the last checkpoint with micro-batch 2."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and args.per_device_train_batch_size > 2:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class KilledAt(TrainerCallback):
    """The process dies at the start of `step` (after the checkpoint of the step before)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt


def assert_each_step_once(history: list[dict], out: Path, max_steps: int, eval_steps: int) -> None:
    """Every training step's loss and every evaluation sent exactly once, with train_log.csv's values."""
    train_log = pd.read_csv(out / "train_log.csv")
    loss = logged(history, "train/loss")
    assert [step for step, _ in loss] == list(range(1, max_steps + 1))
    expected = train_log.dropna(subset=["loss"]).set_index("step")["loss"]
    np.testing.assert_allclose([v for _, v in loss], expected.loc[[s for s, _ in loss]], rtol=LOSS_RTOL)
    evals = logged(history, "eval/loss")
    assert [step for step, _ in evals] == list(range(eval_steps, max_steps + 1, eval_steps))
    expected = train_log.dropna(subset=["eval_loss"]).set_index("step")["eval_loss"]
    np.testing.assert_allclose([v for _, v in evals], expected.loc[[s for s, _ in evals]], rtol=LOSS_RTOL)


# -- tests
def test_a_resumed_job_continues_its_run_and_sends_each_step_once(world, tmp_path, offline, monkeypatch):
    """A job killed at step 6 (checkpoint at step 4) and run again in a new process (fresh W&B
    state and environment): one run id across both processes (the work folder's), its name, and
    each step's loss and evaluation sent once over the two processes (step 5, redone, not again)."""
    out = tmp_path / "job"
    with pytest.raises(KeyboardInterrupt):
        finetune(**job(world, out), callbacks=(KilledAt(step=6),))
    wandb.finish()  # the process ends; the next one starts without its W&B environment
    time.sleep(1)  # a restart takes seconds: W&B names the offline run's folder by the second it starts
    for key in WANDB_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = finetune(**job(world, out))
    wandb.finish()
    assert result["meta"]["resumed_from"].endswith("checkpoint-4")
    runs = offline_runs(out / "work")
    assert len(runs) == 2  # one offline log per process, both of one W&B run
    assert runs[0]["id"] == runs[1]["id"]
    assert runs[0]["id"] == json.loads((out / "work" / "wandb_run.json").read_text())["run_id"]  # the job's
    assert {run["name"] for run in runs} == {"sst2-full-lr1e-3_bs4_seed1"}
    assert_each_step_once(runs[0]["history"] + runs[1]["history"], out, max_steps=6, eval_steps=3)


def test_an_out_of_memory_retry_sends_each_step_once(world, tmp_path, offline):
    """An OOM at step 4 with the checkpoint at step 2: the retry in the same process redoes step 3
    (its loss and its evaluation) in the same run; W&B gets each step once, and each snapshot's
    live drift once (step 2 is not sent again, step 4 follows once)."""
    out = tmp_path / "job"
    result = finetune(**job(world, out), callbacks=(OutOfMemoryAt(step=4), live_drift(world, out)))
    wandb.finish()
    assert result["meta"]["attempts"] == 2 and result["meta"]["resumed_from"].endswith("checkpoint-2")
    (run,) = offline_runs(out / "work")
    assert_each_step_once(run["history"], out, max_steps=6, eval_steps=3)
    drift_steps = [step for step, _ in logged(run["history"], "drift/linear_cka/mean/mean")]
    assert drift_steps == [0, 2, 4, 6] == result["meta"]["snapshot_steps"]


def test_live_drift_equals_the_drift_analysis(world, tmp_path, offline):
    """The per-layer linear CKA against the base model sent at each snapshot, and its mean over
    layers, are drift.csv's values (ftdrift.analysis.drift.drift_table) for the same two stores."""
    _, base = world
    out = tmp_path / "job"
    result = finetune(**job(world, out, snapshot_steps=3), callbacks=(live_drift(world, out),))
    wandb.finish()
    (run,) = offline_runs(out / "work")
    table = drift_table(base, out / "reps.zarr", result["meta"]["run"], ["linear_cka"])
    assert sorted(table.step.unique()) == [0, 3, 6]
    assert table.value.min() < 0.999  # training moved the representations: the comparison is not all ones
    for (pooling, layer_name), rows in table.groupby(["pooling", "layer_name"]):
        sent = logged(run["history"], f"drift/linear_cka/{pooling}/{layer_name}")
        assert [step for step, _ in sent] == rows.step.tolist()
        np.testing.assert_allclose([v for _, v in sent], rows.value, rtol=1e-12, atol=1e-12)
    for pooling, rows in table.groupby("pooling"):
        sent = logged(run["history"], f"drift/linear_cka/{pooling}/mean")
        means = rows.groupby("step").value.mean()
        assert [step for step, _ in sent] == means.index.tolist()
        np.testing.assert_allclose([v for _, v in sent], means, rtol=1e-12, atol=1e-12)
