"""The run grid and its names: one place for what identifies a run.

A run is a point (task, method, learning rate, effective batch size, seed) of the grid in the
config; the methods are the config's `methods`, in its order (ftdrift.study.methods). Its name and path (RUN_PATTERN) are what every rule, table and report page uses; the
learning rate is written in one canonical form (format_float), so a path names one run only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftdrift.study.config import (
    INTEGER_LITERAL,
    NUMBER_LITERAL,
    ConfigError,
    task_kind,
    task_methods,
)

RUN_KEYS = ["task", "method", "lr", "batch_size", "seed"]  # a run's identity: the columns of every table
SETTING_KEYS = ["task", "method", "lr", "batch_size"]  # a hyperparameter setting: a run without its seed
SETTING_NAME = "lr{lr}_bs{batch_size}"  # results/seed_floor/<task>/<method>/<SETTING_NAME>.csv
RUN_NAME = SETTING_NAME + "_seed{seed}"
RUN_PATTERN = "{task}/{method}/" + RUN_NAME  # results/runs/<RUN_PATTERN>/, results/drift/<RUN_PATTERN>.csv, ...
# a finished run's status (metrics.json meta.status) is completed, stopped_early or diverged; a
# planned run without results is missing. Diverged and missing runs stay out of every mean, the
# choice of settings and the verdicts.
USABLE_STATUSES = ("completed", "stopped_early")


def run_slug(run: dict) -> str:
    """A run's name where a path separator cannot go (W&B run names, log lines): RUN_PATTERN with
    '/' as '-', e.g. 'sst2-full-lr3e-4_bs32_seed42'. `run` holds RUN_KEYS."""
    return RUN_PATTERN.format(**run).replace("/", "-")


def format_float(value: float) -> str:
    """Canonical scientific notation for paths: 1e-05 -> '1e-5', 0.0003 -> '3e-4', 2.5e-5 -> '2.5e-5'."""
    mantissa, exponent = f"{float(value):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class Run:
    """One fine-tuning job: a point of the grid."""

    task: str
    method: str
    lr: str  # canonical string (format_float) so paths and wildcards agree
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return RUN_NAME.format(**self.wildcards)

    @property
    def path(self) -> str:
        return RUN_PATTERN.format(**self.wildcards)

    @property
    def wildcards(self) -> dict:
        return {"task": self.task, "method": self.method, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed}


def task_seeds(config: dict, task: str) -> list[int]:
    """The task's seeds: task_overrides.<task>.grid.seeds where given, else grid.seeds."""
    return list(config.get("task_overrides", {}).get(task, {}).get("grid", {}).get("seeds", config["grid"]["seeds"]))


def _seeds_key(config: dict, task: str) -> str:
    return f"task_overrides.{task}.grid.seeds" if "seeds" in config.get("task_overrides", {}).get(task, {}).get(
        "grid", {}) else "grid.seeds"


def grid(config: dict) -> list[Run]:
    """Every (task, method, lr, batch size, seed) of the study, in a stable order.

    Raises ConfigError when two learning rates of one list share a name (they differ beyond
    format_float's 7 significant digits): the second would never be trained.
    """
    for method, kinds in config["grid"]["learning_rates"].items():
        for kind, values in kinds.items():
            names = [format_float(v) for v in values]
            if len(set(names)) < len(names):
                raise ConfigError(f"config key 'grid.learning_rates.{method}.{kind}': {values} name the same runs "
                                  f"{names}; learning rates must differ within 7 significant digits")
    runs = []
    for task in config["tasks"]:
        kind = task_kind(config["task_defs"][task])
        for method in task_methods(config, task):
            for lr in config["grid"]["learning_rates"][method][kind]:
                for batch_size in config["grid"]["batch_sizes"]:
                    for seed in task_seeds(config, task):
                        runs.append(Run(task, method, format_float(lr), int(batch_size), int(seed)))
    return runs


def compared_pairs(config: dict) -> list[tuple[str, str]]:
    """(task, method) of every comparison with the reference method (`analysis.reference_method`):
    each task x other method where the task runs both (task_methods), tasks outermost."""
    reference = config["analysis"]["reference_method"]
    pairs = []
    for task in config["tasks"]:
        methods = task_methods(config, task)
        if reference in methods:
            pairs += [(task, method) for method in methods if method != reference]
    return pairs


def _canonical_int(text: str) -> str | None:
    return str(int(text)) if INTEGER_LITERAL.fullmatch(text) else None


def _canonical_lr(text: str) -> str | None:
    return format_float(float(text)) if NUMBER_LITERAL.fullmatch(text) and math.isfinite(float(text)) else None


def check_run(config: dict, runs: list[Run], wildcards) -> None:
    """Refuse a target that is not a grid point spelled as `grid()` spells it: another spelling
    (lr1e-03, bs08) or an off-grid value would plan a new fine-tuning job.

    `runs` is `grid(config)`; `wildcards` maps task, method, lr, batch_size, seed to strings.
    Raises ConfigError naming the target's value and what to write instead.
    """
    w = {key: str(wildcards[key]) for key in ("task", "method", "lr", "batch_size", "seed")}
    target = RUN_PATTERN.format(**w)
    points = [run for run in runs if (run.task, run.method) == (w["task"], w["method"])]
    if not points:
        methods = (f"{task_methods(config, w['task'])} on {w['task']}" if w["task"] in config["tasks"]
                   else f"{list(config['methods'])}")
        raise ConfigError(f"target {target}: task '{w['task']}' with method '{w['method']}' is not in the grid "
                          f"(tasks: {config['tasks']}, methods: {methods})")
    kind = task_kind(config["task_defs"][w["task"]])
    for field, prefix, key, canonical in (
            ("lr", "lr", f"grid.learning_rates.{w['method']}.{kind}", _canonical_lr),
            ("batch_size", "bs", "grid.batch_sizes", _canonical_int),
            ("seed", "seed", _seeds_key(config, w["task"]), _canonical_int)):
        allowed = list(dict.fromkeys(str(getattr(run, field)) for run in points))
        value, spelled = w[field], canonical(w[field])
        if value in allowed:
            continue
        if spelled in allowed:
            raise ConfigError(f"target {target}: '{prefix}{value}' is not in canonical form; write '{prefix}{spelled}'")
        how = f" (canonical form: '{prefix}{spelled}')" if spelled not in (None, value) else ""
        raise ConfigError(f"target {target}: '{prefix}{value}'{how} is not a point of the grid for "
                          f"{w['task']}/{w['method']}: config key '{key}' gives "
                          + ", ".join(prefix + a for a in allowed))


