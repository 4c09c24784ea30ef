"""The deployment benchmark on the tiny config: the real rules (deployment, report_deployment) run
on saved models built here — a full model and a LoRA adapter (with its trained head) per task —
so only what the benchmark reads is made, not the whole study."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open

from ftdrift.analysis.deployment import chosen_runs
from ftdrift.analysis.deployment_cases import MIN_OP_SAMPLES
from ftdrift.analysis.deployment_measure import RUN_TIME_CAP
from ftdrift.analysis.tuned import method_of
from ftdrift.core import io
from ftdrift.data.features import encode_probe
from ftdrift.data.tasks import prepare_task
from ftdrift.modeling import methods, models
from ftdrift.representations.extract import make_batches
from ftdrift.study import config as ftconfig
from ftdrift.study import grid
from ftdrift.testing import REPO, make_tiny_workdir, run_snakemake

BATCH_SIZES = [1, 4]
MIN_RUN_TIME = 0.01  # short measurements: the test checks the tables, not the numbers
CLASSIFICATION = ["sst2", "mrpc", "rte"]
DEPLOYMENT = f"deployment={{'batch_sizes': {BATCH_SIZES}, 'min_run_time': {MIN_RUN_TIME}}}"


def _config(workdir) -> dict:
    return ftconfig.resolve(yaml.safe_load((workdir / "tiny.yaml").read_text()), base_dir=REPO)


def _save_run(cfg: dict, run: grid.Run, tokenizer, out) -> None:
    """A saved run as the fine-tuning job leaves it: model/ (full model, or adapter + head) and metrics.json."""
    task_def = cfg["task_defs"][run.task]
    kind = ftconfig.task_kind(task_def)
    torch.manual_seed(hash((run.task, run.method)) % 2**31)
    model = models.load_model(cfg["model"], kind, len(task_def["labels"]) if kind == "classification" else None,
                              tokenizer)
    method = method_of(run.method, cfg["methods"][run.method])
    if method.is_full:
        model.save_pretrained(out / "model")
    else:
        model, _ = methods.adapt(model, method)
        with torch.no_grad():  # a trained adapter: B ≠ 0, so merging changes the weights
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        methods.save_adapter(model, method, out / "model")
    main = task_def["main_metric"]
    io.write_json(out / "metrics.json", {"task": run.task, "main_metric": main, "dev": {main: 0.5},
                                         "validation": {main: 0.5},
                                         "meta": {"run": run.wildcards, "status": "completed", "stopped_early": False}})


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Probe files and saved runs of the tiny config; then the deployment and report rules."""
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("deployment"))
    cfg = _config(workdir)
    tokenizer = models.load_tokenizer(cfg["model"])
    for task in cfg["tasks"]:
        prepare_task(task, cfg["task_defs"][task], workdir / "data", ftconfig.task_settings(cfg, task)["data"],
                     workdir / "results" / "data" / task)
    for run in grid.grid(cfg):
        _save_run(cfg, run, tokenizer, workdir / "results" / "runs" / run.path)
    # only the two rules under test: everything upstream was made above
    run_snakemake(workdir, "results/tables/deployment.csv", "results/report/deployment/tables.html",
                  "--allowed-rules", "deployment", "report_deployment", "--config", DEPLOYMENT)
    return workdir


def _table(workdir) -> pd.DataFrame:
    return pd.read_csv(workdir / "results/tables/deployment.csv")


