"""Weights & Biases through the Trainer's own WandbCallback, configured by environment
variables; secrets (WANDB_API_KEY) stay in the user's environment and are never written."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import WandbCallback


def report_to(cfg: dict, run_name: str, group: str, tags: list[str], work_dir: Path) -> list[str]:
    """Configure W&B (config `wandb.*`) through its environment variables; the Trainer's report_to."""
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
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_LOG_MODEL"] = "false"  # weights stay in results/, not in W&B
    return ["wandb"]


class ConfigToWandb(TrainerCallback):
    """Adds the resolved ftdrift config to the W&B run once the WandbCallback created it."""

    def __init__(self, resolved: dict):
        self.resolved = resolved

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if wandb.run is not None:
            wandb.run.config.update({"ftdrift": self.resolved}, allow_val_change=True)


def attach(trainer, resolved_config: dict | None) -> None:
    """Move the WandbCallback after ftdrift's own (public add/pop_callback): our monitor adds its
    statistics to each log entry, and W&B must send the entry after that."""
    trainer.pop_callback(WandbCallback)
    trainer.add_callback(WandbCallback)
    trainer.add_callback(ConfigToWandb(resolved_config or {}))
