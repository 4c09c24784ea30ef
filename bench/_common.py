"""Shared helpers of the benchmarks: data preparation, thread control, timing, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MINILM = {"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"}


def data_dir(arg: str | None = None) -> Path:
    """Folder with the original task files: --data-dir, else $FTDRIFT_DATA_DIR, else ../shared/data."""
    explicit = arg or os.environ.get("FTDRIFT_DATA_DIR")
    candidate = Path(explicit) if explicit else REPO.parent / "shared" / "data"
    if (candidate / "glue" / "SST-2" / "train.tsv").is_file():
        return candidate.resolve()
    raise SystemExit(f"bench: no task data in {candidate}; pass --data-dir DIR or set FTDRIFT_DATA_DIR "
                     "(the folder holding glue/SST-2/train.tsv, see config/tasks.yaml `files`)")


def default_config() -> dict:
    """The embedded default config (config/config.yaml), resolved with the schema defaults."""
    from ftdrift.study import config as ftconfig

    return ftconfig.resolve(ftconfig.load_yaml(REPO / "config" / "config.yaml"))


def prepare(task: str, data: Path, out_root: Path, probe_size: int = 1000,
            max_validation: int | None = None) -> tuple[Path, dict]:
    """Prepare one task's splits with ftdrift.data.tasks (embedded-default settings; probe size and
    validation cap as given). Returns (folder with train/dev/validation/probe.jsonl, the task's
    resolved settings). The files go to a scratch folder outside the repository.
    """
    from ftdrift.data.tasks import prepare_task
    from ftdrift.study import config as ftconfig

    cfg = default_config()
    settings = ftconfig.task_settings(cfg, task)
    settings["data"].update(probe_size=probe_size, max_validation_examples=max_validation)
    folder = out_root / "data" / f"{task}-probe{probe_size}-val{max_validation}"
    if not (folder / "probe.jsonl").exists():
        prepare_task(task, ftconfig.load_catalog(REPO / "config" / "tasks.yaml")[task], data,
                     settings["data"], folder)
    return folder, settings


@contextlib.contextmanager
def threads(n: int):
    """Limit torch intra-op threads and BLAS (OpenBLAS/MKL) threads to n inside the block."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def best_of(fn, repeats: int):
    """(min wall seconds over `repeats` calls, last result). min is the least load-sensitive."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def median(values):
    return statistics.median(values) if values else float("nan")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    import numpy
    import peft
    import snakemake
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "host": platform.node(), "platform": platform.platform(), "cpu": cpu,
        "cpus": os.cpu_count(), "mem_gb": mem_gb,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "numpy": numpy.__version__, "snakemake": snakemake.__version__,
        "load_avg_at_start": load(),
    }


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
