"""Weights & Biases through the Trainer's own WandbCallback, configured by environment
variables; secrets (WANDB_API_KEY) stay in the user's environment and are never written.

One W&B run per job definition, each step sent once:

* the run id lives in the job's work folder (`RunRecord`, ftdrift.training.workdir.TRACKING_FILE),
  which is claimed per definition and mirrored with the checkpoints; `report_to` passes it to
  wandb.init as WANDB_RUN_ID with WANDB_RESUME="allow", so a resumed process continues the run
  instead of opening a second one of the same name;
* a resumed process or an out-of-memory retry (ftdrift.training.oom) redoes the steps after its
  checkpoint, and the Trainer logs them again: `StepOnceWandbCallback` sends a log entry only if
  the record says it was not sent yet.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import WandbCallback

from ftdrift.core import io
from ftdrift.training.workdir import TRACKING_FILE


def report_to(cfg: dict, run_name: str, group: str, tags: list[str], work_dir: Path) -> list[str]:
    """Configure W&B (config `wandb.*`) through its environment variables; the Trainer's report_to.

    The run id is the work folder's (`RunRecord.run_id`), resumed if W&B knows it already.
    """
    if cfg["mode"] == "disabled":
        return []
    os.environ.setdefault("WANDB_MODE", cfg["mode"])  # the user's own WANDB_MODE wins
    os.environ["WANDB_PROJECT"] = cfg["project"]
    if cfg.get("entity"):
        os.environ["WANDB_ENTITY"] = cfg["entity"]
    os.environ["WANDB_RUN_GROUP"] = group
    os.environ["WANDB_TAGS"] = ",".join(tags)
    os.environ["WANDB_NAME"] = run_name
    os.environ["WANDB_DIR"] = str(work_dir)
    os.environ["WANDB_RUN_ID"] = RunRecord(work_dir).run_id()
    os.environ["WANDB_RESUME"] = "allow"  # the run if it exists (a resumed job), else a new one
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_LOG_MODEL"] = "false"  # weights stay in results/, not in W&B
    return ["wandb"]


def init_settings(run_name: str | None = None) -> dict:
    """wandb.init's arguments from the W&B environment variables as they are now (as `report_to`
    set them): wandb reads its environment once per process, at its first setup, and would give a
    later job of the same process the first job's run id, folder, group and tags. Only the variables
    that are set; `run_name` (the Trainer's) wins over WANDB_NAME."""
    env = os.environ
    settings = {"id": env.get("WANDB_RUN_ID"), "resume": env.get("WANDB_RESUME"), "dir": env.get("WANDB_DIR"),
                "project": env.get("WANDB_PROJECT", "huggingface"), "entity": env.get("WANDB_ENTITY"),
                "group": env.get("WANDB_RUN_GROUP"), "name": run_name or env.get("WANDB_NAME"),
                "mode": env.get("WANDB_MODE"),
                "tags": env["WANDB_TAGS"].split(",") if env.get("WANDB_TAGS") else None}
    return {key: value for key, value in settings.items() if value}


class RunRecord:
    """What the job's W&B run was sent, in `<work_dir>/wandb_run.json`, so that a new process (a
    resumed job) or a new attempt (an out-of-memory retry) knows it:

        run_id       the run's id (16 hex digits), made on first use
        logged       {"step": last Trainer global step sent, "keys": the log keys sent at it}
        drift_steps  snapshot steps whose drift was sent (ftdrift.training.live_drift)

    Each call reads the file and each change rewrites it atomically (a few hundred bytes): two
    callbacks of one attempt, and the attempts of one job, share it without stale copies.
    """

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / TRACKING_FILE

    def read(self) -> dict:
        return io.read_json(self.path) if self.path.is_file() else {}

    def _update(self, **fields) -> None:
        io.write_json(self.path, {**self.read(), **fields})

    def run_id(self) -> str:
        """The job's run id; made and recorded on the first call for this work folder."""
        run_id = self.read().get("run_id")
        if not run_id:
            # W&B run ids: letters and digits; random, so two users' identical jobs never share a run
            run_id = secrets.token_hex(8)
            self._update(run_id=run_id)
        return run_id

    def was_logged(self, step: int, keys) -> bool:
        """True if a log entry with `keys` at Trainer step `step` was sent already. The Trainer logs
        in step order (loss, then eval, then the closing summary at one step), so: every step below
        the last one sent, and at the last one an entry whose keys were all sent at it."""
        last = self.read().get("logged")
        if last is None or step > last["step"]:
            return False
        return step < last["step"] or set(keys) <= set(last["keys"])

    def mark_logged(self, step: int, keys) -> None:
        last = self.read().get("logged")
        sent = set(keys) | (set(last["keys"]) if last and last["step"] == step else set())
        self._update(logged={"step": int(step), "keys": sorted(sent)})

    def drift_steps(self) -> set[int]:
        return set(self.read().get("drift_steps", []))

    def mark_drift(self, step: int) -> None:
        self._update(drift_steps=sorted(self.drift_steps() | {int(step)}))


class StepOnceWandbCallback(WandbCallback):
    """transformers' WandbCallback that sends each Trainer log entry once per job.

    A resumed or retried job redoes the steps after its checkpoint and the Trainer logs them again
    (transformers 5.24: `_maybe_log_save_evaluate` -> `on_log`, which WandbCallback passes to
    wandb.log with `train/global_step`); an entry the work folder's `RunRecord` lists as sent is
    dropped, and the record is updated after each entry sent. A filter callback placed before
    WandbCallback cannot do this: it can empty the entry, but WandbCallback would still log
    `train/global_step` alone.

    It starts the run itself, with the job's settings passed to wandb.init (`init_settings`), and
    continues only this job's run: a W&B run of another job left open in the same process
    (WandbCallback never finishes its run) is finished first.
    """

    def __init__(self, work_dir: Path):
        super().__init__()
        self.record = RunRecord(work_dir)

    def setup(self, args, state, model, **kwargs):
        if state.is_world_process_zero:
            self._start_run(args)
        super().setup(args, state, model, **kwargs)  # with a run active: config and x-axis only

    def _start_run(self, args) -> None:
        settings = init_settings(args.run_name)
        if "id" not in settings:
            return  # not configured by report_to: WandbCallback's own wandb.init
        if self._wandb.run is not None and self._wandb.run.id != settings["id"]:
            self._wandb.finish()  # another job's run: its logs must not land there
        if self._wandb.run is None:
            self._wandb.init(**settings)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)
        keys = sorted(logs or {})
        if self.record.was_logged(state.global_step, keys):
            return None
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)
        self.record.mark_logged(state.global_step, keys)
        return None


class ConfigToWandb(TrainerCallback):
    """Adds the resolved ftdrift config to the W&B run once the WandbCallback created it."""

    def __init__(self, resolved: dict):
        self.resolved = resolved

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if wandb.run is not None:
            wandb.run.config.update({"ftdrift": self.resolved}, allow_val_change=True)


def attach(trainer, resolved_config: dict | None, work_dir: Path | None = None) -> None:
    """Replace the Trainer's WandbCallback by a `StepOnceWandbCallback` placed after ftdrift's own
    callbacks (public pop/add_callback): our monitor adds its statistics to each log entry, and W&B
    must send the entry after that.

    `work_dir`: the job's work folder (its `RunRecord`); default: the one `report_to` configured
    (WANDB_DIR). Raises ValueError if neither is given.
    """
    if work_dir is None:
        if not os.environ.get("WANDB_DIR"):
            raise ValueError("tracking.attach needs the job's work folder: pass work_dir or call report_to first")
        work_dir = Path(os.environ["WANDB_DIR"])
    trainer.pop_callback(WandbCallback)
    trainer.add_callback(StepOnceWandbCallback(work_dir))
    trainer.add_callback(ConfigToWandb(resolved_config or {}))
