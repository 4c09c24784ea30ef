"""tests/system/gpu_checks.py's plumbing without a GPU: the out-of-memory hook, the MFU verdict, the summary."""

import importlib.util
import json
import subprocess
import sys
import textwrap

from ftdrift.testing import REPO


def _load(path):
    """A harness script as a module, from its path (tests/system holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_checks = _load(REPO / "tests" / "system" / "gpu_checks.py")


def test_oom_hook_raises_only_for_big_micro_batches_after_the_start_step(tmp_path):
    """The sitecustomize hook, in a process named like Snakemake's finetune script: micro-batch 2
    from step 3 on exceeds the 1.5 GiB cap at 1 GiB per example (CPU: simulated OOM); micro-batch 1
    and earlier steps pass through to the real training_step (stubbed here)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(gpu_checks.OOM_HOOK)
    record = tmp_path / "record.jsonl"
    script = tmp_path / "tmpabc.finetune.py"
    script.write_text(textwrap.dedent("""
        import json, torch, transformers
        calls = []
        class Stub:
            class state:
                global_step = 0
        def fake(self, model, inputs, *a, **k):
            calls.append(len(inputs["input_ids"]))
            return 0.0
        results = []
        model = torch.nn.Linear(2, 2)
        for step, n in [(2, 2), (3, 1), (3, 2)]:
            Stub.state.global_step = step
            # the hook wraps the class attribute it found at start-up; call it around the stub
            hooked = transformers.Trainer.training_step
            try:
                hooked.__globals__["_orig"] = fake
                hooked(Stub(), model, {"input_ids": torch.zeros(n, 4)})
                results.append("ok")
            except torch.OutOfMemoryError:
                results.append("oom")
        print(json.dumps({"results": results, "calls": calls}))
    """))
    env = {"PYTHONPATH": str(hook), "FTDRIFT_GPU_CHECK_OOM": "1", "FTDRIFT_GPU_CHECK_OOM_RECORD": str(record),
           "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # by hand: step 2 < 3 -> no ballast; step 3, n=1: 1 GiB <= 1.5 GiB; step 3, n=2: 2 GiB > 1.5 GiB
    assert out["results"] == ["ok", "ok", "oom"]
    assert out["calls"] == [2, 1]  # the OOM step never reached training
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e["oom"] for e in events] == [False, False, True]
    assert all(e["job"] == "tmpabc.finetune.py" for e in events)


def _mfu_json(tmp_path, full_mfu, lora_ratio):
    peak = 989.4
    data = {"device": "NVIDIA H200", "peak_bf16_tflops": peak, "lora_over_full_step_amp": lora_ratio,
            "runs": [{"method": "full", "precision": "amp", "step_s": 0.1, "mfu": full_mfu},
                     {"method": "lora", "precision": "amp", "step_s": 0.1 * lora_ratio, "mfu": 0.3}]}
    path = tmp_path / "mfu.json"
    path.write_text(json.dumps(data))
    return path


def test_mfu_verdict_against_the_issue_thresholds(tmp_path):
    args = type("A", (), {"cpu": False})()
    args.mfu_json = _mfu_json(tmp_path, 0.43, 0.65)
    ok = gpu_checks.stage_mfu(args)
    assert not ok["shortfall"]
    assert [c["passed"] for c in ok["checks"]] == [True, False, True]  # floor 40 % met, aim 45 % not, ratio met
    args.mfu_json = _mfu_json(tmp_path, 0.38, 0.65)
    assert gpu_checks.stage_mfu(args)["shortfall"]
    args.mfu_json = _mfu_json(tmp_path, 0.50, 0.71)
    assert gpu_checks.stage_mfu(args)["shortfall"]
    args.cpu = True  # on a CPU the thresholds are not judged
    assert not gpu_checks.stage_mfu(args)["shortfall"]


def test_summary_fails_on_a_failed_check_or_a_stage_that_never_wrote(tmp_path, capsys):
    (tmp_path / "env.json").write_text(json.dumps({"checks": [gpu_checks.check("imports", "all", True, "x")]}))
    (tmp_path / "timing.tsv").write_text("env\t0\t1.5\t60\nworkflow\t124\t200.0\t200\n")
    args = type("A", (), {"scratch": str(tmp_path), "cpu": False, "out": str(tmp_path / "s.json")})()
    summary = gpu_checks.stage_summary(args)
    assert not summary["passed"] and summary["n_failed"] == 1  # the timed-out workflow
    assert summary["total_s"] == 201.5
    assert "OVERALL: FAIL" in capsys.readouterr().out
    (tmp_path / "timing.tsv").write_text("env\t0\t1.5\t60\n")
    assert gpu_checks.stage_summary(args)["passed"]
