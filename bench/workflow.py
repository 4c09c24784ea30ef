"""Benchmark 5: planning time of the study DAG (`snakemake -n --configfile config/study.yaml`).

Run in a scratch working directory (`--directory`), so the repository's results/ and .snakemake/
are neither read nor touched:

* fresh     -- nothing exists yet: every job is planned (96 fine-tuning jobs and the rest);
* up-to-date -- every output of the DAG exists (created empty by this script, all with one
  mtime, taken from `snakemake --summary`), so the dry run must answer "Nothing to be done".

Each figure is the wall time of the whole command (interpreter start, Snakefile parsing, config
validation, DAG building), the best of `repeats` runs. `snakemake --version` is timed too: the
part of every figure that is Snakemake's own start-up (imports, plugin discovery), not the DAG.
The goal is on the difference (`*_beyond_startup_s`): what the workflow adds to a dry run
(Snakefile and rules, config loading and validation, input functions, DAG and up-to-date
checks), the part this project controls; Snakemake's own start-up is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load

DIRECTORY_SUFFIXES = (".zarr",)
DIRECTORY_NAMES = ("model",)


def snakemake_cmd(workdir: Path, configfile: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), *extra]


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def materialise_outputs(workdir: Path, summary: str) -> int:
    """Create every output listed by `snakemake --summary` (empty files / folders), one mtime."""
    paths = []
    for line in summary.splitlines()[1:]:
        path = line.split("\t", 1)[0].strip()
        if path:
            paths.append(workdir / path)
    stamp = time.time() - 60
    for path in paths:
        if path.suffix in DIRECTORY_SUFFIXES or path.name in DIRECTORY_NAMES:
            path.mkdir(parents=True, exist_ok=True)
            (path / ".keep").touch()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    for path in paths:  # equal mtimes: no output is older than its inputs
        os.utime(path, (stamp, stamp))
    return len(paths)


def run(configfile: Path | None = None, repeats: int = 1) -> dict:
    configfile = Path(configfile or REPO / "config" / "study.yaml").resolve()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    workdir = Path(tempfile.mkdtemp(prefix="ftdrift-bench-dag-"))
    try:
        load_before = load()
        # the floor: interpreter start, snakemake import and plugin discovery, no workflow
        startup_s = min(timed([sys.executable, "-m", "snakemake", "--version"], env)[0] for _ in range(repeats))
        fresh = [timed(snakemake_cmd(workdir, configfile, "-n", "--quiet"), env) for _ in range(repeats)]
        fresh_s = min(s for s, _ in fresh)
        _, summary = timed(snakemake_cmd(workdir, configfile, "--summary", "--quiet"), env)
        n_outputs = materialise_outputs(workdir, summary.stdout)
        uptodate = [timed(snakemake_cmd(workdir, configfile, "-n"), env) for _ in range(repeats)]
        uptodate_s = min(s for s, _ in uptodate)
        text = uptodate[-1][1].stdout + uptodate[-1][1].stderr
        jobs = sum(1 for line in summary.stdout.splitlines()[1:] if line.strip())
        return {
            "configfile": str(configfile.relative_to(REPO)) if configfile.is_relative_to(REPO) else str(configfile),
            "outputs_in_dag": n_outputs, "summary_rows": jobs,
            "snakemake_startup_s": startup_s, "fresh_dry_run_s": fresh_s, "uptodate_dry_run_s": uptodate_s,
            # the figures the goal is on: the dry run's own time, beyond Snakemake's start-up
            "fresh_beyond_startup_s": fresh_s - startup_s, "uptodate_beyond_startup_s": uptodate_s - startup_s,
            "uptodate_nothing_to_do": "Nothing to be done" in text,
            "load_avg": {"before": load_before, "after": load()},
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default=str(REPO / "config" / "study.yaml"))
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(run(Path(a.configfile), a.repeats), indent=2))
