"""Acceptance of the README's main job: the embedded default's results can be trusted and every
analysis the issues asked for is there. Reads a finished run; it does not run one (that takes
about 14 minutes, so .ci/run runs the job and then this file):

    snakemake --cores all --config data_dir=../shared/data
    FTDRIFT_MAIN_JOB=$PWD python -m pytest -m main_job tests/system/test_main_job.py

The expected counts come from the config (config/config.yaml through ftdrift's own grid), so a
change of the embedded default's grid changes what is expected, not this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from ftdrift.study.config import load_config, resolve
from ftdrift.study.grid import compared_pairs, grid, task_seeds

pytestmark = pytest.mark.main_job


@pytest.fixture(scope="module")
def workdir() -> Path:
    path = os.environ.get("FTDRIFT_MAIN_JOB")
    if not path:
        pytest.fail("set FTDRIFT_MAIN_JOB to the folder where the main job ran (see this module's doc)")
    return Path(path)


@pytest.fixture(scope="module")
def config(workdir):
    return resolve(load_config([str(workdir / "config" / "config.yaml")], []), base_dir=workdir)


@pytest.fixture(scope="module")
def tables(workdir):
    folder = workdir / "results" / "tables"
    return {name: pd.read_csv(folder / f"{name}.csv") for name in (
        "runs", "drift", "best", "baselines", "deployment", "seed_floor", "verdicts", "methods",
        "intruder_intervention", "forgetting", "drift_by_layer", "intruders")}


def test_every_planned_run_starts_at_the_base_model_and_reproduces_itself(config, tables):
    """Step-0 CKA is 1 (the adapted model computes the base model), every saved model reproduces its
    predictions and metrics, every merged adapter equals the trained one."""
    runs, drift = tables["runs"], tables["drift"]
    assert len(runs) == len(grid(config)), runs[["task", "method", "seed"]]
    step0 = drift[(drift.metric == "linear_cka") & (drift.step == 0)]
    assert len(step0.groupby(["task", "method", "seed"])) == len(runs)
    assert (step0.value - 1).abs().max() <= 1e-6, step0.sort_values("value").head()
    assert runs.checkpoint_ok.all(), runs[~runs.checkpoint_ok.astype(bool)]
    adapters = runs[runs.method != config["analysis"]["reference_method"]]
    assert adapters.merge_ok.all() and (adapters.merge_max_abs_logit_diff <= 1e-4).all(), adapters
    print(f"trust checks: {len(runs)} runs; step-0 CKA within {(step0.value - 1).abs().max():.1e} of 1; "
          f"checkpoints validated; merges within {adapters.merge_max_abs_logit_diff.max():.1e}")


def test_baselines_stability_and_deployment(workdir, tables):
    best, baselines, runs = tables["best"], tables["baselines"], tables["runs"]
    assert (workdir / "results" / "tables" / "summary.md").stat().st_size > 0
    assert best.trivial_val.notna().all() and best.probe_val.notna().all(), best
    assert set(baselines.task) == set(runs.task) and (baselines.status == "ok").all(), baselines
    assert runs.unstable.notna().all() and runs.beats_trivial.notna().all(), runs
    deployment = tables["deployment"]
    assert {"inference", "multi_task", "adapter_ops"} <= set(deployment.section), deployment.section.unique()
    assert (deployment.p50_ms.dropna() > 0).all()


def test_two_seeds_give_a_seed_floor_and_a_tested_verdict_per_comparison(config, workdir, tables):
    """Every comparison of the grid (task x method run with the reference) has its verdict row; the
    tasks with two seeds have a seed floor per method, an H2 p-value and both similarity tables."""
    verdicts, floor = tables["verdicts"], tables["seed_floor"]
    pairs = compared_pairs(config)
    assert sorted(zip(verdicts.task, verdicts.method)) == sorted(pairs), verdicts[["method", "task"]]
    two_seeds = [task for task in config["tasks"] if len(task_seeds(config, task)) >= 2]
    assert two_seeds, "the embedded default should give at least one task two seeds"
    for task in two_seeds:
        methods = {run.method for run in grid(config) if run.task == task}
        assert set(floor[floor.task == task].method) == methods and floor.final.any(), floor.head()
        for method in methods - {config["analysis"]["reference_method"]}:
            row = verdicts.set_index(["method", "task"]).loc[(method, task)]
            assert row.analysis == "paired by seed (n = 2)" and 0 < row.h2_p_value <= 1 and row.h2_seed_floor > 0, row
            assert row.h1_verdict in ("supported", "not supported", "inconclusive") and isinstance(row.h2_reason, str)
            similarity = pd.read_csv(workdir / "results" / "similarity" / task / f"{method}.csv")
            layers = pd.read_csv(workdir / "results" / "similarity" / task / f"{method}_layers.csv")
            assert similarity.seed.nunique() == 2 and len(layers) > 0, similarity.head()


def test_methods_are_ranked_and_intruders_intervened_on(config, tables):
    """The method view ranks every compared method of a task 1..n by closeness to the reference; the
    intruder intervention covers every adapter method of its tasks."""
    methods, reference = tables["methods"], config["analysis"]["reference_method"]
    for task in config["tasks"]:
        ranked = methods[(methods.task == task) & (methods.method != reference)].sort_values("closeness_rank")
        assert list(ranked.closeness_rank) == list(range(1, len(ranked) + 1)), ranked
        print(f"{task}: methods by closeness to {reference}: " + ", ".join(
            f"{r.method} (mean similarity {r.similarity_mean:.3f}, {r.trainable_params:,.0f} trainable)"
            for r in ranked.itertuples()))
    intervention = tables["intruder_intervention"]
    wanted = {run.method for run in grid(config) if run.task in config["intruders"]["tasks"]} - {reference}
    assert set(intervention.method) == wanted and intervention.value.notna().all(), intervention


def test_forgetting_drift_by_layer_and_intruders(config, tables):
    forgetting = tables["forgetting"]
    assert len(forgetting) == len(grid(config)) and forgetting.out_of_task_drift.notna().all(), forgetting
    assert (forgetting.lm_status == "skipped").all()  # MiniLM (bert) has no LM head: said, not silent
    by_layer = tables["drift_by_layer"]
    assert by_layer.probe_ci_low.notna().all() and by_layer.debiased_value_mean.notna().all(), by_layer
    assert tables["intruders"].intruders.notna().all()
