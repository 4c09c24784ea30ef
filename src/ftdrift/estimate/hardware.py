"""The price/hardware table (config/prices.yaml), the profiles' machines and concurrency, and the
throughput figure (published peak x assumed MFU, or a bench/gpu_mfu.py measurement)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftdrift.study.config import PACKAGE_ROOT

GPU_RULES = ("finetune", "base_representations", "validate_checkpoint", "baselines", "forgetting", "deployment")
PROFILES = ("default", "slurm", "gcp-gpu")
_PRICE_KEYS = ("as_of", "machines", "gpus", "mfu", "cpu", "job_overhead_minutes", "cpu_job_minutes",
               "write_mib_per_s")


class EstimateError(ValueError):
    """Input the estimate cannot use; the message names the file and key."""


def load_prices(path: str | os.PathLike) -> dict:
    """The price table (see config/prices.yaml for its keys); EstimateError naming a missing key."""
    path = Path(path)
    try:
        table = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EstimateError(f"price table {path}: file not found (pass --prices PATH)") from None
    if not isinstance(table, dict):
        raise EstimateError(f"price table {path}: not a mapping")
    missing = [key for key in _PRICE_KEYS if key not in table]
    if missing:
        raise EstimateError(f"price table {path}: missing keys {missing}")
    for name, machine in table["machines"].items():
        for key in ("on_demand", "spot", "gpus"):
            if key not in machine:
                raise EstimateError(f"price table {path}: key 'machines.{name}.{key}' missing")
        if machine.get("gpu") and machine["gpu"] not in table["gpus"]:
            raise EstimateError(f"price table {path}: machines.{name}.gpu '{machine['gpu']}' not in 'gpus'")
    table["path"] = str(path)
    return table


@dataclass
class Profile:
    """What the estimate needs of a Snakemake profile: machines per rule and how many jobs run at once."""

    name: str
    jobs: int  # jobs at once (the profile's `jobs`, or local cores)
    gpu_slots: int  # GPU jobs at once
    machines: dict[str, str] = field(default_factory=dict)  # rule -> machine type (gcp-gpu only)
    default_machine: str | None = None
    spot_rules: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def machine(self, rule: str) -> str | None:
        return self.machines.get(rule, self.default_machine)


def _env_int(expression, default: int) -> tuple[int, str]:
    """A yte expression such as ?int(env("FTDRIFT_GCP_MAX_GPUS", default="8")) read without
    rendering the profile (which needs the cloud settings in the environment)."""
    if isinstance(expression, int):
        return expression, "profile"
    text = str(expression)
    name = re.search(r'env\("([A-Z0-9_]+)"', text)
    if name and os.environ.get(name.group(1), "").strip().isdigit():
        return int(os.environ[name.group(1)]), f"${name.group(1)}"
    fallback = re.search(r'default="?(\d+)', text)
    return (int(fallback.group(1)), f"{name.group(1) if name else 'profile'} default") if fallback else (default, "")


def read_profile(name: str, config: dict, cores: int | None = None) -> Profile:
    """Machines and concurrency of profiles/<name>/profile.yaml (or a path to a profile folder).

    The file is parsed as plain YAML: its yte expressions (`?...`) are read as strings and only
    the few needed are interpreted, so no environment variable has to be set. `config` is the
    resolved study config (resources.gpus_per_finetune decides whether jobs use GPUs).
    """
    folder = Path(name) if "/" in name else PACKAGE_ROOT / "profiles" / name
    path = folder / "profile.yaml"
    if not path.is_file():
        raise EstimateError(f"profile '{name}': {path} not found (known: {', '.join(PROFILES)})")
    raw = yaml.safe_load(path.read_text()) or {}
    label = folder.name
    uses_gpu = config["resources"]["gpus_per_finetune"] > 0
    if label == "gcp-gpu" or raw.get("executor") == "googlebatch":
        jobs = int(raw.get("jobs", 50))
        gpus, source = _env_int(raw.get("resources", {}).get("gpu", 8), 8)
        machines = {rule: spec["googlebatch_machine_type"] for rule, spec in raw.get("set-resources", {}).items()
                    if isinstance(spec, dict) and "googlebatch_machine_type" in spec}
        spot_block = next((v for k, v in raw.items() if str(k).startswith("?if spot")), {}) or {}
        spot_rules = tuple(spot_block.get("preemptible-rules", ()))
        spot_off = os.environ.get("FTDRIFT_GCP_SPOT", "1") in ("0", "false", "no")
        notes = [f"GPUs at once: {gpus} ({source}); jobs at once: {jobs}"]
        if spot_off:
            notes.append("FTDRIFT_GCP_SPOT=0: the profile would run on-demand; both columns are shown anyway")
        return Profile(label, jobs, gpus, machines, raw.get("googlebatch-machine-type", "e2-standard-4"),
                       spot_rules, notes)
    if label == "slurm" or raw.get("executor") == "slurm":
        jobs = int(raw.get("jobs", 100))
        return Profile(label, jobs, jobs, notes=[f"jobs at once: {jobs} (profile `jobs`; GPUs assumed available "
                                                 "for each GPU job up to that)"])
    cores = cores or os.cpu_count() or 1
    threads = config["resources"]["finetune_threads"]
    slots = max(1, cores // threads)
    if uses_gpu:
        return Profile(label, slots, 1, notes=["local: 1 GPU, jobs run one at a time on it"])
    return Profile(label, slots, slots,
                   notes=[f"local: {cores} cores / {threads} threads per job = {slots} jobs at once"])


@dataclass
class Device:
    """Throughput of one kind of device for the FLOP model (TFLOP/s), or a measured rate."""

    name: str  # a100, l4, ... or 'cpu'
    peak_bf16: float | None  # TFLOP/s, None on CPU
    peak_fp32: float  # TFLOP/s
    mfu: float
    source: str
    measured: dict | None = None  # read_benchmark's: training tokens/s per training mode, forward tokens/s
    hbm_gb_s: float | None = None  # memory bandwidth, GB/s (None: no bandwidth floor)

    def tflops(self, precision: str) -> float:
        """Effective TFLOP/s in `precision` ('bf16' / 'fp16' use the tensor-core peak, 'fp32' the plain one)."""
        peak = self.peak_bf16 if precision in ("bf16", "fp16") and self.peak_bf16 else self.peak_fp32
        return peak * self.mfu


def device(prices: dict, gpu: str | None, threads: int = 1) -> Device:
    """The device of a job: a GPU of the price table, or `threads` CPU cores (gpu None)."""
    if gpu is None:
        cpu = prices["cpu"]
        return Device("cpu", None, cpu["fp32_tflops_per_core"] * threads, cpu["mfu"],
                      f"CPU: {threads} core(s) x {cpu['fp32_tflops_per_core']:g} TFLOP/s fp32 (AVX-512 FMA) x MFU "
                      f"{cpu['mfu']:g} ({prices['path']})")
    # 'nvidia-tesla-a100', 'a100_80g', 'h100-80gb' -> the model name; an exact match, so that an
    # L40S is not priced as an L4
    key = re.split(r"[-_ ]", gpu.lower().replace("nvidia-", "").replace("tesla-", ""))[0]
    if key not in prices["gpus"]:
        raise EstimateError(f"GPU '{gpu}' (config resources.gpu_model or the profile's machine) is not in the "
                            f"price table's 'gpus' ({sorted(prices['gpus'])}); add its peak TFLOP/s")
    spec = prices["gpus"][key]
    return Device(key, spec["bf16"], spec["fp32"], prices["mfu"],
                  f"{key.upper()} peak {spec['bf16']:g} TFLOP/s bf16 dense ({spec['source']}) x assumed MFU "
                  f"{prices['mfu']:g}; passes no faster than weight traffic at {spec.get('hbm_gb_s', '-')} GB/s",
                  hbm_gb_s=spec.get("hbm_gb_s"))


def benchmarked_methods() -> dict:
    """{name: Method} of the methods bench/gpu_mfu.py measures: the default config's (config/schema.yaml
    `methods` default), by the names its result's runs carry."""
    from ftdrift.study import methods
    from ftdrift.study.config import load_schema

    return methods.from_config({"methods": load_schema("schema.yaml")["properties"]["methods"]["default"]})


