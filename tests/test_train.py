"""Fine-tuning protocol on a tiny random Llama: determinism, bitwise resume after SIGKILL
(same disk, or a fresh VM from the checkpoint mirror), stale work folders, NaN abort, pre-training checks, the OOM-retry schedule."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from ftdrift import config as ftconfig
from ftdrift.data import prepare_task
from ftdrift.resources import micro_batch_plan
from ftdrift.train import RunOutputs, finetune
from ftdrift.workdir import MIRROR_ENV
from helpers import TINY_CONFIG, make_tiny_workdir

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("tiny"))
    cfg = ftconfig.resolve({**ftconfig.load_yaml(workdir / "tiny.yaml")})
    data = {}
    for task in ("sst2", "squad_v2"):
        settings = ftconfig.task_settings(cfg, task)
        prepare_task(task, CATALOG[task], Path(cfg["data_dir"]), settings["data"], workdir / "prepared" / task)
        data[task] = settings
    return workdir, cfg, data


def run_kwargs(tiny, out: Path, task="sst2", method="full", lr="1e-3", **training):
    workdir, cfg, data = tiny
    settings = json.loads(json.dumps(data[task]))
    settings["training"].update(training)
    return dict(
        run={"task": task, "method": method, "lr": lr, "batch_size": 4, "seed": 1},
        task_def=CATALOG[task], settings=settings, model_cfg=cfg["model"], lora_cfg=cfg["lora"],
        wandb_cfg={"mode": "disabled", "project": "ftdrift", "entity": None},
        data_dir=workdir / "prepared" / task, work_dir=out / "work",
        outputs=RunOutputs(metrics=out / "metrics.json", train_log=out / "train_log.csv",
                           predictions=out / "predictions.json", representations=out / "reps.zarr",
                           model=out / "model"),
        threads=1, bootstrap_resamples=200)


def reps(path):
    group = zarr.open_group(str(path), mode="r")
    return group["step"][...], {p: group[p][...] for p in group.attrs["poolings"]}


def comparable(metrics):
    meta = {k: v for k, v in metrics["meta"].items() if k not in ("train_seconds", "resumed_from")}
    return {**metrics, "meta": meta}


def test_two_identical_runs_give_identical_metrics(tiny, tmp_path):
    a = finetune(**run_kwargs(tiny, tmp_path / "a", method="lora", lr="5e-3"))
    b = finetune(**run_kwargs(tiny, tmp_path / "b", method="lora", lr="5e-3"))
    assert comparable(a) == comparable(b)
    steps_a, reps_a = reps(tmp_path / "a" / "reps.zarr")
    steps_b, reps_b = reps(tmp_path / "b" / "reps.zarr")
    assert list(steps_a) == [0, 2, 4, 6]
    for pooling in reps_a:
        assert np.array_equal(reps_a[pooling], reps_b[pooling])
    assert a["meta"]["trainable_params"] < a["meta"]["total_params"] / 2




@pytest.mark.parametrize("fresh_machine", [False, True], ids=["same-disk", "fresh-vm-from-mirror"])
def test_resume_after_sigkill_is_bitwise_identical(tiny, tmp_path, monkeypatch, fresh_machine):
    """Killed after a checkpoint, run again: on the same disk, or (spot VM) on an empty disk
    with the work folder mirrored to $FTDRIFT_CHECKPOINT_MIRROR."""
    training = {"max_steps": 40, "save_steps": 6, "eval_steps": 3, "early_stopping_patience": None}
    reference = finetune(**run_kwargs(tiny, tmp_path / "ref", **training))

    out = tmp_path / "killed"
    mirror = tmp_path / "bucket"
    env = {**os.environ, MIRROR_ENV: mirror.as_uri()} if fresh_machine else dict(os.environ)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, json\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "import test_train as t\n"
        "from ftdrift import config as c\n"
        f"w = Path({str(tiny[0])!r})\n"
        "cfg = c.resolve(c.load_yaml(w / 'tiny.yaml'))\n"
        "data = {'sst2': c.task_settings(cfg, 'sst2')}\n"
        f"t.finetune(**t.run_kwargs((w, cfg, data), Path({str(out)!r}), **{training!r}))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    checkpoints = (mirror / "sst2-full-lr1e-3-bs4-seed1" if fresh_machine else out / "work") / "checkpoints"
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

    resumed = finetune(**run_kwargs(tiny, out, **training))
    assert resumed["meta"]["resumed_from"] is not None
    assert int(resumed["meta"]["resumed_from"].rsplit("-", 1)[1]) >= 12
    assert comparable(resumed) == comparable(reference)
    steps_ref, reps_ref = reps(tmp_path / "ref" / "reps.zarr")
    steps_res, reps_res = reps(out / "reps.zarr")
    assert list(steps_res) == list(steps_ref)
    for pooling in reps_ref:
        assert np.array_equal(reps_ref[pooling], reps_res[pooling])
    log_ref = (tmp_path / "ref" / "train_log.csv").read_text().splitlines()
    log_res = (out / "train_log.csv").read_text().splitlines()
    assert len(log_ref) == len(log_res)
    if fresh_machine:
        assert not list(mirror.rglob("*.json")), "a finished job's mirrored state is dropped"


def test_state_of_a_changed_job_definition_is_not_resumed(tiny, tmp_path):
    """A config change re-runs the job in the same work folder: it must train anew, not pick
    up the old definition's final checkpoint."""
    first = finetune(**run_kwargs(tiny, tmp_path, max_steps=4, save_steps=2, eval_steps=2))
    assert first["meta"]["steps"] == 4
    again = finetune(**run_kwargs(tiny, tmp_path, max_steps=4, save_steps=2, eval_steps=2))
    assert again["meta"]["resumed_from"] is not None  # same definition: its state is reused
    changed = finetune(**run_kwargs(tiny, tmp_path, max_steps=4, save_steps=2, eval_steps=2, warmup_ratio=0.5))
    fresh = finetune(**run_kwargs(tiny, tmp_path / "fresh", max_steps=4, save_steps=2, eval_steps=2,
                                  warmup_ratio=0.5))
    assert changed["meta"]["resumed_from"] is None
    assert comparable(changed) == comparable(fresh)
    assert comparable(changed) != comparable(first)


def test_nan_loss_aborts_naming_step_and_checkpoint(tiny, tmp_path):
    with pytest.raises(FloatingPointError, match=r"optimizer step \d+; last good checkpoint"):
        finetune(**run_kwargs(tiny, tmp_path, lr="1e30", max_grad_norm=1e30))
    assert not (tmp_path / "metrics.json").exists()


def test_impossible_settings_fail_before_training(tiny, tmp_path):
    workdir, cfg, data = tiny
    kwargs = run_kwargs(tiny, tmp_path, method="lora")
    kwargs["lora_cfg"] = {**cfg["lora"], "target_modules": ["query_proj_that_does_not_exist"]}
    with pytest.raises(ValueError, match="lora.target_modules"):
        finetune(**kwargs)
    kwargs = run_kwargs(tiny, tmp_path)
    kwargs["settings"]["data"]["max_length"]["classification"] = 4096
    with pytest.raises(ValueError, match="exceeds the model's limit of 512"):
        finetune(**kwargs)
    kwargs = run_kwargs(tiny, tmp_path)
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
