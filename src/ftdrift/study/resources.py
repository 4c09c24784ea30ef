"""Cluster resources of each job, derived from the model and task rather than hard-coded.

Estimates are deliberately generous: an under-estimate kills a multi-hour job, an
over-estimate only costs queue time. Memory figures assume mixed precision with AdamW.
"""

from __future__ import annotations

import math

BYTES_PER_PARAM = {"full": 16, "lora": 2.2}  # weights+grads+Adam (fp32 master) vs frozen bf16 weights


def finetune_gpu_mem_gb(params_billion: float, method: str, micro_batch: int, max_length: int,
                        hidden_size: int, num_layers: int) -> float:
    states = params_billion * 1e9 * BYTES_PER_PARAM[method]
    # activations of one micro-batch, ~34 bytes per token per hidden unit per layer (bf16, no checkpointing)
    activations = 34 * micro_batch * max_length * hidden_size * num_layers
    return (states + activations) / 2**30 * 1.2


def finetune_runtime_minutes(params_billion: float, method: str, train_tokens: float, epochs: float,
                             tflops: float = 100.0) -> int:
    # 6·N FLOPs per token for a full step (LoRA skips the weight gradients: ~4·N), at 40 % MFU
    flops = (6 if method == "full" else 4) * params_billion * 1e9 * train_tokens * epochs
    minutes = flops / (tflops * 1e12 * 0.4) / 60
    return int(math.ceil(max(30, minutes * 1.5 + 20)))  # + snapshots, evaluation, checkpoint writes


def micro_batch_plan(batch_size: int, max_micro_batch: int, attempt: int = 1) -> dict:
    """Micro-batch and accumulation for an effective batch. Each retry after an out-of-memory
    failure halves the micro-batch (same effective batch); from the third attempt on,
    gradient checkpointing is switched on as well."""
    limit = max(1, max_micro_batch // (2 ** (attempt - 1)))
    micro = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= limit)
    return {"micro_batch": micro, "accumulation": batch_size // micro, "gradient_checkpointing": attempt >= 3}


def finetune_job(config: dict, task: str, method: str, batch_size: int) -> dict:
    """Resources of one fine-tuning job, sized for its first micro-batch plan (an out-of-memory
    retry inside the job only lowers the activation memory)."""
    from ftdrift.study.config import task_kind, task_settings

    res, shape = config["resources"], config["resources"]["model_shape"]
    settings = task_settings(config, task)
    training, kind = settings["training"], task_kind(config["task_defs"][task])
    max_length = settings["data"]["max_length"][kind]
    plan = micro_batch_plan(batch_size, training["max_micro_batch"])
    if training["max_steps"] > 0:
        examples = training["max_steps"] * batch_size
    else:
        examples = training["epochs"] * config["task_defs"][task].get("train_examples", 100_000)
    tokens = examples * max_length * 0.5  # dynamic padding: about half the maximum length on average
    gpu_mem = finetune_gpu_mem_gb(shape["params_billion"], method, plan["micro_batch"], max_length,
                                  shape["hidden_size"], shape["num_layers"])
    host_mb = int(max(8000, shape["params_billion"] * 1e9 * 4 * 3 / 2**20))  # fp32 load + state dicts
    return {
        "gpu": res["gpus_per_finetune"],
        "gpu_model": res["gpu_model"] or "",
        "gpu_mem_gb": round(gpu_mem, 1),
        "cpus_per_gpu": 8 if res["gpus_per_finetune"] else 0,
        "mem_mb": host_mb,
        "runtime": finetune_runtime_minutes(shape["params_billion"], method, tokens, 1.0) if res["gpus_per_finetune"]
        else int(max(30, examples / 2 / 60 * 1.5)),  # CPU: ~2 examples/s at worst
    }


def light_gpu_job(config: dict) -> dict:
    """Forward-only jobs (base representations): one GPU when the study uses GPUs."""
    shape = config["resources"]["model_shape"]
    return {"gpu": min(1, config["resources"]["gpus_per_finetune"]),
            "mem_mb": int(max(8000, shape["params_billion"] * 1e9 * 4 * 2 / 2**20))}


def deployment_job(config: dict) -> dict:
    """Host memory of the deployment benchmark: every task's full model, the base with the
    adapters and a merged copy, in float32 (at least a light GPU job's)."""
    params = config["resources"]["model_shape"]["params_billion"] * 1e9
    return {"mem_mb": max(light_gpu_job(config)["mem_mb"], int(params * 4 * (len(config["tasks"]) + 2) / 2**20)),
            "gpu": light_gpu_job(config)["gpu"]}
