"""The deployment benchmark's cases (see ftdrift.analysis.deployment for what each row means): one
task-model group's models loaded in both layouts, then timed per task, mixed across tasks, and
while adapters are switched, loaded and unloaded."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel

from ftdrift.analysis import deployment_measure as measure
from ftdrift.analysis.checkpoints import exact_float32
from ftdrift.analysis.deployment_measure import (
    cycling,
    max_diff,
    mixed_batches,
    output_tensor,
    probe_batches,
    run,
    split_by_task,
)
from ftdrift.modeling import models

MIN_OP_SAMPLES = 3  # timeit(1) samples of load_adapter / delete_adapter
CHECK_EXAMPLES = 8  # probe examples per task the output checks compare on (float32, one batch)


@dataclass(frozen=True)
class Chosen:
    """The run served for a task × method: the chosen setting's lowest seed."""

    task: str
    method: str
    lr: str
    batch_size: int
    seed: int
    run: str  # RUN_PATTERN path
    model_dir: str
    val_main: float | None


@dataclass(frozen=True)
class Methods:
    """The two methods served: `full` trains every weight (a whole model per task), `adapter` is
    served as adapters on one base model (ftdrift.analysis.deployment.served_methods)."""

    full: str
    adapter: str

    def variants(self) -> tuple[str, str, str]:
        """The inference variants: the full model, the unmerged and the merged adapter."""
        return self.full, f"{self.adapter}_unmerged", f"{self.adapter}_merged"


@dataclass(frozen=True)
class Group:
    """Tasks sharing one task-model class (auto class and label count): one base model can hold their adapters."""

    name: str
    kind: str
    num_labels: int | None
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class Bench:
    """How cases are timed: where, with how many threads, for how long (`deployment.min_run_time`)."""

    device: torch.device
    min_run_time: float
    threads: int

    def time(self, fn, batch_size: int | None = None) -> dict:
        """summarise() of per-call samples of `fn()` (measure.per_call)."""
        return measure.summarise(measure.per_call(fn, min_run_time=self.min_run_time, threads=self.threads),
                                 batch_size)

    def time_single(self, fn, min_samples: int = MIN_OP_SAMPLES, samples: int | None = None) -> dict:
        """summarise() of `samples` (or ≥ min_samples) timeit(1) samples: 3 calls each, 1 timed."""
        return measure.summarise(measure.single_calls(fn, min_run_time=self.min_run_time, threads=self.threads,
                                                      min_samples=min_samples, samples=samples))

    def time_blocked(self, fn) -> dict:
        return measure.summarise(measure.blocked(fn, min_run_time=self.min_run_time, threads=self.threads))


@dataclass
class Served:
    """One group's models, loaded: the base holding every adapter of the adapter method (adapter name
    = task) and the full method's models (`methods`: the two method names)."""

    group: Group
    methods: Methods
    adapters: PeftModel
    full: dict[str, torch.nn.Module]
    adapter_runs: dict[str, Chosen]
    full_runs: dict[str, Chosen]
    memory: list[dict]  # rows of deployment_memory.csv
    base_bytes: int  # parameter and buffer bytes of the base task model alone


