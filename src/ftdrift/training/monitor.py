"""Trainer callbacks that watch a run: gradient statistics, the divergence guard, memory,
throughput, and the best-on-dev weights (kept between checkpoints, so early stopping never loses them)."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ftdrift.training.workdir import checkpoint_step


@dataclass(frozen=True)
class Divergence:
    """Why and where a run diverged (metrics.json's meta keys diverged_at_step, divergence_reason,
    last_good_checkpoint)."""

    step: int  # the optimizer step (1-based, the Trainer's global_step after it) that diverged
    reason: str  # e.g. "non-finite gradient norm at step 5"
    last_good_checkpoint: str | None  # newest checkpoint written before the divergence

    def meta(self) -> dict:
        return {"diverged_at_step": self.step, "divergence_reason": self.reason,
                "last_good_checkpoint": self.last_good_checkpoint}


def first_logged_loss(log_history: list[dict]) -> float | None:
    """The run's first logged training loss (a logging window's mean), from the Trainer's
    log_history, which a resumed run restores from its checkpoint; None before the first log."""
    return next((float(e["loss"]) for e in log_history if "loss" in e), None)


def loss_divergence(loss: float, first: float | None, factor: float) -> str | None:
    """Why a logged training loss means divergence (non-finite, or above `factor` x the first
    logged loss), or None. A first loss <= 0 (or none) gives no reference for the ratio."""
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss})"
    if first is not None and first > 0 and loss > factor * first:
        return f"training loss {loss:.4g} > {factor:g} × first logged loss {first:.4g}"
    return None


class TrainingMonitor(TrainerCallback):
    """Adds grad stats, memory and throughput to every log entry; stops a diverging run.

    Divergence is a result, not a crash. At an optimizer step whose pre-clip gradient norm or
    loss is non-finite, the gradients are dropped before the optimizer runs (AdamW skips every
    parameter whose grad is None: no moment, weight-decay or weight change), so the weights
    stay those of the previous step; training then stops. A logged training loss that is
    non-finite or above `loss_factor` x the first logged loss also stops training (that update
    was applied: the loss is only seen at logging steps). Either way no evaluation and no
    checkpoint follow at that step (a checkpoint of a diverged state would let a resumed job
    train on past it), and `divergence` says what happened. With `check_finite=False` (fp16)
    the optimizer-step check is off: the GradScaler skips such steps itself.

    The finiteness check and the clip counter use the pre-clip total norm that the Trainer
    computes anyway (handed over by `StudyTrainer` through `observe_grad_norm`, with the step's
    loss through `observe_loss`), so ordinary steps cost one device sync and no extra pass over
    the gradients. Per-parameter norms are computed only at logging steps, after clipping;
    clipping scales every gradient by one factor, so the pre-clip values are recovered exactly
    by rescaling with (pre-clip total) / (post-clip total).
    """

    def __init__(self, examples_per_step: int, checkpoint_dir: Path, check_finite: bool = True,
                 loss_factor: float = 10.0):
        self.examples_per_step = examples_per_step
        self.checkpoint_dir = Path(checkpoint_dir)
        self.check_finite = check_finite
        self.loss_factor = loss_factor
        self.divergence: Divergence | None = None
        self._pending: dict | None = None
        self._grad_norm = None
        self._loss = None
        self._clipped = None
        self._steps = 0
        self._last_time = None
        self._last_step = 0
        self._last_tokens = 0

    def _params(self, model):
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_step = time.perf_counter(), state.global_step
        self._last_tokens = state.num_input_tokens_seen

    def observe_grad_norm(self, grad_norm) -> None:
        """The Trainer's pre-clip total gradient norm of the coming optimizer step."""
        self._grad_norm = grad_norm

    def observe_loss(self, loss) -> None:
        """One micro-batch's training loss (a detached scalar tensor) of the coming optimizer step."""
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def _last_checkpoint(self) -> str | None:
        found = [p for p in self.checkpoint_dir.glob("checkpoint-*") if checkpoint_step(p) is not None]
        return str(max(found, key=checkpoint_step)) if found else None

    def _diverge(self, step: int, reason: str, control) -> None:
        if self.divergence is None:  # the first reason is the cause; what follows is its echo
            self.divergence = Divergence(step, f"{reason} at step {step}", self._last_checkpoint())
        control.should_training_stop = True
        control.should_evaluate = control.should_save = False

    @staticmethod
    def _non_finite(total: torch.Tensor, loss) -> str | None:
        """'gradient norm' or 'loss' when that is non-finite, else None (one device sync for both)."""
        values = [total.reshape(())] + ([] if loss is None else [loss.to(total.device).float().reshape(())])
        bad = (~torch.isfinite(torch.stack(values))).tolist()
        return "gradient norm" if bad[0] else "loss" if any(bad) else None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        total, self._grad_norm = self._grad_norm, None
        loss, self._loss = self._loss, None
        if total is None:
            return
        total = torch.as_tensor(total).float()
        step = state.global_step + 1
        if self.check_finite:
            what = self._non_finite(total, loss)
            if what is not None:
                model.zero_grad(set_to_none=True)  # the optimizer now skips every parameter
                self._diverge(step, f"non-finite {what}", control)
                return
        clipped = (total > args.max_grad_norm).float() if args.max_grad_norm > 0 else total * 0
        self._clipped = clipped if self._clipped is None else self._clipped + clipped
        self._steps += 1
        if step % args.logging_steps == 0:
            params = self._params(model)
            if params:
                norms = torch.stack(torch._foreach_norm([p.grad for _, p in params])).float()
                self._pending = {"norms": norms, "total": torch.linalg.vector_norm(norms)}

    def on_step_end(self, args, state, control, **kwargs):
        if self.divergence is not None and self.divergence.step == state.global_step:
            # the flow callback has just scheduled this step's evaluation and checkpoint: cancel
            # them, and log the diverged window so train_log.csv shows it
            control.should_evaluate = control.should_save = False
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return  # evaluation and summary entries
        if self.divergence is None:
            reason = loss_divergence(float(logs["loss"]), first_logged_loss(state.log_history), self.loss_factor)
            if reason is not None:
                self._diverge(state.global_step, reason, control)
        extra = {}
        if self._pending is not None:
            norms, post = self._pending["norms"], float(self._pending["total"])
            pre = float(logs.get("grad_norm", post))
            scaled = norms * (pre / post if post > 0 else 1.0)
            extra.update({"grad_norm_param_mean": float(scaled.mean()),
                          "grad_norm_param_std": float(scaled.std()) if scaled.numel() > 1 else 0.0,
                          "grad_norm_param_min": float(scaled.min()), "grad_norm_param_max": float(scaled.max())})
            self._pending = None
        if self._steps:
            extra["grad_clipped_fraction"] = float(self._clipped) / self._steps
            self._clipped, self._steps = None, 0
        now = time.perf_counter()
        steps = state.global_step - self._last_step
        if steps > 0 and now > self._last_time:
            extra["examples_per_second"] = steps * self.examples_per_step / (now - self._last_time)
            tokens = state.num_input_tokens_seen - self._last_tokens
            if tokens > 0:
                extra["tokens_per_second"] = tokens / (now - self._last_time)
        self._last_time, self._last_step, self._last_tokens = now, state.global_step, state.num_input_tokens_seen
        extra["cpu_rss_mb"] = psutil.Process().memory_info().rss / 2**20
        if torch.cuda.is_available():
            for d in range(torch.cuda.device_count()):
                extra[f"gpu{d}_allocated_mb"] = torch.cuda.memory_allocated(d) / 2**20
                extra[f"gpu{d}_reserved_mb"] = torch.cuda.memory_reserved(d) / 2**20
                extra[f"gpu{d}_peak_mb"] = torch.cuda.max_memory_allocated(d) / 2**20
        logs.update(extra)  # what later callbacks (W&B) send
        # The Trainer appends a copy of `logs` to log_history before callbacks run, and there is no
        # public way to add to an entry: update that copy too, so train_log.csv has the statistics.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)


