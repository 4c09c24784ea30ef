"""The workflow's tables as pandas frames: read with canonical keys, run statuses, chosen settings.

No plotting here: the HTML pages and the report's labels use it as well as the figures.
"Chosen setting" = the (lr, batch size) `best.csv` picked on dev for a task x method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ftdrift.study.grid import RUN_KEYS, format_float

STATUS_NAME = {"completed": "completed", "stopped_early": "stopped early", "diverged": "diverged", "failed": "failed",
               "missing": "missing (failed or not run)"}
NOT_COMPLETED = ("stopped_early", "diverged", "failed", "missing")


class _Methods:
    """The study's methods as the report shows them: the config's order with the reference method
    first, and each one's description (ftdrift.study.methods.Method.describe). Set once per report
    process by `configure_methods`; before that, methods sort by name and are labelled by name."""

    order: list[str] = []
    labels: dict[str, str] = {}
    reference: str | None = None
    adapters: list[str] = []  # methods that train an adapter on frozen base weights (merged for deployment)


def configure_methods(config: dict) -> None:
    """Take the method order, labels and reference from a resolved config (ftdrift.study.methods)."""
    from ftdrift.study import methods

    found = methods.from_config(config)
    _Methods.reference = methods.reference(config)
    _Methods.order = [_Methods.reference] + [m for m in found if m != _Methods.reference]
    _Methods.labels = {name: m.describe() for name, m in found.items()}
    _Methods.adapters = [name for name, m in found.items() if m.training_mode == "adapter"]


def adapter_methods() -> list[str]:
    """The configured methods that train an adapter (Method.training_mode 'adapter'), in report order."""
    return [m for m in _Methods.order if m in _Methods.adapters]


def method_order(present=None) -> list[str]:
    """The configured methods in report order; with `present` (an iterable of names) only those,
    unknown names last in sorted order."""
    if present is None:
        return list(_Methods.order)
    present = set(present)
    return [m for m in _Methods.order if m in present] + sorted(present - set(_Methods.order))


def reference_method() -> str | None:
    return _Methods.reference


def method_name(method: str) -> str:
    """The method's name as configured (user-chosen, the tables' `method` column)."""
    return method


def method_label(method: str) -> str:
    """'name (description)', e.g. 'lora (LORA r=8 (qv))', for legends and captions."""
    label = _Methods.labels.get(method)
    return f"{method} ({label})" if label and label != method else method


def lr_text(value) -> str:
    """A learning rate as run paths spell it ('1e-04' -> '1e-4'); a value that is no number stays as written."""
    try:
        return format_float(value)
    except (TypeError, ValueError):
        return str(value)


def setting_text(lr, batch_size) -> str:
    return f"lr {lr}, batch {batch_size}"


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns in one canonical form: lr string, integer batch size / seed / step / layer."""
    frame = frame.copy()
    if "lr" in frame:
        frame["lr"] = frame["lr"].map(lr_text).astype(object)
    for col in ("batch_size", "seed", "step", "layer"):
        if col in frame and frame[col].notna().all():
            frame[col] = frame[col].astype(int)
    for col in ("task", "method", "status", "pooling", "metric", "module", "layer_name", "main_metric"):
        if col in frame:
            frame[col] = frame[col].astype(object)
    return frame


def read_table(path, required: bool = True) -> pd.DataFrame | None:
    """A results table; None for an optional table that is absent or empty."""
    if path is None or (not required and not Path(path).exists()):
        return None
    try:
        frame = pd.read_csv(path, dtype={"lr": str})
    except pd.errors.EmptyDataError:
        if required:
            return pd.DataFrame()
        return None
    if frame.empty and not required:
        return None
    return normalise(frame)


def best_row(best: pd.DataFrame | None, task: str, method: str):
    if best is None or best.empty:
        return None
    sub = best[(best.task == task) & (best.method == method)]
    return None if sub.empty else sub.iloc[0]


def run_key(row) -> tuple:
    return tuple(row[k] for k in RUN_KEYS)


def status_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's run status: 'failed' where a row has none, 'completed' for a table without the column."""
    if "status" not in frame:
        return pd.Series("completed", index=frame.index)
    return frame["status"].fillna("failed")


def status_lookup(runs: pd.DataFrame | None) -> dict[tuple, str]:
    """Run key -> status."""
    if runs is None or runs.empty:
        return {}
    status = status_of(runs)
    return {tuple(k): s for k, s in zip(runs[RUN_KEYS].to_numpy().tolist(), status)}


def run_status(runs: pd.DataFrame | None, planned: Sequence[Mapping] | None = None) -> pd.DataFrame:
    """Every planned run with its status; runs absent from runs.csv are 'missing'.

    Runs in runs.csv that the current grid does not plan are kept too (status as recorded).
    """
    cols = RUN_KEYS + ["status"]
    have = (runs[[c for c in cols if c in runs]].copy() if runs is not None and not runs.empty
            else pd.DataFrame(columns=cols))
    if "status" not in have:
        have["status"] = "completed"
    have["status"] = have["status"].fillna("failed")
    if planned:
        plan = normalise(pd.DataFrame([{k: p[k] for k in RUN_KEYS} for p in planned]))
        plan["_order"] = range(len(plan))
        merged = plan.merge(have, on=RUN_KEYS, how="outer", indicator=True)
        merged.loc[merged["_merge"] == "left_only", "status"] = "missing"
        merged["planned"] = merged["_merge"] != "right_only"
        have = merged.drop(columns="_merge")
    else:
        have["planned"] = True
        have["_order"] = 0
    have = normalise(have)
    # the grid's order (tasks as configured); runs the grid no longer plans go last
    have = have.sort_values(RUN_KEYS, key=sort_key, kind="stable")
    have["_order"] = have["_order"].fillna(len(have))
    return have.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def sort_key(col: pd.Series):
    """Sort key of a key column: learning rates by value, methods in the grid's order."""
    if col.name == "lr":
        return col.map(lambda v: float(v) if _is_float(v) else math.inf)
    if col.name == "method":
        order = method_order(set(col))
        return col.map(order.index)
    return col


def _is_float(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def scale_note(values) -> str:
    """'(0–1)' or '(%)' from the values themselves: accuracy is 0–1, SQuAD scores 0–100."""
    arr = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if arr.empty:
        return ""
    return "(0–1)" if arr.abs().max() <= 1.0 + 1e-9 else "(%)"
