"""The price/hardware table (config/prices.yaml), the profiles' machines and concurrency (read by
the adapter of the profile's executor, ftdrift.executors), and the throughput figure (published
peak x assumed MFU, or a bench/gpu_mfu.py measurement)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ftdrift import executors, profiles
from ftdrift.executors.base import HardwareProfile
from ftdrift.study.resources import ASSUMED_MFU

GPU_RULES = ("finetune", "base_representations", "validate_checkpoint", "baselines", "forgetting", "deployment")
_PRICE_KEYS = ("as_of", "machines", "gpus", "cpu", "job_overhead_minutes", "cpu_job_minutes", "write_mib_per_s")


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
    table.setdefault("mfu", ASSUMED_MFU)
    table["path"] = str(path)
    return table


def read_profile(name: str, config: dict, cores: int | None = None) -> HardwareProfile:
    """Machines and concurrency of profiles/<name>/profile.yaml (or a path to a profile folder), as
    the adapter of its executor reads them (ftdrift.executors; no `executor:` key: local).

    The file is parsed as plain YAML: its yte expressions (`?...`) are read as strings and only
    the few needed are interpreted, so no environment variable has to be set. `config` is the
    resolved study config (resources.gpus_per_finetune decides whether jobs use GPUs). `cores`:
    the local executor's cores (default: all). EstimateError for a missing profile or an executor
    without an adapter.
    """
    folder = Path(name) if "/" in name else profiles.PROFILES_DIR / name
    path = folder / "profile.yaml"
    if not path.is_file():
        raise EstimateError(f"profile '{name}': {path} not found (known: {', '.join(profiles.profile_executors())})")
    raw = yaml.safe_load(path.read_text()) or {}
    executor = str(raw.get("executor") or profiles.LOCAL)
    adapter = executors.get(executor)
    if adapter is None:  # priced as some other executor, the bill would be wrong without a word
        raise EstimateError(f"profile '{name}': executor '{executor}' has no adapter in ftdrift.executors "
                            f"(known: {', '.join(executors.ADAPTERS)})")
    return adapter.hardware(raw, folder.name, config, cores)


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
