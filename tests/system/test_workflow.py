"""The real workflow end to end on the tiny config (tiny random Llama + fixtures)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr

from ftdrift.testing import REPO, make_tiny_workdir, run_snakemake

RUNS = 8  # 4 tasks x (full, lora) x 1 lr x 1 batch size x 1 seed


@pytest.fixture()
def finished(tiny_run):
    return tiny_run


def test_tables_have_one_row_per_run(finished):
    runs = pd.read_csv(finished / "results/tables/runs.csv")
    assert len(runs) == RUNS
    assert set(runs.task) == {"sst2", "mrpc", "rte", "squad_v2"} and set(runs.method) == {"full", "lora"}
    assert runs.val_main.notna().all() and runs.dev_main.notna().all()
    squad = runs[runs.task == "squad_v2"]
    assert {"val_HasAns_f1", "val_NoAns_f1"} <= set(squad.columns)
    assert (runs.trainable_params < runs.total_params).any()
    summary = (finished / "results/tables/summary.md").read_text()
    assert "| sst2 | full | 1e-3 | 4 | accuracy | 1 |" in summary
    assert "| lora | squad_v2 | f1 | unpaired (full n = 1, lora n = 1) |" in summary  # a verdict row, one seed each
    assert "FAILED" not in summary


def test_every_saved_model_reproduces_its_results(finished):
    """The checkpoint validator ran for every run; reloads are exact, merges within 1e-4."""
    runs = pd.read_csv(finished / "results/tables/runs.csv")
    assert runs.checkpoint_ok.all() and (runs.reload_prediction_mismatches == 0).all()
    lora = runs[runs.method == "lora"]
    assert lora.merge_ok.all() and (lora.merge_max_abs_logit_diff <= 1e-4).all()
    assert runs[runs.method == "full"].merge_max_abs_logit_diff.isna().all()
    for path in (finished / "results/checks").rglob("*.json"):
        check = json.loads(path.read_text())
        assert check["passed"] and check["n_examples"] > 0, path


def test_representation_stores(finished):
    base = zarr.open_group(str(finished / "results/representations/base/sst2.zarr"), mode="r")
    assert base["mean"].shape == (3, 8, 32)  # embeddings + 2 blocks, 8 probe examples, hidden 32
    assert tuple(base["mean"].metadata.dimension_names) == ("layer", "example", "hidden")
    assert set(base.attrs["poolings"]) == {"mean", "last"} and len(base.attrs["probe_ids"]) == 8
    run = zarr.open_group(str(finished / "results/runs/sst2/lora/lr5e-3_bs4_seed1/representations.zarr"), mode="r")
    assert list(run["step"][...]) == [0, 2, 4, 6]
    assert run["mean"].shape == (4, 3, 8, 32)


def test_step0_drift_is_identity_and_later_steps_move(finished):
    drift = pd.read_csv(finished / "results/tables/drift.csv")
    cka = drift[(drift.metric == "linear_cka") & (drift.pooling == "mean")]
    assert len(cka.groupby(["task", "method"])) == RUNS
    step0 = cka[cka.step == 0]
    assert np.allclose(step0.value, 1.0, atol=1e-6)  # the model before its first update is the base model
    full_last = cka[(cka.method == "full") & (cka.step == cka.step.max()) & (cka.layer > 0)]
    assert (full_last.value < 0.999).any()  # full fine-tuning moved the blocks


def test_secrets_never_written(finished, secrets):
    run_snakemake(finished, "--report", str(finished / "results/report.html"), env=secrets)
    files = [p for p in finished.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)  # W&B did log (offline)
    for path in files:
        data = path.read_bytes()
        for name, secret in secrets.items():
            assert secret.encode() not in data, f"{name} leaked into {path}"


def test_second_call_has_nothing_to_do(finished):
    proc = run_snakemake(finished, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_renders(finished):
    run_snakemake(finished, "--report", str(finished / "results/report.html"))
    html = (finished / "results/report.html").read_text()
    assert len(html) > 10_000 and "Drift" in html


def test_study_plans_96_finetune_jobs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(REPO / "config/study.yaml"), "--quiet", "rules"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(line.split()[:2] for line in proc.stdout.splitlines() if line[:1].isalpha() and len(line.split()) == 2
                  and line.split()[1].isdigit())
    assert counts["finetune"] == "96"


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    workdir = make_tiny_workdir(tmp_path)
    # Snakemake passes the nested 0 as the string '0'; coerced, it is refused for its value, not its type
    proc = run_snakemake(workdir, "-n", "--config", "training={'eval_steps': 0}", check=False)
    assert proc.returncode != 0
    assert "config key 'training.eval_steps': 0 is less than the minimum of 1" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def test_lint_passes():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_snakefmt_is_clean():
    """The rules are formatted by snakefmt (settings in pyproject.toml): `snakefmt Snakefile rules/`."""
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("target, message", [
    ("lr1e-03_bs4_seed1", "'lr1e-03' is not in canonical form; write 'lr1e-3'"),
    ("lr1.0e-3_bs4_seed1", "'lr1.0e-3' is not in canonical form; write 'lr1e-3'"),
    ("lr7e-3_bs4_seed1", "'lr7e-3' is not a point of the grid"),
    ("lr1e-3_bs8_seed1", "'bs8' is not a point of the grid"),
])
def test_off_grid_targets_are_refused_naming_the_grid(finished, target, message):
    proc = run_snakemake(finished, "-n", f"results/runs/sst2/full/{target}/metrics.json", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_a_failing_finetune_job_runs_once(tmp_path):
    """Only out-of-memory errors are retried (inside the job): a config error stops at once."""
    workdir = make_tiny_workdir(tmp_path)
    target = "results/runs/sst2/lora/lr5e-3_bs4_seed1/metrics.json"
    methods = "methods={'full': {}, 'lora': {'peft': {'peft_type': 'LORA', 'target_modules': ['no_such_proj']}}}"
    proc = run_snakemake(workdir, target, "--config", methods, check=False)
    log = (workdir / "results/logs/finetune/sst2/lora/lr5e-3_bs4_seed1.log").read_text()
    assert proc.returncode != 0
    assert "config key 'methods.lora.peft', method 'lora'" in log and "['no_such_proj'] match no module" in log
    assert log.count("Traceback") == 1 and "Trying to restart" not in proc.stdout + proc.stderr
