"""The checks of bench/gpu_check.sh (issue 15, "The GPU path, proven on a real GPU"), one subcommand each.

    env       versions, device, what imports (the wheel bundle on the GPU machine included)
    numerics  LoRA merge in bf16 against fp32 (peft merge_and_unload on a random Llama), and the
              GPU CKA path (ftdrift.core.similarity.cka_matrix, backend 'torch' on CUDA) against
              the CPU one (backend 'numpy') to 1e-6
    mfu       bench/gpu_mfu.py at Sheared-LLaMA-1.3B's shape, seq 512: MFU and LoRA/full step time
    workflow  the tiny workflow (ftdrift.testing.make_tiny_workdir) end to end on the device, with
              one out-of-memory retry per fine-tuning job provoked on purpose (see OOM_HOOK)
    summary   every stage's JSON into one (figures + pass/fail per check) and a printed table

Each subcommand writes `<stage>.json` into --scratch; `summary` writes the merged JSON to --out.
`--cpu` runs the plumbing on the CPU with toy shapes: thresholds that only mean something on a
GPU (MFU, bf16 rounding) are reported as n/a, not failed.

Nothing here changes ftdrift: the out-of-memory retry is provoked from outside through a
`sitecustomize.py` put on PYTHONPATH for the workflow run only, which acts in fine-tuning jobs alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# ftdrift comes from the environment: bench/gpu_check.sh puts the checkout's src/ on PYTHONPATH (the GPU
# image has no editable install), a venv has it installed
REPO = Path(__file__).resolve().parents[2]  # tests/system/gpu_checks.py -> the repository

# Tolerances, stated once (the report prints them beside the figures).
MERGE_FP32_MAX_ABS = 1e-4  # merged vs unmerged logits in fp32: the workflow's own merge check (runs.csv)
BF16_REL = 2e-2  # relative Frobenius error of bf16 logits: 8-bit mantissa (2^-9 = 2e-3 per rounding),
#                  accumulated over the layers of a random model; 2e-2 is a loose but meaningful bound
MERGE_BF16_EXCESS = 2.0  # merging in bf16 may add at most this factor to the bf16 error of the unmerged model
CKA_ABS = 1e-6  # GPU vs CPU CKA (both float64 after the conversion)
STEP0_CKA_ABS_BF16 = 1e-3  # step-0 CKA vs 1: base and step-0 snapshot both in bf16, same kernels
STEP0_CKA_ABS_FP32 = 1e-6
MFU_FLOOR, MFU_AIM, LORA_RATIO_MAX = 0.40, 0.45, 0.70

# sitecustomize for the workflow run. In a fine-tuning job (Snakemake runs its script as
# `python .snakemake/scripts/tmpXXXX.finetune.py`) it caps the process's CUDA memory
# (torch.cuda.set_per_process_memory_fraction, the cap itself) and, from optimizer step OOM_FROM_STEP on,
# allocates ballast in proportion to the micro-batch before each training step, as activations
# would: micro-batch 2 needs more than the cap (a real torch.OutOfMemoryError from the CUDA
# allocator), micro-batch 1 fits. ftdrift's retry (ftdrift.training.oom) then halves the micro-batch
# and resumes from the last checkpoint. On a machine without CUDA (--cpu) it raises
# torch.OutOfMemoryError itself, to test the plumbing. Each training step is recorded in a JSON-lines file.
OOM_HOOK = r'''
import json, os, sys, time
if sys.argv and sys.argv[0].endswith("finetune.py") and os.environ.get("FTDRIFT_GPU_CHECK_OOM") == "1":
    import torch
    import transformers

    _GB = 2 ** 30
    _cap = float(os.environ.get("FTDRIFT_GPU_CHECK_OOM_CAP_GB", "1.5"))
    _per_example = float(os.environ.get("FTDRIFT_GPU_CHECK_OOM_PER_EXAMPLE_GB", "1.0"))
    _from_step = int(os.environ.get("FTDRIFT_GPU_CHECK_OOM_FROM_STEP", "3"))
    _record = os.environ["FTDRIFT_GPU_CHECK_OOM_RECORD"]
    _orig = transformers.Trainer.training_step
    _state = {"capped": False}

    def _note(**kw):
        kw.update(pid=os.getpid(), job=os.path.basename(sys.argv[0]), time=time.time())
        with open(_record, "a") as fh:
            fh.write(json.dumps(kw) + "\n")

    def training_step(self, model, inputs, *args, **kwargs):
        n = int(inputs["input_ids"].shape[0])
        device = next(model.parameters()).device
        step = int(self.state.global_step)
        if device.type == "cuda" and not _state["capped"]:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, _cap * _GB / total), device)
            _state["capped"] = True
        ballast = None
        if step >= _from_step:
            try:
                if device.type == "cuda":
                    ballast = torch.empty(int(n * _per_example * _GB), dtype=torch.uint8, device=device)
                elif n * _per_example > _cap:
                    raise torch.OutOfMemoryError(f"simulated out of memory (CPU plumbing check): micro-batch {n} "
                                                 f"x {_per_example} GiB > cap {_cap} GiB")
            except torch.OutOfMemoryError as err:
                _note(step=step, micro_batch=n, device=str(device), oom=True, error=str(err)[:300])
                raise
        _note(step=step, micro_batch=n, device=str(device), oom=False,
              dtype=str(next(model.parameters()).dtype))
        try:
            return _orig(self, model, inputs, *args, **kwargs)
        finally:
            del ballast

    transformers.Trainer.training_step = training_step
'''


def _now() -> float:
    return time.perf_counter()


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def check(name: str, value, ok: bool | None, limit: str) -> dict:
    """One pass/fail row: ok None = not applicable here (e.g. a GPU threshold on the CPU)."""
    return {"check": name, "value": value, "limit": limit, "passed": ok}


# ---------------------------------------------------------------------------------------------- env
def stage_env(args) -> dict:
    import importlib

    out = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
           "pythonpath": os.environ.get("PYTHONPATH", ""), "modules": {}}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "datasets", "zarr", "numcodecs",
                 "pandas", "numpy", "jsonschema", "snakemake", "huggingface_hub", "pyarrow", "ftdrift"):
        try:
            mod = importlib.import_module(name)
            out["modules"][name] = {"version": getattr(mod, "__version__", "?"), "file": getattr(mod, "__file__", "")}
        except Exception as err:  # noqa: BLE001 - reported, the stage that needs it fails later with the reason
            out["modules"][name] = {"error": f"{type(err).__name__}: {err}"[:300]}
    import torch

    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        props = torch.cuda.get_device_properties(0)
        out.update(device=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda,
                   total_memory_gb=props.total_memory / 2**30, bf16_supported=torch.cuda.is_bf16_supported())
    missing = [k for k, v in out["modules"].items() if "error" in v]
    out["checks"] = [check("imports", ",".join(missing) or "all", not missing, "every module imports")]
    return out


# ----------------------------------------------------------------------------------------- numerics
def _rel(a, b) -> float:
    import torch

    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def merge_check(device, tiny: bool) -> dict:
    """LoRA merge in bf16 vs fp32 on a random LlamaForSequenceClassification wrapped by ftdrift's
    own `ftdrift.modeling.methods.adapt` (the seed study's adapter: LoRA r=8, alpha=16, q/v), with B
    drawn at random (as after training; at B = 0 a merge is trivially exact).

    Figures: logits [batch, labels] of the same inputs from (a) the fp32 adapter model, (b) its merged
    copy (peft merge_and_unload), (c)/(d) the same in bf16 (weights cast to bf16, merge in bf16).
    """
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from ftdrift.modeling import methods
    from ftdrift.study.methods import Method

    torch.manual_seed(0)
    shape = (dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, vocab_size=1000) if tiny else
             dict(num_hidden_layers=8, hidden_size=1024, num_attention_heads=16, num_key_value_heads=16,
                  intermediate_size=2816, vocab_size=32000))
    batch, seq = (4, 32) if tiny else (16, 256)
    config = LlamaConfig(**shape, num_labels=2, pad_token_id=0, max_position_embeddings=1024)
    with torch.device(device):
        base = LlamaForSequenceClassification(config).float().eval()
    seed_lora = Method("lora", {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "qv"})
    model = methods.adapt(base, seed_lora)[0].eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # as after training: updates of ~1e-2 relative to the frozen weights
                p.normal_(0.0, 0.02)
    ids = torch.randint(1, shape["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def logits(m):
        return m(input_ids=ids, attention_mask=mask).logits.float()

    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference in true fp32
    try:
        base_logits32 = None
        with model.disable_adapter():
            base_logits32 = logits(model)
        u32 = logits(model)
        m32 = logits(copy.deepcopy(model).merge_and_unload().eval())
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        u16 = logits(model16)
        m16 = logits(copy.deepcopy(model16).merge_and_unload().eval())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    adapter_effect = _rel(u32, base_logits32)
    figures = {
        "shape": shape, "batch": batch, "seq": seq, "device": str(device),
        "adapter_effect_rel": adapter_effect,
        "fp32_merged_vs_unmerged_max_abs": float((m32 - u32).abs().max()),
        "bf16_unmerged_vs_fp32_rel": _rel(u16, u32),
        "bf16_merged_vs_fp32_rel": _rel(m16, m32),
        "bf16_merged_vs_bf16_unmerged_rel": _rel(m16, u16),
        "bf16_merged_vs_fp32_max_abs": float((m16 - m32).abs().max()),
        "logit_scale_max_abs_fp32": float(u32.abs().max()),
        "argmax_agreement_bf16_merged_vs_fp32": float((m16.argmax(-1) == m32.argmax(-1)).float().mean()),
    }
    excess_limit = MERGE_BF16_EXCESS * figures["bf16_unmerged_vs_fp32_rel"] + 1e-3
    figures["checks"] = [
        check("merge: adapter changes the logits (test is not vacuous)", adapter_effect, adapter_effect > 1e-3,
              "> 1e-3 relative"),
        check("merge fp32: merged vs unmerged max |logit diff|", figures["fp32_merged_vs_unmerged_max_abs"],
              figures["fp32_merged_vs_unmerged_max_abs"] <= MERGE_FP32_MAX_ABS, f"<= {MERGE_FP32_MAX_ABS:g}"),
        check("merge bf16 vs fp32 merged: relative error", figures["bf16_merged_vs_fp32_rel"],
              figures["bf16_merged_vs_fp32_rel"] <= BF16_REL, f"<= {BF16_REL:g}"),
        check("merge bf16: merged vs unmerged relative error", figures["bf16_merged_vs_bf16_unmerged_rel"],
              figures["bf16_merged_vs_bf16_unmerged_rel"] <= BF16_REL, f"<= {BF16_REL:g}"),
        check("merge bf16: merge adds little to bf16's own error", figures["bf16_merged_vs_fp32_rel"],
              figures["bf16_merged_vs_fp32_rel"] <= excess_limit,
              f"<= {MERGE_BF16_EXCESS:g} x unmerged bf16 error + 1e-3 = {excess_limit:.3g}"),
    ]
    return figures


def cka_check(device, tiny: bool) -> dict:
    """ftdrift.core.similarity.cka_matrix on `device` (backend 'torch', the GPU path) against the CPU
    path (backend 'numpy'), plain and debiased, in the feature-space form (n > d) and the Gram form
    (n < d), on correlated random representations [L, n, d] / [S, L, n, d] (float32 and bfloat16 input)."""
    import numpy as np
    import torch

    from ftdrift.core.similarity import cka_matrix

    rng = np.random.default_rng(0)
    cases = {"feature": (4, 1024, 256, 6), "gram": (4, 256, 1024, 6)} if not tiny else \
        {"feature": (2, 64, 16, 3), "gram": (2, 16, 64, 3)}
    figures, worst = {"device": str(device), "cases": []}, 0.0
    for form, (L, n, d, S) in cases.items():
        base = rng.standard_normal((L, n, d)).astype(np.float32)
        noise = rng.standard_normal((S, L, n, d)).astype(np.float32)
        scale = np.linspace(0.1, 2.0, S, dtype=np.float32)[:, None, None, None]
        snaps = base[None] + scale * noise  # CKA falling from ~1 to well below
        for dtype in ("float32", "bfloat16"):
            b, s = torch.from_numpy(base), torch.from_numpy(snaps)
            if dtype == "bfloat16":
                b, s = b.to(torch.bfloat16), s.to(torch.bfloat16)
            for debiased in (False, True):
                t0 = _now()
                cpu = cka_matrix(b, s, debiased=debiased, device="cpu", backend="numpy")
                t_cpu = _now() - t0
                t0 = _now()
                dev = cka_matrix(b.to(device), s.to(device), debiased=debiased, device=device, backend="torch")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_dev = _now() - t0
                diff = float(np.abs(dev - cpu).max())
                worst = max(worst, diff)
                figures["cases"].append({"form": form, "L": L, "n": n, "d": d, "S": S, "input_dtype": dtype,
                                         "debiased": debiased, "max_abs_diff": diff, "cka_min": float(cpu.min()),
                                         "cka_max": float(cpu.max()), "cpu_s": t_cpu, "device_s": t_dev})
    figures["max_abs_diff"] = worst
    figures["checks"] = [check(f"CKA {device.type} (torch) vs CPU (numpy), max |diff|", worst, worst <= CKA_ABS,
                               f"<= {CKA_ABS:g}")]
    return figures


def stage_numerics(args) -> dict:
    import torch

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    out = {"device": str(device)}
    checks = []
    for name, fn in (("merge", merge_check), ("cka", cka_check)):
        t0 = _now()
        try:
            out[name] = fn(device, args.cpu)
            checks.extend(out[name].pop("checks"))
        except Exception as err:  # noqa: BLE001 - one failing half must not hide the other
            import traceback

            out[name] = {"error": traceback.format_exc()[-3000:]}
            checks.append(check(f"{name}: ran", f"{type(err).__name__}: {err}"[:200], False, "no exception"))
        out[name]["seconds"] = _now() - t0
    if device.type != "cuda":  # bf16 rounding on the CPU is not what the GPU does: report, don't judge
        for row in checks:
            if "bf16" in row["check"] and row["passed"] is not None:
                row["passed"], row["limit"] = None, row["limit"] + " (GPU only; n/a on CPU)"
    out["checks"] = checks
    return out


# ---------------------------------------------------------------------------------------------- mfu
def stage_mfu(args) -> dict:
    """Judge bench/gpu_mfu.py's JSON (written by gpu_check.sh): MFU of the `amp` full run (what the
    study's Trainer runs) against the floor and the aim, LoRA/full step time against 0.7."""
    data = json.loads(Path(args.mfu_json).read_text())
    if "skipped" in data:
        return {"mfu_json": data, "checks": [check("mfu: ran", data["skipped"], False, "a CUDA device")]}
    runs = {(r["method"], r["precision"]): r for r in data["runs"]}
    gpu = not args.cpu
    full = runs.get(("full", "amp"))
    mfu = full.get("mfu") if full else None
    ratio = data.get("lora_over_full_step_amp")
    out = {"device": data.get("device"), "peak_bf16_tflops": data.get("peak_bf16_tflops"),
           "runs": [{k: v for k, v in r.items() if k not in ("profile_top", "profile_table")} for r in data["runs"]],
           "lora_over_full_step_amp": ratio, "lora_over_full_step_bf16": data.get("lora_over_full_step_bf16")}
    out["checks"] = [
        check("MFU full FT (amp, seq 512, micro-batch 8)", mfu, (mfu is not None and mfu >= MFU_FLOOR) if gpu else None,
              f">= {MFU_FLOOR:.0%} (aim {MFU_AIM:.0%})" + ("" if gpu else "; n/a on CPU")),
        check("MFU aim reached", mfu, (mfu is not None and mfu >= MFU_AIM) if gpu else None,
              f">= {MFU_AIM:.0%} (informative)"),
        check("LoRA step / full step (amp)", ratio, (ratio is not None and ratio <= LORA_RATIO_MAX) if gpu else None,
              f"<= {LORA_RATIO_MAX}" + ("" if gpu else "; n/a on CPU")),
    ]
    out["checks"][1]["informative"] = True  # the aim does not fail the run; the floor does
    out["shortfall"] = any(c["passed"] is False for c in out["checks"] if not c.get("informative"))
    return out


def stage_profile(args) -> dict:
    """Summarise the profiled gpu_mfu.py run: the top operators/kernels by self device time."""
    data = json.loads(Path(args.mfu_json).read_text())
    out = {"runs": []}
    for r in data.get("runs", []):
        top = r.get("profile_top") or []
        out["runs"].append({"method": r["method"], "precision": r["precision"], "step_s": r["step_s"],
                            "mfu": r.get("mfu"), "top": top[:12]})
    out["checks"] = [check("profile: top operators recorded", sum(len(r["top"]) for r in out["runs"]),
                           bool(out["runs"]) and all(r["top"] for r in out["runs"]), "> 0 per run")]
    return out


# ----------------------------------------------------------------------------------------- workflow
def stage_workflow(args) -> dict:
    """The tiny workflow on this machine's device, bf16 on a GPU, with the provoked OOM retry; then
    its outputs are checked: runs.csv (checkpoint_ok, merge_ok), metrics.json meta (attempts 2,
    micro-batch 1, precision), the job logs (the retry's warning), drift.csv (step-0 CKA = 1)."""
    import numpy as np
    import pandas as pd
    import torch

    from ftdrift.testing import TINY_CONFIG, make_tiny_workdir

    gpu = torch.cuda.is_available() and not args.cpu
    root = Path(args.scratch) / "workflow"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    tasks = [t for t in args.tasks.split(",") if t]
    precision = "bf16" if gpu else "fp32"
    t0 = _now()
    workdir = make_tiny_workdir(root, tasks=tasks, wandb={"mode": "disabled"},
                                training={**TINY_CONFIG["training"], "precision": precision},
                                resources={**TINY_CONFIG["resources"]})
    setup_s = _now() - t0
    hook_dir = root / "oom_hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(OOM_HOOK)
    record = root / "oom_record.jsonl"
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "FTDRIFT_GPU_CHECK_OOM": "1", "FTDRIFT_GPU_CHECK_OOM_RECORD": str(record),
           "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cores = str(min(os.cpu_count() or 2, 16))
    # greedy scheduler: the ILP one needs pulp (and its solver binaries), which the GPU machine lacks
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "tiny.yaml"), "--cores", cores, "--scheduler", "greedy",
           "--show-failed-logs"]
    log_path = root / "snakemake.log"
    t0 = _now()
    timeout = max(30, int(args.timeout) - int(setup_s) - 15)
    with open(log_path, "w") as fh:
        # own process group: on a timeout the jobs go too, not only Snakemake
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    run_s = _now() - t0
    out = {"workdir": str(workdir), "tasks": tasks, "precision": precision, "device": "cuda" if gpu else "cpu",
           "setup_s": setup_s, "snakemake_s": run_s, "snakemake_rc": rc, "timeout_s": timeout}
    log_text = log_path.read_text(errors="replace")
    out["snakemake_log_tail"] = log_text[-3000:]
    checks = [check("workflow: snakemake exit status", rc, rc == 0, "0")]

    # the hook's record: which device trained, and the provoked OOMs
    events = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    ooms = [e for e in events if e["oom"]]
    devices = sorted({e["device"] for e in events})
    dtypes = sorted({e.get("dtype") for e in events if e.get("dtype")})
    out.update(train_steps_recorded=len(events), provoked_ooms=len(ooms), train_devices=devices,
               weight_dtypes=dtypes, oom_errors=sorted({e["error"][:160] for e in ooms})[:3])
    checks.append(check("workflow: trained on the device", devices,
                        bool(devices) and all(d.startswith("cuda" if gpu else "cpu") for d in devices),
                        "cuda" if gpu else "cpu"))
    if gpu:
        real = all("CUDA out of memory" in e["error"] for e in ooms)
        checks.append(check("workflow: OOM raised by the CUDA allocator under the memory cap", real,
                            bool(ooms) and real, "every provoked OOM is a real torch.OutOfMemoryError"))

    # per-run metrics.json and job logs
    runs_meta = []
    for path in sorted((workdir / "results/runs").rglob("metrics.json")):
        meta = json.loads(path.read_text()).get("meta", {})
        rel = path.parent.relative_to(workdir / "results/runs")
        log = workdir / "results/logs/finetune" / f"{rel}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        runs_meta.append({"run": str(rel), "attempts": meta.get("attempts"), "micro_batch": meta.get("micro_batch"),
                          "accumulation": meta.get("accumulation"), "precision": meta.get("precision"),
                          "status": meta.get("status"), "steps": meta.get("steps"),
                          "log_has_retry": "out of memory at micro-batch" in text,
                          "log_has_resume": "resuming" in text})
    out["runs"] = runs_meta
    expected_runs = 2 * len(tasks)
    checks += [
        check("workflow: runs finished", len(runs_meta), len(runs_meta) == expected_runs, f"== {expected_runs}"),
        check("workflow: one OOM retry per run (attempts == 2, micro-batch 2 -> 1)",
              [(r["attempts"], r["micro_batch"]) for r in runs_meta],
              bool(runs_meta) and all(r["attempts"] == 2 and r["micro_batch"] == 1 for r in runs_meta),
              "attempts 2, micro_batch 1"),
        check("workflow: job logs show the retry and the resume from the checkpoint",
              sum(r["log_has_retry"] and r["log_has_resume"] for r in runs_meta),
              bool(runs_meta) and all(r["log_has_retry"] and r["log_has_resume"] for r in runs_meta),
              "every run's log"),
        check("workflow: training precision", sorted({r["precision"] for r in runs_meta}),
              bool(runs_meta) and all(r["precision"] == precision for r in runs_meta), precision),
    ]

    tables = workdir / "results/tables"
    runs_csv = tables / "runs.csv"
    if runs_csv.exists():
        runs = pd.read_csv(runs_csv)
        lora_rows = runs[runs.method == "lora"]
        out["runs_csv"] = runs[[c for c in ("task", "method", "val_main", "dev_main", "checkpoint_ok", "merge_ok",
                                            "merge_max_abs_logit_diff", "reload_prediction_mismatches")
                                if c in runs.columns]].to_dict(orient="records")
        checks += [
            check("runs.csv: checkpoint_ok", int(runs.checkpoint_ok.sum()), bool(runs.checkpoint_ok.all()),
                  f"all {len(runs)} rows"),
            check("runs.csv: merge_ok (LoRA)", int(lora_rows.merge_ok.sum()), bool(lora_rows.merge_ok.all())
                  and len(lora_rows) > 0, f"all {len(lora_rows)} LoRA rows"),
            check("runs.csv: scores finite", int(runs.val_main.notna().sum()), bool(runs.val_main.notna().all()),
                  "val_main present"),
        ]
    else:
        checks.append(check("runs.csv exists", False, False, str(runs_csv)))
    drift_csv = tables / "drift.csv"
    if drift_csv.exists():
        drift = pd.read_csv(drift_csv)
        cka = drift[(drift.metric == "linear_cka")]
        step0 = cka[cka.step == 0]
        dev0 = float(np.abs(step0.value - 1.0).max()) if len(step0) else float("nan")
        limit = STEP0_CKA_ABS_BF16 if precision == "bf16" else STEP0_CKA_ABS_FP32
        out["step0_cka_max_abs_dev"] = dev0
        last = cka[cka.step == cka.step.max()]
        out["last_step_cka_min"] = float(last.value.min()) if len(last) else None
        checks.append(check(f"drift.csv: step-0 CKA = 1 ({precision})", dev0, len(step0) > 0 and dev0 <= limit,
                            f"<= {limit:g}"))
        checks.append(check("drift.csv: values finite", bool(np.isfinite(cka.value).all()),
                            bool(len(cka)) and bool(np.isfinite(cka.value).all()), "all finite"))
    else:
        checks.append(check("drift.csv exists", False, False, str(drift_csv)))
    out["checks"] = checks
    # the logs that come back: snakemake's, the fine-tuning jobs', the hook record, the tables
    if args.logs_tgz:
        with tarfile.open(args.logs_tgz, "w:gz") as tar:
            for path in [log_path, record, *sorted((workdir / "results/logs").rglob("*.log")),
                         *sorted(tables.glob("*.csv")), *sorted((workdir / "results/runs").rglob("metrics.json"))]:
                if path.exists():
                    tar.add(path, arcname=str(path.relative_to(root)))
    return out


