"""Fixtures shared across tests/<package folder>/ (tests/system/conftest.py: the end-to-end run's).

Tests under tests/system/ are marked `system` here (`python -m pytest -m "not system"`: the fast loop).
Helpers live in fixtures, not in modules to import: each test file's own folder is what pytest puts
on sys.path, so a test file imports nothing from another folder's tests.
"""

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from ftdrift.testing import make_tiny_workdir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYSTEM = Path(__file__).resolve().parent / "system"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/system/ is a system test (end to end, services, browsers, SLURM)."""
    for item in items:
        if SYSTEM in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.system)


# ----------------------------------------------------------------------------- the tiny job, in-process
class TinyJob(NamedTuple):
    """The tiny config's SST-2 and SQuAD v2 prepared for fine-tuning jobs called in-process
    (ftdrift.training.recipe.finetune): the work folder, the resolved config, each task's settings;
    with the job's arguments and how to read, compare and interrupt what a job writes."""

    workdir: Path
    cfg: dict
    data: dict

    def run_kwargs(self, out: Path, task="sst2", method="full", lr="1e-3", **training) -> dict:
        """The job's keyword arguments; `method` one of the tiny config's (else set method_spec after)."""
        from ftdrift.training.recipe import RunOutputs

        settings = json.loads(json.dumps(self.data[task]))
        settings["training"].update(training)
        return dict(
            run={"task": task, "method": method, "lr": lr, "batch_size": 4, "seed": 1},
            task_def=catalog()[task], settings=settings, model_cfg=self.cfg["model"],
            method_spec=self.cfg["methods"].get(method, {}),
            wandb_cfg={"mode": "disabled", "project": "ftdrift", "entity": None},
            data_dir=self.workdir / "prepared" / task, work_dir=out / "work",
            outputs=RunOutputs(metrics=out / "metrics.json", train_log=out / "train_log.csv",
                               predictions=out / "predictions.json", representations=out / "reps.zarr",
                               model=out / "model"),
            threads=1)

    @staticmethod
    def reps(path: Path) -> tuple[np.ndarray, dict]:
        """A job's snapshot store: its steps and each pooling's snapshots."""
        import zarr

        group = zarr.open_group(str(path), mode="r")
        return group["step"][...], {p: group[p][...] for p in group.attrs["poolings"]}

    @staticmethod
    def comparable(metrics: dict) -> dict:
        """A job's metrics without its timings and resume point: what two runs of one job must share."""
        meta = {k: v for k, v in metrics["meta"].items() if k not in ("train_seconds", "resumed_from", "stage_seconds")}
        return {**metrics, "meta": meta}

    @staticmethod
    def stop_at(step: int):
        """A callback that kills the job (KeyboardInterrupt) right after the checkpoint of `step` was written."""
        from transformers import TrainerCallback

        class StopAt(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return StopAt()


@functools.cache
def catalog() -> dict:
    """The task catalog (config/tasks.yaml), read once."""
    from ftdrift.study import config as ftconfig

    return ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyJob:
    """The tiny work folder with SST-2 and SQuAD v2 prepared (once per test module)."""
    from ftdrift.data.tasks import prepare_task
    from ftdrift.study import config as ftconfig

    workdir = make_tiny_workdir(tmp_path_factory.mktemp("tiny"))
    cfg = ftconfig.resolve({**ftconfig.load_yaml(workdir / "tiny.yaml")})
    tasks = catalog()
    data = {}
    for task in ("sst2", "squad_v2"):
        settings = ftconfig.task_settings(cfg, task)
        prepare_task(task, tasks[task], Path(cfg["data_dir"]), settings["data"], workdir / "prepared" / task)
        data[task] = settings
    return TinyJob(workdir, cfg, data)


@pytest.fixture(scope="session")
def hand_linear_cka():
    """Linear CKA (Kornblith et al. 2019) written out: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""

    def cka(x: np.ndarray, y: np.ndarray) -> float:
        x = x.astype(np.float64) - x.astype(np.float64).mean(0)
        y = y.astype(np.float64) - y.astype(np.float64).mean(0)
        return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))

    return cka
