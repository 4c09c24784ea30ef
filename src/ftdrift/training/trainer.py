"""The study's Trainer: seeded length-grouped batches that survive a restart, the study's loss,
predictions in dataset order, evaluation batches that split on out-of-memory, and the protocol
as TrainingArguments."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from ftdrift.core import loss
from ftdrift.core.memory import BatchSplitter, batch_rows, concat_rows
from ftdrift.training.monitor import TrainingMonitor
from ftdrift.training.timing import StageClock
from ftdrift.training.workdir import checkpoint_step

log = logging.getLogger("ftdrift.training.trainer")


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped batches whose order is a pure function of (seed, epoch).

    transformers' own group_by_length sampler draws from the global RNG when an epoch's
    iterator is created, which on resume happens before the checkpoint's RNG state is
    restored: the resumed epoch would see another order. Seeding per epoch makes resume exact.
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class SplittingEvalTrainer(Trainer):
    """A Trainer whose evaluation and prediction batches split in halves on out-of-memory.

    Evaluation runs at `per_device_eval_batch_size` (the study's config representations.batch_size),
    which the training retry's smaller micro-batch does not change: an out-of-memory error in
    `prediction_step` splits that batch (ftdrift.core.memory.BatchSplitter), later batches start
    at the size that fitted, and no training step is redone. The step's outputs are the unsplit
    batch's (to float rounding, see ftdrift.core.memory): logits and labels concatenated in row
    order (same padding length), the loss the row-weighted mean of the pieces' losses (each a mean
    over its examples, ftdrift.core.loss).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_splitter = BatchSplitter(
            f"evaluation/prediction at per_device_eval_batch_size={self.args.per_device_eval_batch_size} "
            "(config representations.batch_size)")

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        def step(piece):
            return batch_rows(piece), super(SplittingEvalTrainer, self).prediction_step(
                model, piece, prediction_loss_only, ignore_keys=ignore_keys)

        parts = self.eval_splitter.run(step, inputs)
        return parts[0][1] if len(parts) == 1 else merge_prediction_steps(parts)


def merge_prediction_steps(parts: list[tuple[int, tuple]]) -> tuple:
    """(rows, (loss, logits, labels)) of consecutive pieces of one batch -> the batch's (loss, logits, labels).

    loss: scalar, the row-weighted mean of the pieces' mean losses (None if they have none);
    logits, labels: tensors or tuples of tensors, concatenated along dimension 0 (None stays None).
    """
    rows = torch.tensor([n for n, _ in parts], dtype=torch.float32)
    losses = [step[0] for _, step in parts]
    merged = None
    if losses[0] is not None:
        merged = (torch.stack([x.float() for x in losses]) * rows.to(losses[0].device)).sum() / rows.sum()
        merged = merged.to(losses[0].dtype)
    return (merged, concat_rows([step[1] for _, step in parts]), concat_rows([step[2] for _, step in parts]))