# ------------------------------------------------------------------------------------------ summary
def stage_summary(args) -> dict:
    scratch = Path(args.scratch)
    stages = {}
    for name in ("env", "numerics", "mfu", "profile", "workflow"):
        path = scratch / f"{name}.json"
        if path.exists():
            stages[name] = json.loads(path.read_text())
    timing = {}
    timing_path = scratch / "timing.tsv"
    if timing_path.exists():
        for line in timing_path.read_text().splitlines():
            stage, rc, seconds, limit = line.split("\t")
            timing[stage] = {"rc": rc, "seconds": float(seconds), "timeout_s": int(limit)}
    rows = []
    for name, data in stages.items():
        for row in data.get("checks", []):
            rows.append({"stage": name, **row})
    for stage, t in timing.items():  # a stage that failed, timed out or was skipped (its JSON may be missing)
        if t["rc"] != "0" and not (stage in stages and t["rc"] == "1"):  # rc 1 = failed checks, listed above
            rows.append({"stage": stage, "check": f"{stage}: finished", "value": f"rc {t['rc']}",
                         "limit": f"within {t['timeout_s']} s", "passed": False})
    failed = [r for r in rows if r["passed"] is False and not r.get("informative")]
    summary = {"mode": "cpu-smoke" if args.cpu else "gpu", "passed": not failed and bool(rows),
               "n_checks": len(rows), "n_failed": len(failed), "checks": rows, "timing": timing,
               "total_s": sum(t["seconds"] for t in timing.values()),
               "tolerances": {"merge_fp32_max_abs": MERGE_FP32_MAX_ABS, "bf16_rel": BF16_REL,
                              "merge_bf16_excess": MERGE_BF16_EXCESS, "cka_abs": CKA_ABS,
                              "step0_cka_abs_bf16": STEP0_CKA_ABS_BF16, "mfu_floor": MFU_FLOOR,
                              "mfu_aim": MFU_AIM, "lora_ratio_max": LORA_RATIO_MAX},
               "stages": stages}
    write_json(Path(args.out), summary)
    print_table(summary)
    return summary


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 38 else text[:35] + "..."


