"""Snakemake's local executor: jobs run on this machine (profiles/default, and any profile without
an `executor:` key).

Preflight: nothing beyond the model and data checks every profile gets; this machine is where
the jobs run, so there is no partition, bucket or image to check.
Estimate: `cores` (default: all of this machine's) divided by the study's threads per fine-tuning
job gives the jobs at once; a GPU study is assumed to have one GPU, used by one job at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ftdrift.executors.base import Executor, HardwareProfile, Network, Report

NAME = "local"


def check(report: Report, net: Network, config: dict, env: Mapping) -> None:
    """Nothing executor-specific to check (see the module docstring)."""


def hardware(raw: dict, label: str, config: dict, cores: int | None) -> HardwareProfile:
    cores = cores or os.cpu_count() or 1
    threads = config["resources"]["finetune_threads"]
    slots = max(1, cores // threads)
    if config["resources"]["gpus_per_finetune"] > 0:
        return HardwareProfile(label, slots, 1, notes=["local: 1 GPU, jobs run one at a time on it"])
    return HardwareProfile(label, slots, slots,
                           notes=[f"local: {cores} cores / {threads} threads per job = {slots} jobs at once"])


ADAPTER = Executor(NAME, check, hardware)