class StudyTrainer(SplittingEvalTrainer):
    """Trainer whose training order survives a restart bit for bit (see EpochSeededLengthSampler),
    whose loss is the study's per-example mean over the effective batch (ftdrift.core.loss), whose
    predictions come back in dataset order, and whose evaluation batches split on out-of-memory
    (SplittingEvalTrainer)."""

    # compute_loss below divides by the effective batch's example count itself: the Trainer
    # must not divide by the accumulation steps again (documented Trainer attribute)
    loss_is_scaled_for_ga = True
    _resumed_at_stop = False  # set by train()

    def __init__(self, *args, train_lengths: list[int], eval_lengths: list[int] | None = None,
                 monitor: TrainingMonitor | None = None, clock: StageClock | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_lengths, self.eval_lengths = train_lengths, eval_lengths
        self.monitor, self.clock = monitor, clock or StageClock()

    def evaluate(self, *args, **kwargs):
        with self.clock.stage("dev evaluation"):
            return super().evaluate(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._resumed_at_stop = isinstance(resume_from_checkpoint, str) and stopped_at(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        # Private hook: resumed from the checkpoint where the run stopped (a finished job's final
        # state, restored from the mirror when the upload of its outputs was cut), transformers 5.24
        # trains on: its epoch loop takes a step before it checks for the end (max_steps inside an
        # epoch: one step past it), and on_train_begin clears the restored stop (early stopping: on
        # to the next evaluation). Nothing is left to train; tests/system/test_workdir_mirror_gcs.py guards it.
        if self._resumed_at_stop:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # private hook (like _get_grad_norm below), for timing only: no public event brackets a save
        with self.clock.stage("checkpoint writes"):
            return super()._save_checkpoint(model, trial)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        # N of ftdrift.core.loss: the examples of all micro-batches of this optimizer step
        return batches, sum(len(batch["input_ids"]) for batch in batches)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = {key: inputs[key] for key in loss.LABEL_KEYS if key in inputs}
        outputs = model(**{key: value for key, value in inputs.items() if key not in labels})
        # evaluation batches are averaged by the Trainer itself, weighted by their size
        n = num_items_in_batch if model.training else None
        value = loss.batch_loss(outputs, labels, inputs.get("attention_mask"), int(n) if n else None)
        return (value, outputs) if return_outputs else value

    def training_step(self, model, inputs, num_items_in_batch=None):
        # the divergence guard checks each optimizer step's loss with its gradient norm, in one sync
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.monitor is not None:
            self.monitor.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Private hook, on purpose: callbacks see the pre-clip gradient norm only at logging
        # steps, but the divergence guard needs it at every step before the optimizer applies it.
        # This hook hands over the norm the Trainer already computed; the public alternative (a
        # second pass over every gradient in on_pre_optimizer_step) cost 2 % of each step.
        # transformers is pinned in pyproject.toml; tests/training/test_divergence.py guards it.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.monitor is not None:
            self.monitor.observe_grad_norm(grad_norm)
        return grad_norm

    def floating_point_ops(self, inputs):
        # The Trainer recounts the non-embedding parameters (a walk over every module) for total_flos
        # at every micro-batch: 0.3-0.6 ms on MiniLM, as much as all of ftdrift's per-step additions
        # (bench/finetune_throughput.py --micro). The count is fixed: compute it once, same formula.
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if getattr(self, "_non_embedding_params", None) is None:
            self._non_embedding_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main].numel() * self._non_embedding_params

    def _get_train_sampler(self, train_dataset=None):
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=self.train_lengths, seed=self.args.data_seed)

    def _get_eval_sampler(self, eval_dataset):
        # Dev evaluation during training needs the loss and metrics only, which do not depend on the
        # order: batches of similar length pad less (1.3-1.4x faster on MRPC). transformers' own
        # group_by_length eval sampler is random; this order is fixed.
        if self.eval_lengths is not None and len(self.eval_lengths) == len(eval_dataset):
            return by_length(self.eval_lengths)
        return SequentialSampler(eval_dataset)


def by_length(lengths) -> list[int]:
    """Indices ordered by length, longest first (an out-of-memory error shows at the first batch),
    ties in dataset order: a fixed order that pads little at any batch size."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def stopped_at(checkpoint: Path) -> bool:
    """Whether training stopped at `checkpoint` (max_steps or early stopping): the Trainer saves its
    control flags in the checkpoint's state, the stop already set at the last step's save."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {})
    return bool(control.get("args", {}).get("should_training_stop"))


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint whose trainer state (written last by the Trainer) is readable.

    The Trainer writes checkpoints in place, so a kill mid-save leaves a partial folder; it is
    removed here and the previous checkpoint is used instead.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted((p for p in checkpoint_dir.glob("checkpoint-*") if checkpoint_step(p) is not None),
                   key=checkpoint_step, reverse=True)
    for path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (the job was killed while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def training_arguments(*, run: dict, name: str, training: dict, plan: dict, precision: str, eval_batch_size: int,
                       checkpoint_dir: Path, report_to: list[str]) -> TrainingArguments:
    """The study's protocol (config `training.*`) for one micro-batch plan as TrainingArguments."""
    seed = int(run["seed"])
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        run_name=name,
        learning_rate=float(run["lr"]),
        per_device_train_batch_size=plan["micro_batch"],
        gradient_accumulation_steps=plan["accumulation"],
        per_device_eval_batch_size=eval_batch_size,  # split on out-of-memory (SplittingEvalTrainer)
        num_train_epochs=training["epochs"],
        max_steps=training["max_steps"],
        warmup_steps=training["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=training["lr_scheduler"],
        weight_decay=training["weight_decay"],
        max_grad_norm=training["max_grad_norm"],
        eval_strategy="steps",
        eval_steps=training["eval_steps"],
        save_strategy="steps",
        save_steps=training["save_steps"],
        save_total_limit=training["save_total_limit"],
        logging_steps=training["logging_steps"],
        logging_nan_inf_filter=False,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,
        seed=seed,
        data_seed=seed,
        full_determinism=training["full_determinism"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=training["gradient_checkpointing"] or plan["gradient_checkpointing"],
        train_sampling_strategy="group_by_length",  # with our seeded sampler, see StudyTrainer
        include_num_input_tokens_seen="non_padding",
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=report_to,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