def print_table(summary: dict) -> None:
    verdict = {True: "pass", False: "FAIL", None: "n/a"}
    print(f"\n== gpu_check ({summary['mode']}): {summary['n_checks']} checks, {summary['n_failed']} failed ==")
    print(f"{'stage':<9} {'check':<66} {'value':<38} {'limit':<30} result")
    for r in summary["checks"]:
        mark = verdict[r["passed"]] + (" (info)" if r.get("informative") else "")
        print(f"{r['stage']:<9} {r['check'][:66]:<66} {_fmt(r['value']):<38} {str(r['limit'])[:30]:<30} {mark}")
    prof = summary["stages"].get("profile")
    if prof:
        for run in prof["runs"]:
            print(f"\n-- where the time goes: {run['method']} {run['precision']} (step {run['step_s']:.3f} s) --")
            for op in run["top"][:10]:
                print(f"  {op['share']:6.1%}  {op['self_ms_per_step']:9.2f} ms/step  {op['calls']:6d}x  {op['name'][:90]}")
    print("\ntiming (s): " + ", ".join(f"{k} {v['seconds']:.0f}/{v['timeout_s']} rc={v['rc']}"
                                       for k, v in summary["timing"].items())
          + f"; total {summary['total_s']:.0f} s")
    print("OVERALL: " + ("PASS" if summary["passed"] else "FAIL"))


