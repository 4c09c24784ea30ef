"""Stale-only re-runs on the finished tiny workflow, counted job by job (dry runs only)."""

import re
import shutil
from pathlib import Path

import yaml

from ftdrift.testing import REPO, run_snakemake


def changed_config(workdir, **changes) -> Path:
    """A copy of the tiny config with some top-level keys replaced."""
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config.update(changes)
    path = workdir / f"changed-{'-'.join(changes)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir, snakefile=None, **changes):
    configfile = changed_config(workdir, **changes) if changes else None
    return run_snakemake(workdir, "-n", configfile=configfile, snakefile=snakefile)


def planned(workdir, snakefile=None, **changes) -> dict[str, int]:
    """Jobs per rule that a dry run would execute."""
    proc = dry_run(workdir, snakefile, **changes)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_complete_run_plans_nothing(tiny_run):
    assert planned(tiny_run) == {}


def tiny_methods(workdir) -> dict:
    return yaml.safe_load((workdir / "tiny.yaml").read_text())["methods"]


def test_one_methods_spec_reruns_only_its_jobs_and_downstream(tiny_run):
    methods = tiny_methods(tiny_run)
    methods["lora"]["peft"]["r"] = 2
    jobs = planned(tiny_run, methods=methods)
    assert jobs["finetune"] == 4 and jobs["drift"] == 4 and jobs["weight_analysis"] == 4
    assert "prepare_data" not in jobs and "base_representations" not in jobs
    proc = dry_run(tiny_run, methods=methods)
    assert "method=full" not in proc.stdout  # no full fine-tuning job (nor its drift) re-runs


def test_a_new_method_plans_exactly_its_own_jobs(tiny_run):
    """Adding a method trains it on every task and seed; no existing run's job re-runs."""
    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    methods = {**config["methods"], "ia3": {"peft": {"peft_type": "IA3", "target_modules": "attention"}}}
    grid = {**config["grid"], "learning_rates": {**config["grid"]["learning_rates"],
                                                 "ia3": {"classification": [1e-2], "extractive_qa": [1e-2]}}}
    jobs = planned(tiny_run, methods=methods, grid=grid)
    assert jobs["finetune"] == 4 and jobs["drift"] == 4 and jobs["weight_analysis"] == 4
    proc = dry_run(tiny_run, methods=methods, grid=grid)
    finetunes = [block for block in proc.stdout.split("\n\n") if "rule finetune:" in block]
    assert len(finetunes) == 4 and all("method=ia3" in block for block in finetunes)


def test_new_seed_adds_only_its_jobs_and_aggregates(tiny_run):
    grid = {"seeds": [1, 2], "batch_sizes": [4],
            "learning_rates": {"full": {"classification": [1e-3], "extractive_qa": [1e-3]},
                               "lora": {"classification": [5e-3], "extractive_qa": [5e-3]}}}
    proc = dry_run(tiny_run, grid=grid)
    jobs = planned(tiny_run, grid=grid)
    assert jobs["finetune"] == 8 and jobs["drift"] == 8 and jobs["aggregate"] == 1
    assert "seed=1" not in proc.stdout  # nothing of the existing seed re-runs
    assert "prepare_data" not in jobs and "base_representations" not in jobs


def test_drift_settings_rerun_only_drift_and_downstream(tiny_run):
    jobs = planned(tiny_run, drift={"metrics": ["linear_cka", "debiased_cka"]})
    assert jobs["drift"] == 8 and jobs["aggregate"] == 1
    assert not {"finetune", "prepare_data", "base_representations"} & set(jobs)


def test_wandb_settings_rerun_nothing(tiny_run):
    assert planned(tiny_run, wandb={"mode": "disabled"}) == {}


def workflow_copy(tmp_path: Path, src: bool = False) -> Path:
    """A copy of the workflow as a fresh clone has it: every file written now, so every script is
    newer than the finished run's outputs; `src`: with its own copy of the library (else a link)."""
    copy = tmp_path / "workflow"
    copy.mkdir(parents=True)
    for part in ("Snakefile", "rules", "workflow", "config", "report", "profiles", "envs"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, copy / part, copy_function=shutil.copy)  # new mtimes, as git clone gives
        elif source.exists():
            shutil.copy(source, copy / part)
    if src:
        shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    else:
        (copy / "src").symlink_to(REPO / "src")
    return copy


def test_a_fresh_clone_plans_nothing_and_a_code_version_reruns_its_stage(tiny_run, tmp_path):
    """Scripts newer than the outputs (a fresh clone) are no change; a bumped code version is, for
    its own stage and what reads it."""
    clone = workflow_copy(tmp_path / "clone")
    for script in (clone / "workflow" / "scripts").glob("*.py"):
        assert script.stat().st_mtime > (tiny_run / "results" / "tables" / "runs.csv").stat().st_mtime
    assert planned(tiny_run, snakefile=clone / "Snakefile") == {}
    bumped = workflow_copy(tmp_path / "bumped", src=True)
    versions = bumped / "src" / "ftdrift" / "study" / "versions.py"
    text = versions.read_text()
    assert '    "drift": 2,' in text
    versions.write_text(text.replace('    "drift": 2,', '    "drift": 3,'))
    jobs = planned(tiny_run, snakefile=bumped / "Snakefile")
    runs = len((tiny_run / "results" / "tables" / "runs.csv").read_text().splitlines()) - 1
    assert jobs.get("drift") == runs and not {"finetune", "prepare_data", "base_representations"} & set(jobs), jobs


def test_report_caption_edit_reruns_nothing(tiny_run, tmp_path):
    # a copy of the workflow with an edited caption: captions are read by --report only
    copy = workflow_copy(tmp_path)
    for caption in (copy / "report").glob("*.rst"):
        caption.write_text(caption.read_text() + "\\nEdited caption.\\n")
    assert planned(tiny_run, snakefile=copy / "Snakefile") == {}


REPORT_JOBS = {"report_overview": 1, "report_performance": 1, "report_drift": 4, "report_training": 4,
               "report_weights": 1, "report_similarity": 4, "report_forgetting": 1, "report_methods": 1, "all": 1}


def test_analysis_settings_rerun_only_the_statistics_and_the_report(tiny_run):
    """A table's confidence level or H2 metric changes no fine-tuning, drift, weight or check job."""
    analysis = {"confidence": 0.9, "bootstrap_resamples": 200, "h2_metric": "cosine"}
    assert planned(tiny_run, analysis=analysis) == {"aggregate": 1, "compare_methods": 1, **REPORT_JOBS}


def test_weight_settings_rerun_only_weight_analysis_and_downstream(tiny_run):
    jobs = planned(tiny_run, weights={"intruder_top_k": 5})
    # the intervention finds its intruders at the headline top-k
    assert jobs == {"weight_analysis": 8, "aggregate": 1, "compare_methods": 1, "intruder_intervention": 1,
                    "report_intruder_intervention": 1, **REPORT_JOBS}