def test_every_case_is_measured(deployed):
    table = _table(deployed)
    assert table.supported.all() and (table.device == "cpu").all()
    inference = table[table.section == "inference"]
    expected = {(t, v, b) for t in CLASSIFICATION + ["squad_v2"] for v in ("full", "lora_unmerged", "lora_merged")
                for b in BATCH_SIZES}
    assert set(zip(inference.task, inference.variant, inference.batch_size)) == expected and len(inference) == 24
    multi = table[table.section == "multi_task"]
    assert set(zip(multi.task, multi.variant, multi.batch_size)) == {
        ("sst2+mrpc+rte", v, b) for v in ("full_models", "adapter_per_task", "mixed_adapter_batch")
        for b in BATCH_SIZES}
    assert (multi.n_tasks == 3).all() and (multi.group == "classification").all()
    ops = table[table.section == "adapter_ops"]
    assert set(zip(ops.task, ops.variant)) == {("sst2+mrpc+rte", "set_adapter")} | {
        (t, v) for t in CLASSIFICATION + ["squad_v2"] for v in ("load_adapter", "delete_adapter", "load_full_model")}
    # squad_v2 is alone in its task-model class: nothing to mix or switch to
    assert not ((table.task.str.contains("squad_v2")) & (table.section == "multi_task")).any()
    timed = table.dropna(subset=["p50_ms"])
    assert len(timed) == len(table)
    assert (timed.min_ms > 0).all()
    assert ((timed.min_ms <= timed.p50_ms) & (timed.p50_ms <= timed.p95_ms) & (timed.p95_ms <= timed.p99_ms)
            & (timed.p99_ms <= timed.max_ms)).all()
    forward = table[table.section != "adapter_ops"]
    # torch's 4 samples per case, unless the case hit its cap of RUN_TIME_CAP x min_run_time first
    capped = forward.samples * forward.mean_ms / 1e3 > RUN_TIME_CAP * MIN_RUN_TIME
    assert ((forward.samples >= 4) | capped).all() and (forward.samples >= 1).all()
    assert (table.calls_per_sample == 1).sum() == len(table) - 1  # all but set_adapter (block means)
    assert (ops[ops.variant.isin(["load_adapter", "delete_adapter"])].samples >= MIN_OP_SAMPLES).all()
    assert forward.examples_per_s.to_numpy() == pytest.approx(forward.batch_size / (forward.mean_ms / 1e3))
    loads = ops.set_index(["task", "variant"]).samples
    for task in CLASSIFICATION + ["squad_v2"]:  # every adapter loaded was unloaded again
        assert loads[(task, "load_adapter")] == loads[(task, "delete_adapter")]


def _tensor_bytes(path) -> int:
    """numel × element size of every tensor in a safetensors file."""
    with safe_open(str(path), "pt") as handle:
        return sum(t.numel() * t.element_size() for t in map(handle.get_tensor, handle.keys()))


def test_memory_equals_an_independent_count(deployed):
    """N full models = the sum of their weight files; base + N adapters = one full model's weights
    (the base has the same shapes) + every adapter file (LoRA matrices and the task head)."""
    memory = pd.read_csv(deployed / "results/tables/deployment_memory.csv").set_index(["group", "layout"])
    summary = json.loads((deployed / "results/tables/deployment.json").read_text())
    runs = deployed / "results/runs"
    groups = {"classification": CLASSIFICATION, "extractive_qa": ["squad_v2"]}
    totals = {"full_models": 0, "base_plus_adapters": 0}
    for group, tasks in groups.items():
        full = [_tensor_bytes(runs / t / "full/lr1e-3_bs4_seed1/model/model.safetensors") for t in tasks]
        adapters = [_tensor_bytes(runs / t / "lora/lr5e-3_bs4_seed1/model/adapter_model.safetensors") for t in tasks]
        assert memory.loc[(group, "full_models"), "param_bytes"] == sum(full)
        assert memory.loc[(group, "base_plus_adapters"), "param_bytes"] == full[0] + sum(adapters)
        assert summary["memory"][group]["adapters_bytes"] == sum(adapters)  # LoRA adds no buffers
        totals["full_models"] += sum(full)
        totals["base_plus_adapters"] += full[0] + sum(adapters)
    for layout, value in totals.items():
        assert memory.loc[("all", layout), "param_bytes"] == value
    assert (memory.computed_bytes == memory.param_bytes + memory.buffer_bytes).all()
    assert (memory.measured_as == "process RSS delta (CPU, psutil)").all()
    assert summary["memory"]["classification"]["full_over_adapters"] > 2  # 3 full models vs one base + 3 adapters


def test_summary_records_machine_versions_and_checks(deployed):
    summary = json.loads((deployed / "results/tables/deployment.json").read_text())
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["cpu_model"]
    assert summary["machine"]["torch_threads"] >= 1
    assert set(summary["versions"]) >= {"torch", "transformers", "peft"} and summary["versions"]["peft"] == "0.21.2"
    assert summary["precision"]["compute"] == {t: "fp32" for t in CLASSIFICATION + ["squad_v2"]}
    assert summary["settings"]["batch_sizes"] == BATCH_SIZES and summary["settings"]["min_run_time_s"] == MIN_RUN_TIME
    groups = {g["group"]: g for g in summary["groups"]}
    assert groups["classification"]["mixed_batch_supported"] is True
    assert groups["extractive_qa"]["mixed_batch_supported"] is None and "alone" in groups["extractive_qa"]["note"]
    checks = summary["checks"]
    assert max(checks["merge_max_abs_diff"].values()) <= 1e-4
    assert checks["mixed_batch_max_abs_diff"]["classification"] <= 1e-5
    assert [(c["task"], c["method"], c["seed"]) for c in summary["chosen_runs"]] == [
        (t, m, 1) for t in CLASSIFICATION + ["squad_v2"] for m in ("full", "lora")]