def load_served(group: Group, chosen: Mapping, methods: Methods, model_cfg: Mapping, tokenizer,
                device: torch.device) -> Served:
    """Load both layouts of `group`, measuring what each adds to resident memory (adapters first),
    weights paged in (measure.page_in)."""
    adapter_runs = {t: chosen[(t, methods.adapter)] for t in group.tasks}
    full_runs = {t: chosen[(t, methods.full)] for t in group.tasks}
    first, *rest = group.tasks
    # a throwaway load of each kind first: lazy imports and first-use allocations stay out of the deltas
    PeftModel.from_pretrained(models.load_model(dict(model_cfg), group.kind, group.num_labels, tokenizer),
                              adapter_runs[first].model_dir).to(device)
    models.load_fine_tuned(full_runs[first].model_dir, group.kind).to(device)
    with measure.resident(device) as adapters_added:
        base = models.load_model(dict(model_cfg), group.kind, group.num_labels, tokenizer)
        base_bytes = sum(measure.tensor_bytes(base).values())
        adapters = PeftModel.from_pretrained(base, adapter_runs[first].model_dir, adapter_name=first)
        for task in rest:
            adapters.load_adapter(adapter_runs[task].model_dir, adapter_name=task)
        adapters.to(device).eval()
        measure.page_in([adapters])
    with measure.resident(device) as full_added:
        full = {t: models.load_fine_tuned(full_runs[t].model_dir, group.kind).to(device).eval() for t in group.tasks}
        measure.page_in(list(full.values()))
    tasks = "+".join(group.tasks)
    memory = []
    for layout, modules, added in (("full_models", list(full.values()), full_added),
                                   ("base_plus_adapters", [adapters], adapters_added)):
        counts = [measure.tensor_bytes(m) for m in modules]
        param, buffer = sum(c["param_bytes"] for c in counts), sum(c["buffer_bytes"] for c in counts)
        memory.append({"group": group.name, "tasks": tasks, "n_tasks": len(group.tasks), "layout": layout,
                       "param_bytes": param, "buffer_bytes": buffer, "computed_bytes": param + buffer,
                       "measured_bytes": added.bytes, "measured_as": added.how, "device": device.type})
    return Served(group, methods, adapters, full, adapter_runs, full_runs, memory, base_bytes)


def row(section: str, served: Served, task: str, variant: str, batch_size: int | None, runs: Sequence[Chosen],
        stats: Mapping, precision: str, device: torch.device, supported: bool = True, note: str = "") -> dict:
    return {"section": section, "group": served.group.name, "task": task, "variant": variant,
            "batch_size": batch_size, "n_tasks": len({c.task for c in runs}), "runs": " ".join(c.run for c in runs),
            "supported": supported, **stats, "device": device.type, "precision": precision, "note": note}


def inference_rows(served: Served, features: Mapping, tokenizer, batch_sizes: Sequence[int], bench: Bench,
                   precision: Mapping[str, str]) -> tuple[list[dict], dict]:
    """Per task: the full model, the unmerged and the merged adapter (variants `Methods.variants`) at
    each batch size; and max |merged − unmerged|."""
    rows, merge_diff, device = [], {}, bench.device
    for task in served.group.tasks:
        # the group's model with this task's adapter active: inactive adapters cost nothing in a forward
        served.adapters.set_adapter(task, inference_mode=True)
        merged = copy.deepcopy(served.adapters).merge_and_unload().eval()
        check = features[task][:CHECK_EXAMPLES]
        merge_diff[task] = max_diff(served.adapters, merged, probe_batches(check, tokenizer, len(check), device))
        full, unmerged, merged_name = served.methods.variants()
        variants = {full: (served.full[task], served.full_runs[task]),
                    unmerged: (served.adapters, served.adapter_runs[task]),
                    merged_name: (merged, served.adapter_runs[task])}
        for batch_size in batch_sizes:
            batches = probe_batches(features[task], tokenizer, batch_size, device)
            for variant, (model, served_run) in variants.items():
                stats = bench.time(cycling(batches, lambda b, m=model, p=precision[task]: run(m, b, p, device)),
                                   batch_size)
                rows.append(row("inference", served, task, variant, batch_size, [served_run], stats, precision[task],
                                device))
        del merged
    return rows, merge_diff


def mixed_check(adapters: PeftModel, batch: dict, owners: Sequence[str]) -> float:
    """Max |mixed-batch output − the owner adapter's output on the same batch|, row by row, float32.
    Raises what peft raises when it cannot mix (TypeError for an unsupported head)."""
    with torch.inference_mode(), exact_float32():
        mixed = output_tensor(adapters(**batch, adapter_names=list(owners)))
        diffs = []
        for task in dict.fromkeys(owners):
            adapters.set_adapter(task, inference_mode=True)
            rows = [i for i, owner in enumerate(owners) if owner == task]
            diffs.append(float((mixed[rows] - output_tensor(adapters(**batch))[rows]).abs().max()))
    return max(diffs)


