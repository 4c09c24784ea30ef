"""The SLURM executor (snakemake-executor-plugin-slurm; profiles/slurm): jobs on a cluster's
partitions, sharing this machine's file system and home (so a saved Hugging Face login reaches them).

Preflight (`check`), from the variables profiles/slurm reads:
* FTDRIFT_SLURM_PARTITION (CPU jobs) and FTDRIFT_SLURM_GPU_PARTITION (GPU rules), where set, must
  exist per `sinfo --format='%P %G'`, and the GPU one must have GPUs (a `gpu` generic resource)
  when the study uses GPUs;
* a study with GPUs (`resources.gpus_per_finetune` > 0, the switch that gives the rules their
  `gpu` resource in ftdrift.study.resources) needs a GPU partition: FTDRIFT_SLURM_GPU_PARTITION,
  or SNAKEMAKE_SLURM_PARTITIONS (the plugin's partition file), or else the CPU/default partition
  must have GPUs per `sinfo`.
Without `sinfo` on PATH, partitions are skipped, except a GPU study without a named GPU
partition, which is a problem (nothing says where its GPU jobs would go).

Estimate (`hardware`): the profile's `jobs` (default 100) run at once, GPUs assumed available for
each GPU job up to that; no machine types (the GPU model comes from the study config).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from ftdrift.executors.base import Executor, HardwareProfile, Network, Report, run_tool

NAME = "slurm"
DEFAULT_JOBS = 100


def sinfo_partitions(env: Mapping) -> tuple[dict[str, set[str]], str | None] | str:
    """(partition -> generic resources of its nodes, the default partition) from `sinfo`; or why
    sinfo could not say."""
    if not shutil.which("sinfo", path=env.get("PATH", os.defpath)):
        return "sinfo not on PATH"
    proc = run_tool(["sinfo", "--noheader", "--format=%P %G"], env)
    if isinstance(proc, str):
        return proc
    if proc.returncode != 0:
        return f"sinfo failed ({(proc.stderr.strip().splitlines() or ['no message'])[-1][:200]})"
    partitions: dict[str, set[str]] = {}
    default = None
    for line in proc.stdout.splitlines():
        name, _, gres = line.strip().partition(" ")
        if name.endswith("*"):  # sinfo marks the cluster's default partition
            name = default = name[:-1]
        if name:
            partitions.setdefault(name, set()).add(gres.strip())
    return partitions, default


def has_gpus(gres: set[str]) -> bool:
    return any("gpu" in g for g in gres)


def check(report: Report, net: Network, config: dict, env: Mapping) -> None:
    """The partitions (see the module docstring); needs no network, only `sinfo`."""
    label = f"profile {report.profile or NAME}"
    gpus = config["resources"]["gpus_per_finetune"]
    gpu_partition, cpu_partition = env.get("FTDRIFT_SLURM_GPU_PARTITION"), env.get("FTDRIFT_SLURM_PARTITION")
    named = {var: value for var, value in (("FTDRIFT_SLURM_PARTITION", cpu_partition),
                                            ("FTDRIFT_SLURM_GPU_PARTITION", gpu_partition)) if value}
    # without FTDRIFT_SLURM_GPU_PARTITION the GPU jobs go where the CPU jobs go (profiles/slurm)
    needs_gpu_partition = gpus > 0 and not gpu_partition and not env.get("SNAKEMAKE_SLURM_PARTITIONS")
    partitions = sinfo_partitions(env) if (named or needs_gpu_partition) else None
    if isinstance(partitions, str):
        if needs_gpu_partition:
            report.problems.append(
                f"{label}: the study uses GPUs (resources.gpus_per_finetune = {gpus}) but "
                "FTDRIFT_SLURM_GPU_PARTITION is not set (or point SNAKEMAKE_SLURM_PARTITIONS at a partition "
                f"file); {partitions}, so the partition the GPU jobs would get cannot be checked; see docs/cluster.md")
        if named:
            report.skipped.append(f"{label}: partitions {sorted(named.values())} not checked ({partitions})")
        return
    if partitions is None:
        return
    partitions, default = partitions
    for var, value in named.items():
        if value not in partitions:
            report.problems.append(f"{label}: partition '{value}' ({var}) does not exist on this cluster "
                                   f"(sinfo lists {sorted(partitions)})")
        elif var == "FTDRIFT_SLURM_GPU_PARTITION" and gpus > 0 and not has_gpus(partitions[value]):
            report.problems.append(f"{label}: partition '{value}' ({var}) has no GPUs "
                                   f"(sinfo Gres: {sorted(partitions[value])})")
        else:
            report.passed.append(f"{label}: partition '{value}' ({var}) exists")
    if needs_gpu_partition:
        target = cpu_partition or default
        if target in partitions and has_gpus(partitions[target]):
            report.passed.append(f"{label}: GPU jobs go to partition '{target}', which has GPUs")
        elif target is None or target in partitions:
            where = f"partition '{target}'" if target else "the cluster's default partition (none marked by sinfo)"
            report.problems.append(
                f"{label}: the study uses GPUs (resources.gpus_per_finetune = {gpus}) but "
                f"FTDRIFT_SLURM_GPU_PARTITION is not set, so GPU jobs go to {where}, which has no GPUs "
                f"(sinfo lists {sorted(partitions)}); set FTDRIFT_SLURM_GPU_PARTITION")


def hardware(raw: dict, label: str, config: dict, cores: int | None) -> HardwareProfile:
    jobs = int(raw.get("jobs", DEFAULT_JOBS))
    note = f"jobs at once: {jobs} (profile `jobs`; GPUs assumed available for each GPU job up to that)"
    return HardwareProfile(label, jobs, jobs, notes=[note])


ADAPTER = Executor(NAME, check, hardware)