class BestModelCallback(TrainerCallback):
    """Keeps the trainable weights of the best dev-loss evaluation on disk (atomically).

    Checkpoints come every M steps but evaluations every N: the best evaluation may fall
    between checkpoints, and early stopping may end the run before the next one.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _trainable(self, model) -> dict:
        return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, **kwargs):
        info = self.directory / "best.json"
        if info.exists() and json.loads(info.read_text())["step"] > state.global_step:
            shutil.rmtree(self.directory)  # written after the checkpoint we resume from: redone below

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return
        if state.best_metric is not None and not loss < state.best_metric:
            return  # state.best_metric still holds the previous best here
        tmp = self.directory.with_name(self.directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self._trainable(model), str(tmp / "weights.safetensors"))
        (tmp / "best.json").write_text(json.dumps({"step": state.global_step, "eval_loss": loss}))
        shutil.rmtree(self.directory, ignore_errors=True)
        tmp.rename(self.directory)

    def restore(self, model) -> dict | None:
        """Load the best weights into `model`; return {step, eval_loss} or None if none were kept."""
        info = self.directory / "best.json"
        if not info.exists():
            return None
        weights = load_file(str(self.directory / "weights.safetensors"))
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise RuntimeError(f"best weights in {self.directory} do not fit the model: {sorted(missing)[:5]}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return json.loads(info.read_text())