def multi_task_rows(served: Served, features: Mapping, tokenizer, batch_sizes: Sequence[int], bench: Bench,
                    precision: str) -> tuple[list[dict], dict]:
    """Batches mixing the group's tasks served three ways (module doc of ftdrift.analysis.deployment),
    at each batch size; and {'mixed_batch_supported', 'mixed_batch_max_abs_diff', 'note'}."""
    tasks, device, rows = served.group.tasks, bench.device, []
    ad, label = served.adapters, "+".join(served.group.tasks)
    ((batch, owners),) = mixed_batches({t: features[t][:CHECK_EXAMPLES] for t in tasks}, tokenizer,
                                       CHECK_EXAMPLES * len(tasks), device)
    try:
        info = {"mixed_batch_supported": True, "mixed_batch_max_abs_diff": mixed_check(ad, batch, owners), "note": ""}
    except (TypeError, ValueError) as err:  # peft's refusal, kept as the answer
        info = {"mixed_batch_supported": False, "mixed_batch_max_abs_diff": None, "note": f"peft: {err}"}

    def full_models(item):
        for task, sub in item[2].items():
            run(served.full[task], sub, precision, device)

    def adapter_per_task(item):
        for task, sub in item[2].items():
            ad.set_adapter(task, inference_mode=True)
            run(ad, sub, precision, device)

    def mixed_adapter_batch(item):
        run(ad, item[0], precision, device, adapter_names=item[1])

    for batch_size in batch_sizes:
        items = [(b, o, split_by_task(b, o)) for b, o in mixed_batches(
            {t: features[t] for t in tasks}, tokenizer, batch_size, device)]
        note = f"{len(items[0][2])} of {len(tasks)} tasks in a batch" * (batch_size < len(tasks))
        for variant in (full_models, adapter_per_task, mixed_adapter_batch):
            name = variant.__name__
            runs = [(served.full_runs if name == "full_models" else served.adapter_runs)[t] for t in tasks]
            if name == "mixed_adapter_batch" and not info["mixed_batch_supported"]:
                rows.append(row("multi_task", served, label, name, batch_size, runs, {}, precision, device,
                                supported=False, note=info["note"]))
                continue
            rows.append(row("multi_task", served, label, name, batch_size, runs,
                            bench.time(cycling(items, variant), batch_size), precision, device, note=note))
    return rows, info


def adapter_op_rows(served: Served, bench: Bench, precision: str) -> list[dict]:
    """set_adapter (cycling through the group's adapters), then per task load_task_rows."""
    ad, rows, group = served.adapters, [], served.group
    if len(group.tasks) > 1:
        cycle = itertools.cycle(group.tasks)
        stats = bench.time_blocked(lambda: ad.set_adapter(next(cycle), inference_mode=True))
        rows.append(row("adapter_ops", served, "+".join(group.tasks), "set_adapter", None,
                        list(served.adapter_runs.values()), stats, precision, bench.device))
    for task in group.tasks:
        rows += load_task_rows(served, bench, task, precision)
    return rows


def load_task_rows(served: Served, bench: Bench, task: str, precision: str) -> list[dict]:
    """load_adapter / delete_adapter of the task's adapter into the group's model (under fresh
    names), and load_full_model: from_pretrained, to the device, every weight read once (on CPU the
    weights are memory-mapped: unread, the first forward would pay for loading them); files come
    from the page cache (warm-up loads read them first)."""
    ad, device, kind = served.adapters, bench.device, served.group.kind
    adapter_run, full_run = served.adapter_runs[task], served.full_runs[task]
    names, loaded = (f"{task}-load{i}" for i in itertools.count()), []

    def load():
        loaded.append(next(names))
        ad.load_adapter(adapter_run.model_dir, adapter_name=loaded[-1])

    load_stats = bench.time_single(load)
    # timeit(1) makes 3 calls per sample: as many samples as for loading delete every adapter loaded
    delete_stats = bench.time_single(lambda: ad.delete_adapter(loaded.pop()), samples=load_stats["samples"])
    full_stats = bench.time(lambda: measure.page_in([models.load_fine_tuned(full_run.model_dir, kind).to(device)]))
    return [row("adapter_ops", served, task, "load_adapter", None, [adapter_run], load_stats, precision, device),
            row("adapter_ops", served, task, "delete_adapter", None, [adapter_run], delete_stats, precision, device),
            row("adapter_ops", served, task, "load_full_model", None, [full_run], full_stats, precision, device)]
