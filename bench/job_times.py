"""Where a workflow run's time went: wall seconds per rule and per job, and per stage inside the
fine-tuning jobs (docs/performance.md's breakdown of the embedded default).

    python bench/job_times.py [WORKDIR]        # default: the repository itself

Per job: from Snakemake's own log (.snakemake/log/, the newest one that finished jobs): a job
starts at the timestamp printed before its `rule X:` block and ends at its `Finished jobid`
line. The log's timestamps have one-second resolution, so jobs of a second or two read as 1-3 s.
Per stage: `meta.stage_seconds` of every results/runs/**/metrics.json (ftdrift.training.timing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections import defaultdict
from pathlib import Path

STAMP = "%a %b %d %H:%M:%S %Y"


def job_seconds(log: Path) -> list[dict]:
    """[{rule, wildcards, seconds}] of every finished job in one Snakemake log."""
    now, rule, jobs, started, done = None, None, {}, {}, []
    for line in log.read_text(errors="replace").splitlines():
        text = line.strip()
        if m := re.fullmatch(r"\[(.+)\]", text):
            try:
                now = dt.datetime.strptime(m.group(1), STAMP)
            except ValueError:
                pass
        elif m := re.match(r"(?:local)?rule (\w+):", text):
            rule = m.group(1)
        elif (m := re.match(r"jobid: (\d+)", text)) and rule:
            job = int(m.group(1))
            jobs[job], started[job], rule = {"rule": rule, "wildcards": ""}, now, None
        elif (m := re.match(r"wildcards: (.+)", text)) and jobs:
            jobs[max(jobs)]["wildcards"] = m.group(1)
        elif (m := re.search(r"Finished jobid: (\d+)", text)) and int(m.group(1)) in started:
            job = int(m.group(1))
            done.append({**jobs[job], "seconds": (now - started[job]).total_seconds()})
    return done


def newest_log(workdir: Path) -> Path:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    with_jobs = [p for p in logs if "Finished jobid" in p.read_text(errors="replace")]
    if not with_jobs:
        raise SystemExit(f"no Snakemake log with finished jobs under {workdir}/.snakemake/log")
    return with_jobs[-1]


def stage_seconds(workdir: Path) -> dict[str, dict[str, float]]:
    """{run path: {stage: seconds}} from the fine-tuning jobs' metrics.json."""
    out = {}
    for path in sorted((workdir / "results" / "runs").glob("*/*/*/metrics.json")):
        stages = json.loads(path.read_text())["meta"].get("stage_seconds")
        if stages:
            out[str(path.parent.relative_to(workdir / "results" / "runs"))] = stages
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--jobs", action="store_true", help="list every job, not only the rule totals")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    log = newest_log(workdir)
    jobs = job_seconds(log)
    by_rule = defaultdict(list)
    for job in jobs:
        by_rule[job["rule"]].append(job)
    total = sum(j["seconds"] for j in jobs)
    print(f"{log}\n{len(jobs)} jobs, {total:.0f} s of job time\n")
    print("| rule | jobs | job time (s) | mean (s) | share |\n|---|---:|---:|---:|---:|")
    for rule, items in sorted(by_rule.items(), key=lambda kv: -sum(j["seconds"] for j in kv[1])):
        seconds = sum(j["seconds"] for j in items)
        print(f"| {rule} | {len(items)} | {seconds:.0f} | {seconds / len(items):.1f} | {seconds / total:.0%} |")
        if args.jobs:
            for job in sorted(items, key=lambda j: -j["seconds"]):
                print(f"|   {job['wildcards']} | | {job['seconds']:.0f} | | |")
    stages = stage_seconds(workdir)
    if stages:
        names = list(dict.fromkeys(name for s in stages.values() for name in s))
        print("\nfine-tuning jobs by stage (s):\n")
        print("| run | " + " | ".join(names) + " | total |\n|---|" + "---:|" * (len(names) + 1))
        sums = defaultdict(float)
        for run, s in stages.items():
            for name in names:
                sums[name] += s.get(name, 0.0)
            print(f"| {run} | " + " | ".join(f"{s.get(n, 0.0):.1f}" for n in names) + f" | {sum(s.values()):.1f} |")
        grand = sum(sums.values())
        print("| **all runs** | " + " | ".join(f"{sums[n]:.0f} ({sums[n] / grand:.0%})" for n in names)
              + f" | {grand:.0f} |")


if __name__ == "__main__":
    main()
