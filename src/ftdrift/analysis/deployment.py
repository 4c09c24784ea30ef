"""Deployment benchmark: what serving N tasks costs with adapters against N fully fine-tuned models.

Two methods are served (`served_methods`): the full one — the reference method
(`analysis.reference_method`) when it trains every weight, else the first such method configured —
and the adapter one, `deployment.method` (null: the first adapter method configured); the other
methods are not benchmarked (their serving cost differs from this one's by adapter size only, and
each adds a minute of timing). For each task the chosen setting (lr and batch size per task × method, chosen on dev as best.csv's
by ftdrift.analysis.tables.best_settings; its lowest seed that did not diverge) is served three ways — the full method's fine-tuned model, the base model with the
unmerged adapter (the group's model below with this task's adapter active), the merged adapter
(`merge_and_unload` on a copy) — on the task's probe inputs (encoded as the runs' probe is:
`encode_probe` + `make_batches`, batches of exactly `batch_size` examples, the probe cycled up to a
multiple of the batch size; inputs already on the device). Tasks of one task-model class (same
transformers auto class and label count: the GLUE tasks share sequence classification with 2
labels; SQuAD v2 is extractive QA, alone) are then served together: one base model holding all
their adapters, against N full models, on batches whose example i belongs to task i mod N.

Weights are float32 as saved; forward passes run under the runs' training precision
(`training.precision`, 'auto' resolved here: bf16 autocast on a GPU that has it). Timing:
ftdrift.analysis.deployment_measure (torch.utils.benchmark; warm-up excluded, GPU synchronised).

results/tables/deployment.csv — one row per measured case:
    section          'inference' (one task, one variant, one batch size), 'multi_task' (a group's
                     tasks in one batch), 'adapter_ops' (switching, loading, unloading)
    group            task-model class: 'classification' or 'extractive_qa' ('_<n>labels' appended
                     when classification tasks differ in label count)
    task             the task; for multi_task and set_adapter rows the group's tasks joined by '+'
    variant          inference: '<full method>' | '<adapter method>_unmerged' | '<adapter method>_merged'
                     (e.g. 'full', 'lora_unmerged', 'lora_merged').
                     multi_task (each example of the batch belongs to another task, round robin):
                     'full_models' (each task's full model runs its examples), 'adapter_per_task'
                     (one base model: set_adapter, then that task's examples, task by task),
                     'mixed_adapter_batch' (one forward with peft's `adapter_names=`, one per example).
                     adapter_ops: 'set_adapter' (switch the active adapter, cycling through the
                     group), 'load_adapter' / 'delete_adapter' (one adapter into / out of the
                     group's model), 'load_full_model' (the full model from disk to the device,
                     weights read once)
    batch_size       examples per call (empty for adapter_ops)
    n_tasks          tasks the case's models serve
    runs             run path(s) measured (results/runs/<run>/model)
    supported        False when peft refused the case (timings then empty; note says why)
    samples          timed samples (torch.utils.benchmark; ftdrift.analysis.deployment_measure says how)
    calls_per_sample 1 = each sample times one call; > 1 only for set_adapter (block means)
    mean_ms, median_ms, iqr_ms, p50_ms, p95_ms, p99_ms, min_ms, max_ms
                     milliseconds per call over the samples (percentiles interpolate between samples)
    examples_per_s   throughput: batch_size / mean (empty for adapter_ops)
    device, precision   where and in which precision it ran ('fp32', 'bf16' autocast, ...)
    note             caveats of the row

results/tables/deployment_memory.csv — one row per group × layout, plus group 'all' (the sums):
    group, tasks ('+'-joined), n_tasks
    layout           'full_models' (N fine-tuned models) | 'base_plus_adapters' (one base model
                     holding the N adapters and their heads)
    param_bytes, buffer_bytes, computed_bytes   numel × element size of the loaded modules
    measured_bytes   what loading the layout added: torch.cuda.memory_allocated delta on a GPU,
                     the process RSS delta on CPU, weights paged in (measured_as says which)
    measured_as, device

results/tables/deployment.json — machine, versions, precision, settings, the served methods
({'full', 'adapter'}: their names), chosen runs, groups
(with peft's mixed-batch support), memory summary and output checks in float32 on the first
CHECK_EXAMPLES probe examples of each task: max |merged − unmerged adapter output| and max |mixed
batch − each example's own adapter on the same batch|.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import pandas as pd
import torch

from ftdrift.analysis import deployment_measure as measure
from ftdrift.analysis.checkpoints import MERGE_TOLERANCE
from ftdrift.analysis.deployment_cases import (
    CHECK_EXAMPLES,
    MIN_OP_SAMPLES,
    Bench,
    Chosen,
    Group,
    Methods,
    adapter_op_rows,
    inference_rows,
    load_served,
    multi_task_rows,
)
from ftdrift.analysis.tables import best_settings, runs_frame
from ftdrift.core import io
from ftdrift.core.precision import resolve_precision
from ftdrift.data.features import encode_probe
from ftdrift.modeling import models
from ftdrift.study.config import task_kind
from ftdrift.study.grid import RUN_PATTERN, USABLE_STATUSES, format_float
from ftdrift.study.methods import Method

log = logging.getLogger("ftdrift.analysis.deployment")

COLUMNS = ["section", "group", "task", "variant", "batch_size", "n_tasks", "runs", "supported", "samples",
           "calls_per_sample", "mean_ms", "median_ms", "iqr_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms",
           "examples_per_s", "device", "precision", "note"]
MEMORY_COLUMNS = ["group", "tasks", "n_tasks", "layout", "param_bytes", "buffer_bytes", "computed_bytes",
                  "measured_bytes", "measured_as", "device"]
MIXED_TOLERANCE = 1e-5  # mixed vs single-adapter outputs, float32: sub-batches change matmul shapes only
PEFT_MIXED_BATCH = (
    "peft 0.21.2 mixes adapters per example (forward argument adapter_names=) in LoRA layers and in "
    "modules_to_save heads: ModulesToSaveWrapper._mixed_batch_forward runs each adapter's copy of the head "
    "on its examples, for heads that are torch.nn.Linear, Embedding or Conv1d/2d/3d (TypeError otherwise).")


def chosen_runs(best: pd.DataFrame, runs: Sequence[Mapping], model_dirs: Sequence, metrics_paths: Sequence
                ) -> dict[tuple[str, str], Chosen]:
    """(task, method) -> the chosen setting's lowest-seed run among `runs` (the grid, in the order of
    `model_dirs` and `metrics_paths`). ValueError when best.csv names a setting the grid lacks."""
    chosen = {}
    for row in best.itertuples():
        lr = format_float(float(row.lr))
        matches = sorted((int(r["seed"]), i) for i, r in enumerate(runs)
                         if (r["task"], r["method"], format_float(float(r["lr"])), int(r["batch_size"]))
                         == (row.task, row.method, lr, int(row.batch_size)))
        if not matches:
            raise ValueError(f"best.csv: {row.task}/{row.method} lr {lr} batch {row.batch_size} is no run of the grid")
        # the lowest seed that entered the choice (a diverged seed's model is no model to serve)
        usable = [(seed, i, metrics) for seed, i in matches
                  if (metrics := io.read_json(metrics_paths[i])).get("meta", {}).get("status", "completed")
                  in USABLE_STATUSES]
        if not usable:
            continue
        seed, i, metrics = usable[0]
        chosen[(row.task, row.method)] = Chosen(
            row.task, row.method, lr, int(row.batch_size), seed, RUN_PATTERN.format(**runs[i]), str(model_dirs[i]),
            metrics.get("validation", {}).get(metrics.get("main_metric")))
    return chosen


def choose(runs: Sequence[Mapping], model_dirs: Sequence, metrics_paths: Sequence, task_order: Sequence[str]
           ) -> dict[tuple[str, str], Chosen]:
    """(task, method) -> the chosen run: the settings best.csv reports, chosen here from the runs' dev
    metrics by the same function (ftdrift.analysis.tables.best_settings on the usable runs), each
    setting's lowest usable seed (`chosen_runs`). The choice depends on no analysis.* setting, so
    re-computing statistics re-runs no job that uses it."""
    finished = runs_frame(metrics_paths)
    order = {task: i for i, task in enumerate(task_order)}
    best = best_settings(finished[finished.status.isin(USABLE_STATUSES)]).sort_values(
        ["task", "method"], key=lambda col: col.map(order) if col.name == "task" else col, kind="stable")
    return chosen_runs(best, runs, model_dirs, metrics_paths)


def served_methods(methods: Mapping[str, dict], reference: str, requested: str | None) -> Methods:
    """The two methods the benchmark serves (module doc) from the config's `methods` ({name: spec}),
    `analysis.reference_method` and `deployment.method`. ValueError naming the config key when no
    method trains every weight, none is an adapter, or `requested` is not a configured adapter method."""
    found = {name: Method.from_spec(name, spec) for name, spec in methods.items()}
    full = [n for n, m in found.items() if m.is_full]
    adapters = [n for n, m in found.items() if not m.is_full]
    if not full or not adapters:
        raise ValueError(f"config key 'methods': the deployment benchmark needs a method that trains every weight "
                         f"and an adapter method (methods: {sorted(found)})")
    if requested is not None and requested not in adapters:
        raise ValueError(f"config key 'deployment.method': '{requested}' is not a configured adapter method "
                         f"(adapter methods: {adapters})")
    return Methods(reference if reference in full else full[0], requested or adapters[0])


def task_groups(tasks: Sequence[str], task_defs: Mapping) -> list[Group]:
    """The tasks grouped by task-model class, in the configured order."""
    keys = {t: (task_kind(task_defs[t]), len(task_defs[t]["labels"]) if task_kind(task_defs[t]) == "classification"
                else None) for t in tasks}
    label_counts = {n for kind, n in keys.values() if kind == "classification"}
    groups = []
    for key in dict.fromkeys(keys.values()):
        kind, n = key
        name = f"{kind}_{n}labels" if kind == "classification" and len(label_counts) > 1 else kind
        groups.append(Group(name, kind, n, tuple(t for t in tasks if keys[t] == key)))
    return groups


def probe_features(probe_path, tokenizer, task_def: Mapping, data: Mapping) -> list[dict]:
    """The task's probe encoded as the runs' probe is (`data`: the task's data settings)."""
    kind = task_kind(task_def)
    return encode_probe(io.read_jsonl(probe_path), tokenizer, kind, int(data["max_length"][kind]),
                        data.get("max_query_length"))


def memory_table(rows: list[dict]) -> pd.DataFrame:
    """The groups' memory rows plus group 'all': per layout, the sums over groups."""
    frame = pd.DataFrame(rows, columns=MEMORY_COLUMNS)
    if frame.empty:
        return frame
    sums = frame.groupby("layout", sort=False).agg(
        tasks=("tasks", "+".join), n_tasks=("n_tasks", "sum"), param_bytes=("param_bytes", "sum"),
        buffer_bytes=("buffer_bytes", "sum"), computed_bytes=("computed_bytes", "sum"),
        measured_bytes=("measured_bytes", "sum"), measured_as=("measured_as", "first"), device=("device", "first"))
    return pd.concat([frame, sums.reset_index().assign(group="all")[MEMORY_COLUMNS]], ignore_index=True)


def memory_summary(memory: pd.DataFrame, base_bytes: Mapping[str, int]) -> dict:
    """Per group (and 'all'): computed and measured bytes of both layouts, the base's and the
    adapters' share, and how many times more the N full models take."""
    out = {}
    for group, sub in memory.groupby("group", sort=False):
        by = sub.set_index("layout")
        full, shared = by.loc["full_models"], by.loc["base_plus_adapters"]
        base = sum(base_bytes.values()) if group == "all" else base_bytes[group]
        out[group] = {"tasks": full.tasks, "n_tasks": int(full.n_tasks),
                      "full_models_bytes": int(full.computed_bytes), "base_bytes": int(base),
                      "adapters_bytes": int(shared.computed_bytes - base),
                      "base_plus_adapters_bytes": int(shared.computed_bytes),
                      "full_over_adapters": float(full.computed_bytes / shared.computed_bytes),
                      "measured_full_models_bytes": int(full.measured_bytes),
                      "measured_base_plus_adapters_bytes": int(shared.measured_bytes),
                      "measured_as": full.measured_as}
    return out


def group_precision(tasks: Sequence[str], precision: Mapping[str, str]) -> str:
    """The tasks' common precision; fp32 when they differ (one forward cannot run in two)."""
    values = {precision[t] for t in tasks}
    return values.pop() if len(values) == 1 else "fp32"


def bench_group(group: Group, chosen: Mapping, methods: Methods, model_cfg: Mapping, tokenizer, features: Mapping,
                batch_sizes: Sequence[int], bench: Bench, compute: Mapping[str, str]) -> dict:
    """Every case of one group: {'rows', 'memory', 'base_bytes', 'info' (the summary's group entry),
    'merge' (task -> max |merged − unmerged|), 'mixed' (max |mixed − own adapter|, None if not run)}."""
    log.info("group %s: %s", group.name, group.tasks)
    served = load_served(group, chosen, methods, model_cfg, tokenizer, bench.device)
    shared = group_precision(group.tasks, compute)
    rows, merge = inference_rows(served, features, tokenizer, batch_sizes, bench, compute)
    info = {"group": group.name, "kind": group.kind, "num_labels": group.num_labels, "tasks": list(group.tasks),
            "precision": shared, "mixed_batch_supported": None,
            "note": "alone in its task-model class: no adapter to switch to or mix with" * (len(group.tasks) == 1)}
    mixed = None
    if len(group.tasks) > 1:
        multi, result = multi_task_rows(served, features, tokenizer, batch_sizes, bench, shared)
        rows += multi
        info.update(mixed_batch_supported=result["mixed_batch_supported"], note=result["note"])
        mixed = result["mixed_batch_max_abs_diff"]
    rows += adapter_op_rows(served, bench, shared)
    return {"rows": rows, "memory": served.memory, "base_bytes": served.base_bytes, "info": info, "merge": merge,
            "mixed": mixed}


def settings_summary(bench: Bench, batch_sizes: Sequence[int]) -> dict:
    return {"batch_sizes": list(batch_sizes), "min_run_time_s": bench.min_run_time, "threads": bench.threads,
            "single_call_min_samples": measure.SINGLE_CALL_MIN_SAMPLES, "op_samples_min": MIN_OP_SAMPLES,
            "max_run_time_s": measure.RUN_TIME_CAP * bench.min_run_time,
            "timing": "torch.utils.benchmark.Timer, accelerator synchronised, warm-up excluded, one call per "
                      "sample: adaptive_autorange (4 samples and min_run_time, at most max_run_time_s; calls too "
                      "fast for it: timeit(1) repeated); load/delete_adapter: timeit(1) repeated; set_adapter: "
                      "blocked_autorange (block means)",
            "inputs": "the task's probe (encode_probe + make_batches), batches of exactly batch_size, already on "
                      "the device"}


def deployment(*, runs: Sequence[Mapping], model_dirs: Sequence, metrics_paths: Sequence,
               probe_paths: Mapping[str, str], model_cfg: Mapping, task_defs: Mapping, data_settings: Mapping,
               settings: Mapping, precision: Mapping[str, str], methods: Mapping[str, dict], reference: str,
               outputs: Mapping) -> dict:
    """Rule deployment: benchmark serving the chosen settings (module doc) and write outputs['table'],
    outputs['memory'] (CSV) and outputs['summary'] (JSON); returns the summary.

    `runs`: the grid's runs (task, method, lr, batch_size, seed), in the order of `model_dirs` and
    `metrics_paths`; `probe_paths`: task -> probe.jsonl, in the configured task order;
    `data_settings`: task -> its data settings (config `data`, task overrides applied); `settings`: the config's
    `deployment` section (its `method`: the adapter method served, see `served_methods`);
    `precision`: task -> training.precision ('auto' resolves here); `methods`: the config's methods
    ({name: spec}); `reference`: analysis.reference_method. A task lacking a chosen setting of
    either served method (no usable run) is skipped (listed in the summary).
    """
    served = served_methods(methods, reference, settings.get("method"))
    chosen = choose(runs, model_dirs, metrics_paths, list(probe_paths))
    tasks = [t for t in probe_paths if (t, served.full) in chosen and (t, served.adapter) in chosen]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bench = Bench(device, float(settings["min_run_time"]), torch.get_num_threads())
    batch_sizes = sorted(int(b) for b in settings["batch_sizes"])
    compute = {t: resolve_precision(precision[t]) for t in tasks}
    tokenizer = models.load_tokenizer(dict(model_cfg))
    features = {t: probe_features(probe_paths[t], tokenizer, task_defs[t], data_settings[t]) for t in tasks}
    results = []
    for group in task_groups(tasks, task_defs):
        results.append(bench_group(group, chosen, served, model_cfg, tokenizer, features, batch_sizes, bench, compute))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the group's models are gone: the next group's deltas start clean
    table = pd.DataFrame([r for res in results for r in res["rows"]], columns=COLUMNS)
    memory = memory_table([m for res in results for m in res["memory"]])
    checks = {"examples_per_task": CHECK_EXAMPLES, "merge_tolerance": MERGE_TOLERANCE,
              "merge_max_abs_diff": {t: d for res in results for t, d in res["merge"].items()},
              "mixed_tolerance": MIXED_TOLERANCE,
              "mixed_batch_max_abs_diff": {res["info"]["group"]: res["mixed"] for res in results
                                           if res["mixed"] is not None}}
    summary = {
        "machine": measure.machine(device), "versions": measure.versions(),
        "precision": {"weights": "float32 (as saved)", "compute": compute},
        "settings": settings_summary(bench, batch_sizes),
        "methods": asdict(served),
        "chosen_runs": [asdict(c) for c in chosen.values() if c.task in tasks and c.method in asdict(served).values()],
        "skipped_tasks": [t for t in probe_paths if t not in tasks],
        "groups": [res["info"] for res in results], "peft_mixed_batch": PEFT_MIXED_BATCH,
        "memory": memory_summary(memory, {res["info"]["group"]: res["base_bytes"] for res in results})
        if not memory.empty else {},
        "checks": checks,
    }
    io.write_csv(outputs["table"], table)
    io.write_csv(outputs["memory"], memory)
    io.write_json(outputs["summary"], summary)
    return summary
