"""The tiny workflow end to end on a real (single-node) SLURM cluster, through profiles/slurm.

`.ci/slurm.sh` installs Debian's slurm-wlm + munge and starts the daemons on this machine.
The test skips only when SLURM cannot be installed here (not Debian, not root, no network),
and fails instead when CI=true: CI must exercise this path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ftdrift.testing import REPO, make_tiny_workdir, result_files, run_snakemake

pytestmark = pytest.mark.slow

SCRIPT = REPO / ".ci" / "slurm.sh"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TASKS = ["sst2"]


def _slurm(cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster():
    was_running = shutil.which("sinfo") is not None and _slurm("status", 60).returncode == 0
    install = _slurm("install")
    if install.returncode != 0:
        msg = f".ci/slurm.sh install failed, SLURM unavailable here:\n{install.stdout}\n{install.stderr}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    start = _slurm("start", 300)
    assert start.returncode == 0, f".ci/slurm.sh start failed:\n{start.stdout}\n{start.stderr}"
    yield
    if not was_running:
        stop = _slurm("stop", 120)
        assert stop.returncode == 0, stop.stderr


def test_sbatch_runs_a_job(slurm_cluster, tmp_path):
    out = tmp_path / "hostname.out"
    sub = subprocess.run(["sbatch", "--parsable", "--wait", "--mem", "100", "-t", "2", "-o", str(out),
                          "--wrap", "hostname"], capture_output=True, text=True, timeout=180)
    assert sub.returncode == 0, sub.stderr
    assert out.read_text().strip() == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()


def task_files(files: dict[str, Path]) -> dict[str, Path]:
    """The per-task outputs of TASKS (the tables aggregate over every task of a study)."""
    return {k: v for k, v in files.items()
            if any(f"/{task}/" in k or f"/{task}." in k or f"/{task}_" in k for task in TASKS)}


def task_rows(table: Path) -> pd.DataFrame:
    frame = pd.read_csv(table)
    return frame[frame.task.isin(TASKS)].reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(slurm_cluster, tiny_run, tmp_path_factory):
    """The tiny study through the SLURM profile, next to the session's local run of it. One
    task is enough to go through every rule and keeps the SLURM run to a few minutes on two
    cores; the local run has all tasks, so outputs are compared task by task."""
    cluster = make_tiny_workdir(tmp_path_factory.mktemp("slurm"), tasks=TASKS)
    proc = run_snakemake(
        cluster,
        # the project's SLURM profile, as documented (docs/cluster.md) ...
        "--workflow-profile", str(REPO / "profiles" / "slurm"),
        # ... with this cluster's small CPU node and quick status polling
        "--jobs", "4",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs",
        env={"FTDRIFT_SLURM_PARTITION": "debug"},
    )
    return tiny_run, cluster, proc.stdout + proc.stderr


def test_jobs_went_through_slurm(runs):
    _local, cluster, log = runs
    assert "has been submitted with SLURM jobid" in log
    logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    rules = {p.relative_to(cluster / ".snakemake" / "slurm_logs").parts[0] for p in logs}
    assert {"rule_prepare_data", "rule_finetune", "rule_drift"} <= rules, rules


def test_same_outputs_as_local_run(runs):
    local, cluster, _log = runs
    a, b = task_files(result_files(local)), task_files(result_files(cluster))
    assert a and set(a) == set(b), sorted(set(a) ^ set(b))
    assert {"results/tables/runs.csv", "results/tables/drift.csv"} <= set(result_files(cluster))
    runs_a = task_rows(local / "results/tables/runs.csv")
    runs_b = task_rows(cluster / "results/tables/runs.csv")
    assert len(runs_a) == len(runs_b) > 0
    keys = ["task", "method"]
    runs_a, runs_b = runs_a.sort_values(keys).reset_index(drop=True), runs_b.sort_values(keys).reset_index(drop=True)
    assert runs_a[keys].equals(runs_b[keys])
    # Training is seeded and runs with the same thread count: metrics agree.
    metric_cols = [c for c in runs_b.columns if c.startswith(("val_", "dev_")) and runs_b[c].dtype.kind == "f"]
    assert metric_cols
    pd.testing.assert_frame_equal(runs_a[metric_cols], runs_b[metric_cols], rtol=1e-4, atol=1e-6)
    drift_a = task_rows(local / "results/tables/drift.csv")
    drift_b = task_rows(cluster / "results/tables/drift.csv")
    cols = [c for c in drift_a.columns if c != "value"]
    merged = drift_a.merge(drift_b, on=cols, suffixes=("_local", "_slurm"))
    assert len(merged) == len(drift_a) == len(drift_b) > 0
    assert (merged.value_local - merged.value_slurm).abs().max() < 1e-4


def test_prepared_data_is_identical(runs):
    """Data preparation is deterministic: byte-identical files either way."""
    local, cluster, _log = runs
    a, b = task_files(result_files(local)), task_files(result_files(cluster))
    data = [k for k in a if k.startswith("results/data/") and not k.endswith(".json")]
    assert data
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert {k: digest(a[k]) for k in data} == {k: digest(b[k]) for k in data}
