"""The estimate put together: config + profile + price table + token counts + planned jobs -> Estimate."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ftdrift.estimate import costs, hardware, tokens
from ftdrift.estimate.costs import ModelShape, RuleCost, Throughput
from ftdrift.executors.base import HardwareProfile
from ftdrift.study import families, resources, storage
from ftdrift.study import grid as ftgrid
from ftdrift.study import methods as ftmethods
from ftdrift.study.config import task_kind, task_settings

log = logging.getLogger("ftdrift.estimate")
NOMINAL_PARAMS = 1.35e9  # prices.yaml cpu_job_minutes are for this model size
DEFAULT_COMPARE_SUBSET = 1000  # dev examples per evaluation shown as the cure when the config has none


@dataclass
class Estimate:
    config_name: str
    profile: HardwareProfile
    prices: dict
    shape: ModelShape
    tokenizer: str
    notes: list[str]
    throughput_sources: dict[str, str]  # device -> where its figure comes from
    lengths: dict[str, tokens.TaskLengths]
    runs: list[costs.RunCost]
    rules: list[RuleCost]
    job_counts: dict[str, int]
    eval_subsets: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # task -> (configured, alt)
    precision: str = "bf16"
    methods: list[MethodSummary] = field(default_factory=list)  # the configured methods, in the config's order


@dataclass
class MethodSummary:
    """One method's cost on the study's model (resources.method_cost), over the study's tasks."""

    name: str
    description: str  # Method.describe()
    adapter_params: int  # the adapter's trainable parameters (largest over the tasks; 0: full fine-tuning)
    trainable_params: int  # with the task head (largest over the tasks)
    adapted: int  # matrices adapted
    flops_over_n: float  # training FLOPs per token / N (largest over the tasks)
    flops_per_pass: float  # DoRA's per-pass weight norm, FLOPs
    gpu_mem_gb: float  # largest fine-tuning job's GPU memory (resources.finetune_gpu_mem_gb)
    notes: tuple[str, ...] = ()


def _pass(lengths: list[int], batch_size: int, sort: bool = False) -> tuple[int, int]:
    """(padded tokens, batches) of one pass over a split."""
    return tokens.eval_tokens(lengths, batch_size, sort), tokens.batches(len(lengths), batch_size)


def model_shape(config: dict) -> ModelShape:
    """N, hidden size, blocks and the dimensions the adapters' sizes need: counted from the model
    when its config can be read without the network (the embedded model, a local folder, a hub
    cache), else config resources.model_shape (resources.dims_of)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from ftdrift.modeling.models import resolve_model_path

    name = config["model"]["name_or_path"]
    try:
        path = resolve_model_path(name)
        model_config = AutoConfig.from_pretrained(path, revision=config["model"].get("revision"),
                                                  local_files_only=True)
        with torch.device("meta"):
            model = AutoModel.from_config(model_config)
        # non-embedding parameters: a token embedding is a lookup, not a matmul (half of MiniLM's 23 M)
        total = sum(p.numel() for p in model.parameters())
        params = total - model.get_input_embeddings().weight.numel()
        heads = model_config.num_attention_heads
        head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
        dims = resources.ModelDims(resources.layout_of(config), model_config.hidden_size,
                                   model_config.intermediate_size, model_config.num_hidden_layers,
                                   head_dim * (getattr(model_config, "num_key_value_heads", None) or heads))
        return ModelShape(float(params), model_config.hidden_size, model_config.num_hidden_layers,
                          f"counted from {name}, token embeddings left out", float(total), dims)
    except Exception:  # not readable offline: the config's planning figures
        shape = config["resources"]["model_shape"]
        return ModelShape(shape["params_billion"] * 1e9, shape["hidden_size"], shape["num_layers"],
                          "config resources.model_shape", dims=resources.dims_of(config))


def _gpu_of_rule(rule: str, config: dict, profile: HardwareProfile, prices: dict) -> tuple[str | None, int, str]:
    """(GPU name or None for CPU, GPUs per job, machine label) of a rule's jobs under the profile."""
    res = config["resources"]
    if profile.machines or profile.default_machine:  # gcp-gpu: the machine decides
        machine = profile.machine(rule)
        spec = prices["machines"].get(machine)
        if spec is None:
            raise hardware.EstimateError(f"machine type '{machine}' of profile {profile.name} (rule {rule}) is not "
                                         f"in the price table {prices['path']} 'machines'")
        return spec.get("gpu"), int(spec["gpus"]), machine
    if rule in hardware.GPU_RULES and res["gpus_per_finetune"] > 0:
        gpus = res["gpus_per_finetune"] if rule == "finetune" else 1
        gpu = res["gpu_model"] or "a100"
        return gpu, gpus, f"{gpus}x {gpu}"
    return None, 0, "CPU"


