"""Benchmark 6 (GPU only): training throughput and MFU at Sheared-LLaMA-1.3B's shape.

A randomly initialised LlamaForSequenceClassification with the study model's shape (24 layers,
hidden 2048, 16 heads, FFN 5504, vocab 32000; no download), sequence length 512 with every
position a real token (the worst case of the study's classification max_length), SDPA attention,
micro-batch 8 (the study's max_micro_batch), full fine-tuning and LoRA (r=8, alpha=16, dropout
0.05, q_proj/v_proj: the study's settings).

Precision `amp` (default) is what ftdrift's Trainer runs with `bf16=True`: fp32 master weights,
bf16 autocast, AdamW (fused) in fp32, gradient clipping at 1.0. `bf16` keeps the weights
themselves in bf16 (a lower bound on step time, not what the study runs). `both` runs both.

MFU = model FLOPs per second / peak dense bf16 FLOPs of the card (H100 SXM and H200: 989 TFLOPs;
H100 PCIe: 756; H100 NVL: 835; override with --peak-tflops). Model FLOPs per token (PaLM
convention, N = non-embedding parameters, L layers, d hidden, s sequence length):
full FT 6N + 12 L d s; LoRA 4N + 12 L d s (no weight gradients for the frozen matrices; the
adapters' own FLOPs are negligible).

Goals (issue): >= 40 % MFU for full fine-tuning on an H100; a LoRA step <= 0.7x a full step.

`--tiny` runs a 2-layer toy shape on whatever device there is (CPU included): a smoke test of
the script, not a benchmark.

`--profile N` runs N more steps of each configuration under torch.profiler after the timed steps
(not counted in step_s) and adds the top operators by self device time (CUDA; CPU time on a
machine without one) to each run's record as `profile_top`, plus a printed table: where the time
goes when the MFU falls short. `--out FILE` writes the JSON there instead of bench/out/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import OUT, load, write_json

SHAPE = {"num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 16,
         "intermediate_size": 5504, "vocab_size": 32000, "max_position_embeddings": 4096}
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 512}
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if key in name:
            return value
    return None


def build(shape: dict, method: str, precision: str, attn: str, device):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(**shape, num_labels=2, pad_token_id=0, attn_implementation=attn)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.device(device):
        model = LlamaForSequenceClassification(config).to(dtype)
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                 lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    model.train()
    return model, n_total, n_embed


def profile_steps(step, steps: int, device, row_limit: int = 15) -> tuple[list[dict], str]:
    """Run `step` `steps` times under torch.profiler; returns (top operators by self device time,
    each {name, calls, self_ms_per_step, share}, and profiler's own table as text).

    Device time is CUDA kernel time attributed to the operator that launched it; on a CPU-only
    machine CPU self time stands in. Shares are of the summed self time over all operators.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()

    def self_us(event) -> float:
        if device.type != "cuda":
            return float(event.self_cpu_time_total)
        # torch >= 2.4 names it self_device_time_total; older releases self_cuda_time_total
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))

    total = sum(self_us(e) for e in events) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:row_limit]
    top = [{"name": e.key, "calls": int(e.count), "self_ms_per_step": self_us(e) / 1e3 / steps,
            "share": self_us(e) / total} for e in ranked]
    sort_key = "self_cpu_time_total" if device.type != "cuda" else "self_cuda_time_total"
    try:
        table = events.table(sort_by=sort_key, row_limit=row_limit)
    except (KeyError, AttributeError, ValueError):  # sort key renamed in a later torch
        table = events.table(sort_by="self_device_time_total", row_limit=row_limit)
    return top, table


def bench(shape: dict, method: str, precision: str, batch: int, seq: int, steps: int, warmup: int,
          attn: str, device, profile: int = 0) -> dict:
    import torch

    model, n_total, n_embed = build(shape, method, precision, attn, device)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {"input_ids": torch.randint(1, shape["vocab_size"], (batch, seq), generator=gen).to(device),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
              "labels": torch.randint(0, 2, (batch,), generator=gen).to(device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "amp")

    def step():
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    n = n_total - n_embed  # non-embedding parameters (matmul FLOPs)
    L, d = shape["num_hidden_layers"], shape["hidden_size"]
    per_token = (6 * n if method == "full" else 4 * n) + 12 * L * d * seq
    tokens = batch * seq
    out = {"method": method, "precision": precision, "attn": attn, "micro_batch": batch, "seq": seq,
           "steps": steps, "step_s": seconds, "tokens_per_s": tokens / seconds,
           "examples_per_s": batch / seconds, "model_tflops_per_s": per_token * tokens / seconds / 1e12,
           "params_total": n_total, "params_non_embedding": n,
           "params_trainable": sum(p.numel() for p in params)}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if profile:
        out["profile_top"], out["profile_table"] = profile_steps(step, profile, device)
    model = optimizer = None  # noqa: F841 - frees the cells the step closure holds, before empty_cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run(precision: str = "amp", batch: int = 8, seq: int = 512, steps: int = 10, warmup: int = 3,
        attn: str = "sdpa", tiny: bool = False, peak: float | None = None, profile: int = 0,
        methods: tuple[str, ...] = ("full", "lora")) -> dict:
    """Both methods (or `methods`) in each precision; see the module doc. `profile`: steps to run
    under torch.profiler per configuration after the timed ones (0 = none)."""
    import torch

    if not torch.cuda.is_available() and not tiny:
        return {"skipped": "no CUDA device on this machine; run `python bench/gpu_mfu.py` on a GPU"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = peak or (peak_tflops(name) if device.type == "cuda" else None)
    shape = TINY if tiny else SHAPE
    if tiny:
        batch, seq, steps, warmup = 2, 32, 2, 1
    result = {"device": name, "peak_bf16_tflops": peak, "shape": shape, "torch": torch.__version__,
              "load_avg_before": load(), "runs": []}
    for prec in (("amp", "bf16") if precision == "both" else (precision,)):
        by_method = {}
        for method in methods:
            r = bench(shape, method, prec, batch, seq, steps, warmup, attn, device, profile)
            if peak:
                r["mfu"] = r["model_tflops_per_s"] / peak
            result["runs"].append(r)
            by_method[method] = r
        if {"full", "lora"} <= set(by_method):
            result[f"lora_over_full_step_{prec}"] = by_method["lora"]["step_s"] / by_method["full"]["step_s"]
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=["amp", "bf16", "both"], default="both")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--peak-tflops", type=float)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile N extra steps per configuration (torch.profiler); prints the top operators")
    p.add_argument("--methods", default="full,lora", help="comma-separated subset of full,lora")
    p.add_argument("--out", type=Path, help="JSON output (default bench/out/gpu.json, gpu_tiny.json with --tiny)")
    a = p.parse_args()
    methods = tuple(m for m in a.methods.split(",") if m)
    if not methods or set(methods) - {"full", "lora"}:
        p.error(f"--methods: expected a comma-separated subset of full,lora, got {a.methods!r}")
    res = run(a.precision, a.batch, a.seq, a.steps, a.warmup, a.attn, a.tiny, a.peak_tflops, a.profile, methods)
    write_json(a.out or OUT / ("gpu_tiny.json" if a.tiny else "gpu.json"), res)
    tables = [(f"{r['method']} {r['precision']}", r.pop("profile_table")) for r in res.get("runs", [])
              if "profile_table" in r]
    compact = {**res, "runs": [{k: v for k, v in r.items() if k != "profile_top"} for r in res.get("runs", [])]}
    print(json.dumps(compact, indent=2))
    for label, table in tables:
        print(f"\n== torch.profiler: {label}, top operators by self device time ==\n{table}")
