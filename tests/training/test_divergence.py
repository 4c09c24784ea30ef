"""A diverging fine-tuning run is a result, not a crash: on the tiny Llama with learning rates that
reliably diverge within the tiny config's 6 steps (1e3: a non-finite gradient norm at step 3; 1e0:
a finite loss far above its start at step 4), the job returns, writes every declared output and
says "diverged", where and why; the bad update is not applied; a resumed job diverges the same way.
The guard's non-finite-loss path (no learning rate gives a non-finite loss with a finite gradient
norm here) is driven directly."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl

from ftdrift.analysis.checkpoints import validate_run
from ftdrift.study.methods import Method
from ftdrift.training.monitor import TrainingMonitor, first_logged_loss, loss_divergence
from ftdrift.training.recipe import finetune
from ftdrift.training.workdir import MIRROR_ENV


class WeightsAtEachStep(TrainerCallback):
    """The trainable weights before each optimizer step (`before[n]`: before step n) and at the end."""

    def __init__(self):
        self.before, self.final = {}, None

    @staticmethod
    def _copy(model) -> dict:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.before[state.global_step + 1] = self._copy(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final = self._copy(model)


def strict_json(path: Path):
    """json.loads that refuses NaN/Infinity tokens (Python's json writes them; JSON has none)."""
    def refuse(token):
        raise ValueError(f"{path.name} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_outputs_complete(out: Path) -> dict:
    """Every declared output exists and parses; returns metrics.json."""
    for name in ("metrics.json", "train_log.csv", "predictions.json", "reps.zarr", "model"):
        assert (out / name).exists(), name
    strict_json(out / "predictions.json")
    pd.read_csv(out / "train_log.csv")
    return strict_json(out / "metrics.json")


def snapshot_steps(out: Path) -> list[int]:
    group = zarr.open_group(str(out / "reps.zarr"), mode="r")
    for pooling in group.attrs["poolings"]:
        assert np.isfinite(group[pooling][...]).all(), pooling  # the drift analysis refuses non-finite ones
    return [int(s) for s in group["step"][...]]


def saved_weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


def test_non_finite_gradient_stops_with_the_update_skipped(tiny, tmp_path):
    watch = WeightsAtEachStep()
    result = finetune(**tiny.run_kwargs(tmp_path, lr="1e3"), callbacks=(watch,))
    meta = assert_outputs_complete(tmp_path)["meta"]
    assert meta == result["meta"]
    assert meta["status"] == "diverged" and meta["diverged_at_step"] == 3 and meta["steps"] == 3
    assert meta["divergence_reason"] == "non-finite gradient norm at step 3"
    assert meta["last_good_checkpoint"] is None  # checkpoints every 3 steps: the one at step 3 is not written
    assert meta["stopped_early"] is True and meta["best_step"] is None  # no evaluation before step 3
    assert not list((tmp_path / "work" / "checkpoints").glob("checkpoint-*"))
    # the diverged step's update was skipped: the weights at the stop, and those saved, are step 2's
    for name, value in watch.before[3].items():
        assert torch.equal(watch.final[name], value), name
    assert not all(torch.equal(watch.before[3][n], v) for n, v in watch.before[2].items())  # step 2 did update
    saved = saved_weights(tmp_path)
    for name, value in saved.items():
        assert torch.isfinite(value).all(), name
        if name in watch.before[3]:
            assert torch.equal(value, watch.before[3][name]), name
    # the diverged window is logged; snapshots stop before the divergence and are finite
    log = pd.read_csv(tmp_path / "train_log.csv").dropna(subset=["loss"]).set_index("step")
    assert list(log.index) == [2, 3] and math.isnan(log.loc[3, "grad_norm"])
    assert snapshot_steps(tmp_path) and max(snapshot_steps(tmp_path)) < 3


def test_exploding_loss_stops_and_a_resumed_job_diverges_the_same_way(tiny, tmp_path, monkeypatch):
    """lr 1: logged (window-mean) losses 0.767 at step 2, 16.0 at step 4 > 10 x 0.767; step 4 is a
    checkpoint step, and no checkpoint is written there. The rerun (say, the upload of the outputs
    was cut: the work folder's state went with the finished job, the mirror's is kept) resumes
    from checkpoint-2, after which the first logged loss is only in the restored log history."""
    mirror = tmp_path / "bucket"
    monkeypatch.setenv(MIRROR_ENV, mirror.as_uri())
    kwargs = tiny.run_kwargs(tmp_path, lr="1e0", save_steps=2)
    first = finetune(**kwargs)
    meta = assert_outputs_complete(tmp_path)["meta"]
    assert meta["status"] == "diverged" and meta["diverged_at_step"] == 4 and meta["steps"] == 4
    assert meta["divergence_reason"] == "training loss 16 > 10 × first logged loss 0.7667 at step 4"
    assert meta["last_good_checkpoint"] == str(tmp_path / "work" / "checkpoints" / "checkpoint-2")
    mirrored = mirror / "sst2" / "full" / "lr1e0_bs4_seed1" / "checkpoints"
    assert sorted(p.parent.name for p in mirrored.glob("*/trainer_state.json")) == ["checkpoint-2"]
    assert meta["best_step"] == 3  # evaluate restored the step-3 weights, the only evaluation
    assert snapshot_steps(tmp_path) == [0, 2]
    assert all(torch.isfinite(v).all() for v in saved_weights(tmp_path).values())

    again = finetune(**tiny.run_kwargs(tmp_path, lr="1e0", save_steps=2))
    assert again["meta"]["resumed_from"].endswith("checkpoint-2")
    assert tiny.comparable(again) == tiny.comparable(first)  # the same divergence, reason and best weights


def test_diverged_qa_run_with_non_finite_weights_downstream_is_valid(tiny, tmp_path):
    """lr 1e30: after step 2 the weights are ~1e30 and the saved model's logits NaN (finite, huge
    weights). predictions.json stays valid JSON (qa.postprocess never lets a NaN span score win and
    maps every margin to a finite no-answer probability), and the checkpoint validator reproduces
    the run without crashing."""
    kwargs = tiny.run_kwargs(tmp_path, task="squad_v2", lr="1e30")
    finetune(**kwargs)
    meta = assert_outputs_complete(tmp_path)["meta"]
    assert meta["status"] == "diverged" and meta["diverged_at_step"] == 3
    predictions = strict_json(tmp_path / "predictions.json")
    assert all(0 <= p <= 1 for p in predictions["na_probs"].values())
    assert snapshot_steps(tmp_path) == [0]  # step 2's snapshot overflows float16
    check = validate_run(model_dir=tmp_path / "model", metrics_path=tmp_path / "metrics.json",
                         predictions_path=tmp_path / "predictions.json",
                         validation_path=kwargs["data_dir"] / "validation.jsonl", model_cfg=kwargs["model_cfg"],
                         task_def=kwargs["task_def"], method=Method("full"), data_settings=kwargs["settings"]["data"])
    assert check["passed"], check["checks"]


def test_normal_learning_rate_completes(tiny, tmp_path):
    meta = finetune(**tiny.run_kwargs(tmp_path, lr="1e-3"))["meta"]
    assert meta["status"] == "completed" and meta["stopped_early"] is False
    assert not {"diverged_at_step", "divergence_reason", "last_good_checkpoint"} & set(meta)


# -- the guard itself, on synthetic values ----------------------------------------------------------

def pre_optimizer_step(monitor, model, grad_norm, losses, step=4, logging_steps=10):
    """One optimizer step as StudyTrainer hands it to the monitor; returns the control."""
    control = TrainerControl()
    for loss in losses:
        monitor.observe_loss(torch.tensor(loss))
    monitor.observe_grad_norm(torch.tensor(grad_norm))
    args = SimpleNamespace(max_grad_norm=1.0, logging_steps=logging_steps)
    monitor.on_pre_optimizer_step(args, SimpleNamespace(global_step=step), control, model=model)
    return control, args


@pytest.mark.parametrize("grad_norm, losses, what", [(0.5, [0.7, float("nan")], "loss"),
                                                     (float("inf"), [0.7, 0.6], "gradient norm"),
                                                     (float("nan"), [float("inf")], "gradient norm")])
def test_non_finite_step_drops_the_gradients_and_stops(tmp_path, grad_norm, losses, what):
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    monitor = TrainingMonitor(4, tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-10").mkdir()
    control, args = pre_optimizer_step(monitor, model, grad_norm, losses)
    assert all(p.grad is None for p in model.parameters())
    assert control.should_training_stop
    assert monitor.divergence.meta() == {"diverged_at_step": 5, "divergence_reason": f"non-finite {what} at step 5",
                                         "last_good_checkpoint": str(tmp_path / "checkpoints" / "checkpoint-10")}
    # the flow callback then schedules this step's evaluation and checkpoint: cancelled, the window logged
    control.should_evaluate = control.should_save = True
    monitor.on_step_end(args, SimpleNamespace(global_step=5), control)
    assert not control.should_evaluate and not control.should_save and control.should_log


def test_finite_step_passes_and_fp16_is_left_to_the_grad_scaler(tmp_path):
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    monitor = TrainingMonitor(4, tmp_path)
    control, _ = pre_optimizer_step(monitor, model, 2.0, [0.7, 0.6])
    assert monitor.divergence is None and not control.should_training_stop
    assert all(p.grad is not None for p in model.parameters())
    fp16 = TrainingMonitor(4, tmp_path, check_finite=False)
    control, _ = pre_optimizer_step(fp16, model, float("nan"), [float("nan")])
    assert fp16.divergence is None and not control.should_training_stop


def test_adamw_skips_parameters_without_gradients():
    """What the guard relies on: torch's AdamW leaves a grad-None parameter and its state (step,
    moments) alone, weight decay included, in every implementation (fused: what GPUs train with)."""
    for kwargs in ({}, {"foreach": False}, {"fused": True}):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([a, b], lr=0.1, weight_decay=0.5, **kwargs)
        (a.sum() + b.sum()).backward()
        optimizer.step()
        before, state = a.detach().clone(), {k: v.clone() for k, v in optimizer.state[a].items()}
        a.grad, b.grad = None, None
        optimizer.step()
        assert torch.equal(a, before), kwargs
        assert all(torch.equal(optimizer.state[a][k], v) for k, v in state.items()), kwargs


def test_logged_loss_divergence_rule():
    history = [{"eval_loss": 0.9, "step": 0}, {"loss": 0.5, "step": 2}, {"loss": 0.4, "step": 4}]
    assert first_logged_loss(history) == 0.5 and first_logged_loss([{"eval_loss": 1.0}]) is None
    assert loss_divergence(5.0, 0.5, 10) is None  # exactly 10 x: not above
    assert loss_divergence(5.01, 0.5, 10) == "training loss 5.01 > 10 × first logged loss 0.5"
    assert loss_divergence(float("nan"), 0.5, 10) == "non-finite training loss (nan)"
    assert loss_divergence(float("inf"), None, 10) == "non-finite training loss (inf)"
    assert loss_divergence(1e9, None, 10) is None and loss_divergence(1e9, 0.0, 10) is None  # no reference