def estimate(config: dict, profile: HardwareProfile, prices: dict, *, config_name: str,
             job_counts: dict[str, int], tokenizer_override: str | None = None, throughput_json: str | None = None,
             cache_dir: Path | None = None, workdir: Path = Path("."),
             compare_eval_subset: int = DEFAULT_COMPARE_SUBSET,
             shape: ModelShape | None = None) -> Estimate:
    """Costs per rule and per fine-tuning run of the resolved `config` under `profile`.

    `job_counts`: jobs per rule Snakemake plans (ftdrift.estimate.dag.job_counts). Runs already
    finished (metrics.json in `workdir`/results) are left out of the finetune rule. Raises
    EstimateError / DataError naming the file or key when an input cannot be used.
    """
    notes: list[str] = []
    shape = shape or model_shape(config)
    tokenizer, tokenizer_name, note = tokens.load_tokenizer(config["model"], tokenizer_override)
    if note:
        notes.append(note)
    lengths = {task: tokens.task_lengths(config, task, tokenizer, tokenizer_name, cache_dir, workdir)
               for task in config["tasks"]}
    measured = hardware.read_benchmark(throughput_json) if throughput_json else None
    threads = {"finetune": config["resources"]["finetune_threads"]}
    devices: dict[str, hardware.Device] = {}
    sources: dict[str, str] = {}

    def rule_device(rule: str):
        gpu, gpus, machine = _gpu_of_rule(rule, config, profile, prices)
        if gpu is None:
            cores = prices["machines"].get(machine, {}).get("vcpus") or threads.get(rule,
                                                                                    config["resources"]["analysis_threads"])
            dev = hardware.device(prices, None, cores)
        else:
            dev = hardware.device(prices, gpu)
            if measured and rule in ("finetune", "deployment") and (
                    profile.machine("finetune") == machine if profile.machines else True):
                dev.measured = measured
                rates = ", ".join(f"{rate:,.0f} tokens/s {measured['methods'][mode].name} ({mode})"
                                  for mode, rate in measured["rates"].items())
                dev.source = (f"measured by bench/gpu_mfu.py on {measured['device']} ({measured['path']}): "
                              f"{rates} at seq {measured['seq']}; another method of a mode in proportion to its "
                              f"FLOPs per token; forward = 3x the full fine-tuning rate")
        devices[rule] = dev
        sources[f"{dev.name}{' (measured)' if dev.measured else ''}"] = dev.source
        return dev, gpus, machine

    def precision_on(dev: hardware.Device, configured: str) -> str:
        # 'auto' = bf16 on GPUs that support it (all of the table's), else fp32 (ftdrift.core.precision)
        if configured == "auto":
            return "fp32" if dev.name == "cpu" else "bf16"
        return configured

    overhead_min = prices["job_overhead_minutes"]
    overhead = (overhead_min["gpu"] if profile.machines else overhead_min["local"]) * 60

    def cost(rule: str, seconds: list[float], disk: int = 0, formula: str = "", fp32_extra: float = 0.0,
             work: list[int] = ()) -> RuleCost:
        """`disk`: what the jobs leave; `work`: each job's disk while it runs (freed at its end)."""
        dev, gpus, machine = rule_device(rule)
        count = job_counts.get(rule, 0)
        if seconds and count != len(seconds):  # planned count differs (finished jobs): scale the mean
            disk = int(disk * count / len(seconds))
            seconds = [sum(seconds) / len(seconds)] * count
        spec = prices["machines"].get(machine) if profile.machines else None
        uses_gpu = gpus > 0
        slots = profile.gpu_slots if uses_gpu else profile.jobs
        disk += sum(sorted(work, reverse=True)[:min(slots, count)])  # at the peak: the largest jobs at once
        return RuleCost(rule, count, machine, gpus, seconds, disk, rule in profile.spot_rules,
                        spec["on_demand"] if spec else None, spec["spot"] if spec else None,
                        slots, formula, fp32_extra)

    # ---- finetune: per run, upper bound (no early stop)
    dev, _, _ = rule_device("finetune")
    precision = precision_on(dev, config["training"]["precision"])
    dims = shape.dims or resources.dims_of(config)
    study_methods = ftmethods.from_config(config)

    def method_cost(method: ftmethods.Method, kind: str, labels: int) -> resources.MethodCost:
        head = resources.head_params(shape.hidden, kind, labels)
        return resources.method_cost(method, dims, shape.params, shape.stored_params, kind, head)

    # a measured tokens/s is of the benchmarked method; others of its mode scale by FLOPs per token
    measured_flops = {mode: method_cost(m, "classification", 2).flops_per_token
                      for mode, m in (measured or {}).get("methods", {}).items()}
    throughput = Throughput(dev, shape.params, precision, measured_flops)
    all_runs = ftgrid.grid(config)
    done = set(r.path for r in storage.finished(all_runs, lambda path: (Path(workdir) / path).exists()))
    pending = [r for r in all_runs if r.path not in done] if job_counts.get("finetune", 0) < len(all_runs) else all_runs
    family = families.family(config["model"]["family"])
    runs, train_cache = [], {}
    eval_subsets = {}
    for run in pending:
        settings = task_settings(config, run.task)
        kind = task_kind(config["task_defs"][run.task])
        tl = lengths[run.task]
        training, reps = settings["training"], settings["representations"]
        key = (run.task, run.batch_size, run.seed)
        if key not in train_cache:
            train_cache[key] = tokens.train_tokens(tl.train, run.batch_size, training["max_micro_batch"],
                                                   training["epochs"], training["max_steps"], run.seed)
        configured = training.get("eval_subset")
        alt = None if configured else compare_eval_subset
        eval_subsets[run.task] = (configured, alt)
        seed, bs = settings["data"]["split_seed"], reps["batch_size"]
        # the Trainer's dev evaluation and predict_split batch by length (ftdrift.training.trainer.by_length)
        per_eval, per_eval_alt = (_pass(tokens.subset(tl.dev, size, seed), bs, sort=True) for size in (configured, alt))
        final = tuple(a + b for a, b in zip(_pass(tl.dev, bs, sort=True), _pass(tl.validation, bs, sort=True)))
        labels = len(config["task_defs"][run.task].get("labels", [])) or 2
        runs.append(costs.finetune_run(
            run=run, train=train_cache[key], dev=per_eval, dev_alt=per_eval_alt, final=final,
            probe=_pass(tl.probe, bs, sort=True), probe_size=len(tl.probe), settings=settings, shape=shape,
            cost=method_cost(study_methods[run.method], kind, labels), poolings=len(family.poolings),
            throughput=throughput, write_mib_per_s=prices["write_mib_per_s"], overhead_s=overhead))
    rules = [cost("finetune", [r.seconds for r in runs], sum(r.disk_bytes for r in runs),
                  "the method's FLOPs per token (6N full fine-tuning, 4N + 6P an adapter of P trainable "
                  "parameters, + DoRA's weight norm per pass) x padded train tokens + 2N x (dev evals + final "
                  "dev/validation + snapshots) + checkpoint writes + per-job overhead",
                  fp32_extra=sum(r.snapshot_fp32_s - r.snapshot_s for r in runs), work=[r.work_bytes for r in runs])]

    # ---- the other GPU rules: forward passes (2N per padded token) + per-job overhead
    def forward_s(rule: str, work: tuple[int, int], precision_: str | None = None) -> float:
        d = devices.get(rule) or rule_device(rule)[0]
        return Throughput(d, shape.params, precision_on(d, config["training"]["precision"])).forward_seconds(
            work[0], precision_, passes=work[1])

    def bs_of(task: str) -> int:
        return task_settings(config, task)["representations"]["batch_size"]

    def store_bytes(task: str) -> int:
        reps = task_settings(config, task)["representations"]
        return len(lengths[task].probe) * (shape.layers + 1) * shape.hidden * len(family.poolings) * \
            costs.BYTES[reps["dtype"]]

    rule_device("base_representations")
    base = {t: _pass(lengths[t].probe, bs_of(t), sort=True) for t in config["tasks"]}
    base_s = [forward_s("base_representations", base[t]) + overhead for t in config["tasks"]]
    base_fp32 = sum(forward_s("base_representations", base[t], "fp32") - forward_s("base_representations", base[t])
                    for t in config["tasks"])
    rules.append(cost("base_representations", base_s, sum(store_bytes(t) for t in config["tasks"]),
                      "2N x probe tokens (sorted batches) per task", fp32_extra=base_fp32))

    def val(task):
        return _pass(lengths[task].validation, bs_of(task), sort=True)

    rule_device("validate_checkpoint")
    rules.append(cost("validate_checkpoint",
                      [forward_s("validate_checkpoint", val(r.task))
                       + (0 if study_methods[r.method].is_full
                          else 2 * forward_s("validate_checkpoint", val(r.task), "fp32"))
                       + overhead for r in runs],
                      0, "2N x validation tokens; an adapter + 2 fp32 passes (unmerged vs merged, no TF32)"))

    rule_device("baselines")
    cap = config["baselines"]["max_train_examples"]
    base_jobs = []
    for t in config["tasks"]:
        tl = lengths[t]
        parts = [_pass(tl.train if cap is None else tl.train[:cap], bs_of(t)), _pass(tl.dev, bs_of(t)), val(t)]
        base_jobs.append(forward_s("baselines", tuple(map(sum, zip(*parts)))) + overhead)
    rules.append(cost("baselines", base_jobs, 0,
                      "2N x (train up to baselines.max_train_examples + dev + validation) tokens per task"))

    rule_device("forgetting")
    lm = config["forgetting"]
    lm_work = (lm["max_tokens"], -(-lm["max_tokens"] // (lm["window"] * lm["batch_size"]))) \
        if (lm["text_file"] and family.causal_lm) else (0, 0)
    rules.append(cost("forgetting", [forward_s("forgetting", tuple(map(sum, zip(
        lm_work, *(base[o] for o in config["tasks"] if o != r.task))))) + overhead for r in runs], 0,
                      "2N x the other tasks' probe tokens (+ forgetting.max_tokens of LM text) per run"))

    rule_device("deployment")
    dep = config["deployment"]
    cases = len(config["tasks"]) * len(dep["batch_sizes"]) * 4
    deployment_s = [cases * 2 * dep["min_run_time"] + overhead] if job_counts.get("deployment") else []
    rules.append(cost("deployment", deployment_s,
                      0, "tasks x deployment.batch_sizes x 4 cases x 2 x min_run_time (timed + warm-up)"))

    # ---- CPU rules: nominal minutes per job (no FLOP model)
    minutes = prices["cpu_job_minutes"]
    cpu_overhead = prices["job_overhead_minutes"]["cpu" if profile.machines else "local"] * 60
    for rule, count in job_counts.items():
        if rule in hardware.GPU_RULES or rule == "all":
            continue
        # nominal minutes are for a 1.35 B model; the weight SVDs and stores shrink with the model
        scale = min(1.0, shape.params / NOMINAL_PARAMS)
        per_job = minutes.get(rule, minutes["default"]) * 60 * scale + cpu_overhead
        rules.append(cost(rule, [per_job] * count, 0, f"{minutes.get(rule, minutes['default'])} min per job at 1.35 B "
                          "parameters (nominal), scaled with N"))
    if measured:
        notes.append(f"throughput of the fine-tuning machine measured: {measured['path']}")
        gpu = devices["finetune"].name
        if gpu.lower() not in str(measured["device"]).lower():
            notes.append(f"the benchmark ran on {measured['device']}, but the profile's fine-tuning machine has a "
                         f"{gpu.upper()}: its tokens/s are used as they are; measure on the machine you will rent")
        if measured.get("params") and abs(measured["params"] / shape.stored_params - 1) > 0.2:
            notes.append(f"the benchmark's model ({measured['params'] / 1e9:.2f} B parameters) is not the study's "
                         f"({shape.stored_params / 1e9:.2f} B): its tokens/s do not carry over; pass --throughput-json "
                         "of a matching run or none")
    summaries = [summarize(config, method, shape, dims) for method in study_methods.values()]
    notes += sorted({note for summary in summaries for note in summary.notes})
    return Estimate(config_name, profile, prices, shape, tokenizer_name, notes, sources, lengths, runs, rules,
                    job_counts, eval_subsets, precision, summaries)


def summarize(config: dict, method: ftmethods.Method, shape: ModelShape, dims) -> MethodSummary:
    """The method's cost over the study's tasks: the largest figures (the tasks differ in their head,
    BERT's pooler and the sequence length)."""
    found = []
    for task in config["tasks"]:
        task_def, settings = config["task_defs"][task], task_settings(config, task)
        kind = task_kind(task_def)
        head = resources.head_params(shape.hidden, kind, len(task_def.get("labels", [])) or 2)
        cost = resources.method_cost(method, dims, shape.params, shape.stored_params, kind, head)
        micro = resources.micro_batch_plan(max(config["grid"]["batch_sizes"]),
                                           settings["training"]["max_micro_batch"])["micro_batch"]
        found.append((cost, resources.finetune_gpu_mem_gb(cost, micro, settings["data"]["max_length"][kind], dims)))
    largest = max(found, key=lambda pair: pair[0].trainable)[0]
    return MethodSummary(method.name, method.describe(), largest.adapter, largest.trainable, len(largest.adapted),
                         max(c.flops_over(shape.params) for c, _ in found), max(c.flops_per_pass for c, _ in found),
                         max(mem for _, mem in found), largest.notes)
