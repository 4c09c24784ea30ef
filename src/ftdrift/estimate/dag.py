"""Jobs per rule, planned by Snakemake itself (a dry run), so finished targets are not counted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ftdrift.estimate.hardware import EstimateError
from ftdrift.study.config import PACKAGE_ROOT

_ROW = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)\s*$")


def parse_job_table(text: str) -> dict[str, int]:
    """{rule: jobs} from the 'Job stats' table of `snakemake -n --quiet rules` (the 'total' row dropped)."""
    counts, inside = {}, False
    for line in text.splitlines():
        if line.startswith("Job stats"):
            inside = True
            continue
        match = _ROW.match(line.strip()) if inside else None
        if match:
            counts[match.group(1)] = int(match.group(2))
        elif inside and counts and not line.strip():
            break
    counts.pop("total", None)
    return counts


class PlannedJobs:
    """`snakemake -n` started in the background (it takes seconds; the estimate tokenises meanwhile)."""

    def __init__(self, configfiles: list[str], overrides: list[str], directory: str | os.PathLike = ".",
                 snakefile: str | os.PathLike | None = None):
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
               "-s", str(snakefile or PACKAGE_ROOT / "Snakefile"), "--directory", str(directory)]
        if configfiles:
            cmd += ["--configfile", *[str(Path(f).resolve()) for f in configfiles]]
        if overrides:
            cmd += ["--config", *overrides]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def result(self, timeout: float = 600) -> dict[str, int]:
        """Jobs per rule ({} when nothing is left to do); EstimateError with Snakemake's message if
        planning fails (e.g. a bad config)."""
        try:
            text, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise EstimateError(f"snakemake -n did not finish within {timeout:g} s") from None
        if self.process.returncode != 0:
            raise EstimateError(f"snakemake -n failed ({self.process.returncode}):\n{text.strip()[-3000:]}")
        return parse_job_table(text)


def job_counts(configfiles: list[str], overrides: list[str], directory: str | os.PathLike = ".",
               snakefile: str | os.PathLike | None = None, timeout: float = 600) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` plans in `directory` with these config files and
    `--config` overrides ({} when nothing is left to do). EstimateError if planning fails."""
    return PlannedJobs(configfiles, overrides, directory, snakefile).result(timeout)
