"""The weight-space tables of the whole study (results/tables/weights.csv, intruders.csv): the
per-run CSVs of ftdrift.analysis.weights read into one frame each. pandas only, so that rule
aggregate starts without torch and peft.
"""

from __future__ import annotations

import pandas as pd

from ftdrift.study.grid import RUN_KEYS

# results/weights/<run>.csv: one row per analysed matrix (after the RUN_KEYS)
ROW_KEYS = ["module", "layer", "matrix", "effective_rank", "stable_rank", "frobenius_norm",
            "top_singular_value", "intruder_dims", "rank_energy"]
# results/weights/<run>.intruders.csv: one row per matrix x top-k x ε (after the RUN_KEYS)
SWEEP_KEYS = ["module", "layer", "matrix", "k", "epsilon", "intruders"]


def _read_run_tables(paths, columns: list[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype={"lr": str}) for p in paths]
    if not frames:
        return pd.DataFrame(columns=columns)
    for path, frame in zip(paths, frames):
        missing = [c for c in columns if c not in frame]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing (written by an older weight_analysis? re-run it)")
    return pd.concat(frames, ignore_index=True)


def aggregate_weights(paths) -> pd.DataFrame:
    """All runs' per-matrix rows (RUN_KEYS + ROW_KEYS, rank_energy included) in one table (lr kept as
    its path string, e.g. '5e-3'). Raises ValueError naming a file that lacks a column."""
    return _read_run_tables(paths, RUN_KEYS + ROW_KEYS)


def aggregate_intruders(paths) -> pd.DataFrame:
    """All runs' intruder sweeps (results/weights/<run>.intruders.csv) in one table: RUN_KEYS + SWEEP_KEYS
    = task, method, lr, batch_size, seed, module, layer, matrix, k, epsilon, intruders; one row per run x
    matrix x k x ε (lr kept as its path string). Raises ValueError naming a file that lacks a column."""
    return _read_run_tables(paths, RUN_KEYS + SWEEP_KEYS)
