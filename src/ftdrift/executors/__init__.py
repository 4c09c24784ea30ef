"""Executor adapters: one module per Snakemake executor plugin the profiles use, each holding that
executor's facts behind one interface (ftdrift.executors.base.Executor): its preflight checks,
how the cost estimate reads its profile's machines and concurrency, where its jobs read staged
data, whether a saved Hugging Face login reaches its jobs.

    local        Snakemake's local executor (profiles/default)
    slurm        snakemake-executor-plugin-slurm (profiles/slurm)
    googlebatch  snakemake-executor-plugin-googlebatch (profiles/gcp-gpu)

Which profile uses which executor is the profile file's own `executor:` key (ftdrift.profiles).
A new executor (e.g. kubernetes) is: its profiles/<name>/profile.yaml, one module here with an
`ADAPTER`, listed in ADAPTERS below, its machine prices in config/prices.yaml, and its tests.
"""

from __future__ import annotations

from ftdrift.executors import googlebatch, local, slurm
from ftdrift.executors.base import Executor, HardwareProfile, Staging

__all__ = ["ADAPTERS", "Executor", "HardwareProfile", "Staging", "get"]

# executor name (a profile's `executor:`, workflow.executor_plugin.name) -> its adapter
ADAPTERS: dict[str, Executor] = {adapter.name: adapter for adapter in (local.ADAPTER, slurm.ADAPTER,
                                                                        googlebatch.ADAPTER)}


def get(executor: str | None) -> Executor | None:
    """The adapter of an executor name, or None (no executor, or one without an adapter)."""
    return ADAPTERS.get(executor) if executor else None