def read_benchmark(path: str | os.PathLike) -> dict:
    """Measured training throughput from bench/gpu_mfu.py's JSON (bench/out/gpu.json).

    Returns {'rates': {training mode: tokens/s}, 'methods': {training mode: the benchmarked Method},
    'forward': tokens/s (3x the full fine-tuning rate: 2N of 6N), 'device', 'seq', 'path', 'mfu',
    'params', 'fallback_mode': the full fine-tuning mode, whose FLOP rate a mode without a run of its
    own gets} from its `amp` runs (what the study's Trainer runs: fp32 master weights, bf16 autocast). EstimateError if
    the file holds no full fine-tuning run (e.g. `skipped` on a machine without CUDA).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EstimateError(f"--throughput-json {path}: file not found (bench/gpu_mfu.py writes bench/out/gpu.json)") \
            from None
    if str(data.get("device", "")).lower() == "cpu":
        raise EstimateError(f"--throughput-json {path}: a CPU smoke run (--tiny), not a GPU measurement")
    known = benchmarked_methods()
    runs = {known[r["method"]].training_mode: (known[r["method"]], r) for r in data.get("runs", [])
            if r.get("precision") == "amp" and r.get("method") in known}
    full = next((run for method, run in runs.values() if method.is_full), None)
    if full is None:
        raise EstimateError(f"--throughput-json {path}: no 'amp' full fine-tuning run in 'runs' "
                            f"({data.get('skipped', 'not a bench/gpu_mfu.py result')})")
    full_method = next(method for method, run in runs.values() if method.is_full)
    adapter = next(((m, r) for m, r in runs.values() if not m.is_full), None)
    rates = {full_method.training_mode: full["tokens_per_s"]}
    chosen = {full_method.training_mode: full_method}
    if adapter is not None:
        rates[adapter[0].training_mode] = adapter[1]["tokens_per_s"]
        chosen[adapter[0].training_mode] = adapter[0]
    return {"rates": rates, "methods": chosen, "forward": 3 * full["tokens_per_s"],
            "device": data.get("device", "?"), "seq": full.get("seq"), "path": str(path),
            "mfu": full.get("mfu"), "params": full.get("params_total"), "fallback_mode": full_method.training_mode}
