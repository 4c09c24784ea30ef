"""The one interface every executor adapter fills in (`Executor`), and the shapes it works with.

An adapter knows one Snakemake executor plugin (by the name the profiles' `executor:` key and
`workflow.executor_plugin.name` use) as this project uses it:

* `check(report, net, config, env)`: the preflight checks of that executor's profile: its
  environment variables, the cluster's partitions, the bucket, the image... It appends lines to
  `report.problems` (the run must not start), `report.skipped` (could not check, and why) or
  `report.passed`; it raises nothing. Network failures are `skipped`, never problems.
* `hardware(raw, label, config, cores)`: what the cost estimate needs of the profile
  (`HardwareProfile`), from `raw`, the profile file parsed as plain YAML (its YTE expressions
  `?...` stay strings, so no environment variable has to be set).
* `staging(env)`: where the jobs read the task files of `data_dir` when they cannot see this
  machine's disk (`Staging`), else None.
* `login_reaches_jobs`: whether a Hugging Face login saved on this machine reaches the jobs (a
  shared home does; a VM sees only the HF_TOKEN the profile passes on).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

TOOL_TIMEOUT_S = 60


class Report(Protocol):
    """What an adapter writes to: ftdrift.preflight.PreflightReport."""

    problems: list[str]
    skipped: list[str]
    passed: list[str]
    profile: str | None  # the profile's name, as the lines name it ("profile slurm: ...")


class Network(Protocol):
    """ftdrift.preflight's reachability probe: `down(url_or_host)` is None when the host answers,
    else why not (for a 'no network (...)' skipped line); `env` is the checked environment."""

    env: Mapping

    def down(self, url_or_host: str) -> str | None: ...


@dataclass
class HardwareProfile:
    """What the estimate needs of a Snakemake profile: machines per rule and how many jobs run at once."""

    name: str
    jobs: int  # jobs at once (the profile's `jobs`, or local cores)
    gpu_slots: int  # GPU jobs at once
    machines: dict[str, str] = field(default_factory=dict)  # rule -> machine type of the price table
    default_machine: str | None = None  # None: no machine types, GPUs come from the study config
    spot_rules: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def machine(self, rule: str) -> str | None:
        return self.machines.get(rule, self.default_machine)


@dataclass(frozen=True)
class Staging:
    """Where the jobs read the task files of `data_dir`: the copies rule stage_data uploads
    (ftdrift.study.storage).

    where: the place as the messages name it, e.g. 'gs://bucket/ftdrift/results/staged/';
    readers: who reads them, e.g. 'the jobs on Google Batch';
    present(net, rels): for paths relative to data_dir, {rel: already staged?}, or a string
    saying why that could not be asked (no network, no client library, no access).
    """

    where: str
    readers: str
    present: Callable[[Network, list[str]], dict[str, bool] | str]


def _no_staging(env: Mapping) -> None:
    return None


@dataclass(frozen=True)
class Executor:
    """One executor adapter (see the module docstring); registered in ftdrift.executors.ADAPTERS."""

    name: str  # Snakemake's executor plugin name: 'slurm', 'googlebatch', 'local'
    check: Callable[[Report, Network, dict, Mapping], None]
    hardware: Callable[[dict, str, dict, int | None], HardwareProfile]
    staging: Callable[[Mapping], Staging | None] = _no_staging
    login_reaches_jobs: bool = True


# ----------------------------------------------------------------------------- helpers for adapters
def env_first(env: Mapping, *names: str) -> str | None:
    """The first of `names` set (non-empty) in `env`, else None."""
    for name in names:
        if env.get(name):
            return env[name]
    return None


def run_tool(args: list[str], env: Mapping) -> subprocess.CompletedProcess | str:
    """Run a command-line tool (sinfo, docker, gcloud) with a time limit; a string says why it could not run."""
    try:
        return subprocess.run(args, env=dict(env), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{args[0]} failed ({type(err).__name__})"


def yte_int(expression, default: int) -> tuple[int, str]:
    """(value, where it came from) of a profile entry such as ?int(env("FTDRIFT_GCP_MAX_GPUS", default="8")),
    read without rendering the profile (which needs the cloud settings in the environment): the
    variable when set to a number, else the expression's default, else `default`."""
    if isinstance(expression, int):
        return expression, "profile"
    text = str(expression)
    name = re.search(r'env\("([A-Z0-9_]+)"', text)
    if name and os.environ.get(name.group(1), "").strip().isdigit():
        return int(os.environ[name.group(1)]), f"${name.group(1)}"
    fallback = re.search(r'default="?(\d+)', text)
    return (int(fallback.group(1)), f"{name.group(1) if name else 'profile'} default") if fallback else (default, "")