STAGES = {"env": stage_env, "numerics": stage_numerics, "mfu": stage_mfu, "profile": stage_profile,
          "workflow": stage_workflow}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=[*STAGES, "summary"])
    p.add_argument("--scratch", required=True, help="folder for the stage JSONs and the workflow run")
    p.add_argument("--cpu", action="store_true", help="CPU plumbing smoke test: toy shapes, GPU thresholds n/a")
    p.add_argument("--mfu-json", help="gpu_mfu.py's output (stages mfu, profile)")
    p.add_argument("--tasks", default="sst2,squad_v2", help="workflow: tasks of the tiny config")
    p.add_argument("--timeout", type=float, default=240, help="workflow: seconds for the whole stage")
    p.add_argument("--logs-tgz", help="workflow: tarball of the logs and tables to bring back")
    p.add_argument("--out", help="summary: the merged JSON")
    a = p.parse_args(argv)
    if a.stage == "summary":
        return 0 if stage_summary(a)["passed"] else 1
    t0 = _now()
    try:
        result = STAGES[a.stage](a)
    except Exception as err:  # noqa: BLE001 - recorded as the stage's failure, the script goes on
        import traceback

        traceback.print_exc()
        result = {"error": traceback.format_exc()[-4000:],
                  "checks": [check(f"{a.stage}: ran", f"{type(err).__name__}: {err}"[:200], False, "no exception")]}
    result["seconds"] = _now() - t0
    write_json(Path(a.scratch) / f"{a.stage}.json", result)
    for row in result.get("checks", []):
        print(f"[{a.stage}] {row['check']}: {_fmt(row['value'])} ({row['limit']}) -> "
              f"{ {True: 'pass', False: 'FAIL', None: 'n/a'}[row['passed']] }")
    return 0 if all(r["passed"] is not False for r in result.get("checks", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
