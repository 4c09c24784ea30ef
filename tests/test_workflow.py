"""The real workflow end to end on the tiny config (tiny random Llama + fixtures)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr

from helpers import REPO, make_tiny_workdir, run_snakemake

from conftest import SECRETS

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
    assert "| sst2 | full |" in summary and "H1" in summary


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
    assert np.allclose(step0.value, 1.0, atol=1e-3)
    full_last = cka[(cka.method == "full") & (cka.step == cka.step.max()) & (cka.layer > 0)]
    assert (full_last.value < 0.999).any()  # full fine-tuning moved the blocks


def test_secrets_never_written(finished):
    run_snakemake(finished, "--report", str(finished / "results/report.html"), env=SECRETS)
    files = [p for p in finished.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)  # W&B did log (offline)
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
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
    proc = run_snakemake(workdir, "-n", "--config", "training={'eval_steps': 0}", check=False)
    assert proc.returncode != 0
    assert "training.eval_steps" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def test_lint_passes():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
