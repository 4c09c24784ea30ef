"""A study with a diverging run ends with tables and a report that show it; with
analysis.allow_missing_runs, the tables cover the finished runs and list the rest as missing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from ftdrift.testing import make_tiny_workdir, run_snakemake

DIVERGING_LR = 1.0  # the schema's largest: the tiny Llama's logged loss rises far above its start by step 4


@pytest.fixture(scope="module")
def diverged_study(tmp_path_factory):
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("diverged"), tasks=["sst2"])
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config["grid"]["learning_rates"]["full"]["classification"] = [1e-3, DIVERGING_LR]
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workdir)
    return workdir


def test_a_diverged_run_is_a_result_left_out_of_means(diverged_study):
    runs = pd.read_csv(diverged_study / "results/tables/runs.csv", dtype={"lr": str})
    assert len(runs) == 3
    diverged = runs[runs.lr == "1e0"].iloc[0]
    assert diverged.status == "diverged" and diverged.diverged == True  # noqa: E712 (numpy bool)
    assert isinstance(diverged.divergence_reason, str) and diverged.divergence_reason
    metrics = json.loads((diverged_study / "results/runs/sst2/full/lr1e0_bs4_seed1/metrics.json").read_text())
    assert metrics["meta"]["status"] == "diverged"
    best = pd.read_csv(diverged_study / "results/tables/best.csv", dtype={"lr": str}).set_index("method")
    assert best.loc["full", "lr"] == "1e-3" and best.loc["full", "n_seeds"] == 1
    summary = (diverged_study / "results/tables/summary.md").read_text()
    assert "| sst2 | full | 1e0 | 4 | 1 | diverged |" in summary
    overview = (diverged_study / "results/report/overview/overview.html").read_text()
    assert "1 diverged" in overview
    stability = (diverged_study / "results/report/training/sst2/stability.html").read_text()
    assert "diverged" in stability


def test_tables_from_finished_runs_mark_the_rest_missing(diverged_study):
    """A second seed is planned but, with allow_missing_runs, not run: the tables are rebuilt from
    the three finished runs and list the three new ones as missing."""
    config = yaml.safe_load((diverged_study / "tiny.yaml").read_text())
    config["grid"]["seeds"] = [1, 2]
    config["analysis"] = {"allow_missing_runs": True}
    path = diverged_study / "partial.yaml"
    path.write_text(yaml.safe_dump(config))
    dry = run_snakemake(diverged_study, "-n", configfile=path)
    assert "finetune" not in dry.stdout.split("Job stats:")[1].split("Reasons:")[0]
    run_snakemake(diverged_study, configfile=path)
    runs = pd.read_csv(diverged_study / "results/tables/runs.csv", dtype={"lr": str})
    assert sorted(runs[runs.seed == 2].status) == ["missing"] * 3
    assert sorted(runs[runs.seed == 1].status) == ["completed", "completed", "diverged"]
    head = json.loads((diverged_study / "results/report/overview/headline.json").read_text())
    assert "2 of 6 finished" in head["runs"] and "1 diverged" in head["runs"] and "3 failed or missing" in head["runs"]