def test_mixed_batch_and_merge_reproduce_each_adapter(deployed):
    """Independently of the module: one base with the three adapters; a batch mixing the tasks
    gives, example by example, what each example's own adapter gives; merging changes nothing."""
    from peft import PeftModel

    cfg = _config(deployed)
    tokenizer = models.load_tokenizer(cfg["model"])
    base = models.load_model(cfg["model"], "classification", 2, tokenizer)
    dirs = {t: deployed / f"results/runs/{t}/lora/lr5e-3_bs4_seed1/model" for t in CLASSIFICATION}
    model = PeftModel.from_pretrained(base, str(dirs["sst2"]), adapter_name="sst2")
    for task in CLASSIFICATION[1:]:
        model.load_adapter(str(dirs[task]), adapter_name=task)
    model.eval()
    features, owners = [], []
    for task in CLASSIFICATION:
        records = io.read_jsonl(deployed / f"results/data/{task}/probe.jsonl")[:3]
        features += encode_probe(records, tokenizer, "classification", 64)
        owners += [task] * len(records)
    ((batch, positions),) = make_batches(features, tokenizer, len(features))
    names = [owners[p] for p in positions]
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
        for task in CLASSIFICATION:
            model.set_adapter(task)
            own = model(**batch).logits
            rows = [i for i, n in enumerate(names) if n == task]
            assert torch.allclose(mixed[rows], own[rows], atol=1e-5, rtol=0)
            others = [i for i, n in enumerate(names) if n != task]
            assert not torch.allclose(mixed[others], own[others], atol=1e-3)  # the adapters do differ
        merged = model.merge_and_unload()  # the last task's adapter, active
        assert torch.allclose(merged(**batch).logits, own, atol=1e-4, rtol=0)


def test_chosen_run_is_the_lowest_seed_that_did_not_diverge(tmp_path):
    runs = [{"task": "sst2", "method": "lora", "lr": "3e-3", "batch_size": 32, "seed": s} for s in (2024, 42, 1337, 7)]
    paths = []
    for run in runs:
        path = tmp_path / f"{run['seed']}.json"
        io.write_json(path, {"main_metric": "accuracy", "validation": {"accuracy": run["seed"] / 1e4},
                             "meta": {"status": "diverged" if run["seed"] == 7 else "completed"}})
        paths.append(path)
    best = pd.DataFrame([{"task": "sst2", "method": "lora", "lr": "0.003", "batch_size": 32}])
    chosen = chosen_runs(best, runs, [f"m{r['seed']}" for r in runs], paths)[("sst2", "lora")]  # not seed 7
    assert (chosen.seed, chosen.model_dir, chosen.run, chosen.val_main) == (
        42, "m42", "sst2/lora/lr3e-3_bs32_seed42", 0.0042)
    with pytest.raises(ValueError, match="no run of the grid"):
        chosen_runs(best.assign(lr="1e-3"), runs, ["m"] * 4, paths)


def test_report_section(deployed):
    out = deployed / "results/report/deployment"
    page = (out / "tables.html").read_text()
    for text in ("Serving one task", "Serving several tasks in one batch", "Switching, loading and unloading",
                 "Resident weights", "lora_merged", "mixed_adapter_batch", "load_adapter", "modules_to_save"):
        assert text in page, text
    for figure in ("latency.svg", "multi_task.svg"):
        svg = (out / figure).read_text()
        assert svg.startswith("<?xml") and "batch size" in svg


def test_served_methods_are_the_full_reference_and_the_configured_adapter():
    from ftdrift.analysis.deployment import served_methods

    config = {"full": {}, "lora": {"peft": {"peft_type": "LORA"}}, "ia3": {"peft": {"peft_type": "IA3"}}}
    assert (served_methods(config, "full", None).full, served_methods(config, "full", None).adapter) == ("full", "lora")
    assert served_methods(config, "full", "ia3").variants() == ("full", "ia3_unmerged", "ia3_merged")
    # a reference that is itself an adapter: the whole models are the first method that trains every weight
    assert served_methods({"lora": config["lora"], "ft": {}}, "lora", None).full == "ft"
    with pytest.raises(ValueError, match="deployment.method"):
        served_methods(config, "full", "full")
    with pytest.raises(ValueError, match="needs a method that trains every weight"):
        served_methods({"lora": config["lora"]}, "lora", None)
