"""Labels of the report's entries (the columns a reader picks from), computed while --report renders.

rules/report.smk imports this at report time only, never while the workflow is parsed; it
needs no matplotlib.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ftdrift.report.frames import STATUS_NAME, read_table, run_status
from ftdrift.report.overview import HEADLINE_KEYS
from ftdrift.study.grid import RUN_KEYS, RUN_PATTERN

_RUN_LABEL_CACHE: dict[tuple, dict] = {}


def read_headline(path) -> dict[str, str]:
    """Labels of the Overview entry (the headline report_overview wrote)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"page": "study overview"}
    keys = [k for k in HEADLINE_KEYS if k in data] + sorted(k for k in data if k not in HEADLINE_KEYS)
    return {str(k): str(data[k]) for k in keys}  # label columns in this order


def run_entry_labels(planned: Sequence[Mapping], runs_csv, wildcards) -> dict[str, str]:
    """Labels of one run's report entry (task, method, lr, batch size, seed, status).

    Computed for all runs at once (labels are only safe as a set, see `safe_labels`), once per
    version of runs.csv.
    """
    path = str(runs_csv)
    stamp = (path, os.path.getmtime(path), len(planned))
    if stamp not in _RUN_LABEL_CACHE:
        _RUN_LABEL_CACHE[stamp] = run_labels(planned, read_table(path))
    w = {k: str(getattr(wildcards, k)) for k in RUN_KEYS}
    fallback = {"task": w["task"], "method": w["method"], "lr": w["lr"], "batch size": w["batch_size"],
                "seed": w["seed"], "status": "not in the current grid"}
    return _RUN_LABEL_CACHE[stamp].get(RUN_PATTERN.format(**w), fallback)


def run_labels(planned: Sequence[Mapping], runs: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    """Labels for per-run report entries, keyed by run path (RUN_PATTERN)."""
    status = run_status(runs, planned)
    status = status[status.planned]
    records, paths = [], []
    for _, r in status.iterrows():
        records.append({"task": r.task, "method": r.method, "lr": r.lr, "batch size": int(r.batch_size),
                        "seed": int(r.seed), "status": STATUS_NAME.get(r.status, r.status)})
        paths.append(RUN_PATTERN.format(task=r.task, method=r.method, lr=r.lr, batch_size=int(r.batch_size),
                                        seed=int(r.seed)))
    return dict(zip(paths, safe_labels(records)))


def safe_labels(records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Report labels that render: string values, unique rows, no toggle that can point nowhere.

    Snakemake's report turns a non-first label with exactly two values, each on half of the
    results, into a toggle; if some row lacks one of the two values, selecting it crashes the
    page. Such a label is moved to the front (the first label never toggles).
    """
    recs = [{str(k): str(v) for k, v in r.items()} for r in records]
    if not recs:
        return []
    keys = list(recs[0])
    for _ in range(len(keys) + 1):
        cands = _toggle_candidates(recs, keys)
        if len(cands) != 1 or _toggle_safe(recs, keys, cands[0]):
            break
        keys = [cands[0]] + [k for k in keys if k != cands[0]]
    else:  # pathological: one merged label
        return [{" · ".join(keys): " · ".join(r[k] for k in keys)} for r in recs]
    return [{k: r[k] for k in keys} for r in recs]


def _toggle_candidates(records: Sequence[Mapping[str, str]], keys: Sequence[str]) -> list[str]:
    """Labels Snakemake's report would turn into a toggle (mirrors abstract_results.js)."""
    out = []
    if len(keys) < 2:
        return out
    n = len(records)
    for key in keys[1:]:
        values = [r[key] for r in records if key in r]
        unique = set(values)
        if len(unique) == 2 and all(values.count(v) * 2 == n for v in unique):
            out.append(key)
    return out


def _toggle_safe(records: Sequence[Mapping[str, str]], keys: Sequence[str], toggle: str) -> bool:
    """Every row of the table has both toggle values (else the report's JavaScript crashes)."""
    groups: dict[tuple, set] = {}
    values = {r[toggle] for r in records}
    for r in records:
        groups.setdefault(tuple(r.get(k, "") for k in keys if k != toggle), set()).add(r[toggle])
    return all(g == values for g in groups.values())
