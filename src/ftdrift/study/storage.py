"""Where the workflow's files live: the local working directory, or a bucket (Snakemake's default
storage provider, as profiles/gcp-gpu sets it). What the rules ask about their own files, asked
where those files are.

* Data staging: a task's original files (config `data_dir`) exist on the machine that launches the
  workflow, not on a Batch VM, and a local absolute path is no storage query. With remote storage
  the files are staged into the bucket first (rule `stage_data`, a local rule that reads the local
  copy and writes `results/staged/<path below data_dir>`), and `prepare_data` reads the staged copy.
  Without remote storage `prepare_data` reads the configured folder directly, as before.
* Finished runs (analysis.allow_missing_runs): a run is finished when its metrics.json exists
  where the workflow keeps results: in the bucket on remote storage, not in the local folder
  (which on a fresh clone or a Batch VM holds nothing, and would make every run "missing").
  An error while asking the bucket stops the workflow: a run is never taken for missing (and its
  tables rebuilt without it) because the bucket could not be asked.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

STAGED_DIR = "results/staged"
# metrics.json is written last by a fine-tuning job: its presence means the run finished
FINISHED_MARKER = "results/runs/{run}/metrics.json"
EXISTS_THREADS = 8


class StagingError(RuntimeError):
    """A task file is neither on this machine nor staged in the bucket."""


# ----------------------------------------------------------------------------- the workflow's storage
def default_storage(workflow):
    """Snakemake's default storage provider of `workflow` (e.g. gcs), or None for local files."""
    if getattr(workflow.storage_settings, "default_storage_provider", None) is None:
        return None
    return workflow.storage_registry.default_storage_provider


def is_remote(workflow) -> bool:
    return default_storage(workflow) is not None


def storage_query(prefix: str | None, path: str) -> str:
    """The storage query of a workflow-relative `path` under the default storage prefix (as
    Snakemake builds it: prefix, one slash, the normalised path)."""
    prefix = (prefix or "").rstrip("/")
    path = PurePosixPath(path).as_posix().lstrip("/")
    return f"{prefix}/{path}" if prefix else path


def exists_in(workflow) -> Callable[[str], bool]:
    """`exists(path)` for workflow-relative paths: in the default storage when there is one, else
    on the local disk."""
    provider = default_storage(workflow)
    if provider is None:
        return lambda path: Path(path).exists()
    prefix = workflow.storage_settings.default_storage_prefix

    def exists(path: str) -> bool:
        return bool(provider.object(storage_query(prefix, path)).exists())

    return exists


def finished(runs: list, exists: Callable[[str], bool]) -> list:
    """The runs whose fine-tuning job has finished (metrics.json exists, per `exists`), in order.
    `exists` is asked in a few threads: one request per run against a bucket."""
    paths = [FINISHED_MARKER.format(run=run.path) for run in runs]
    with ThreadPoolExecutor(max_workers=max(1, min(EXISTS_THREADS, len(paths)))) as pool:
        flags = list(pool.map(exists, paths))
    return [run for run, done in zip(runs, flags) if done]


def finished_runs(workflow, runs: list) -> list:
    """analysis.allow_missing_runs: the runs finished where the workflow keeps its results."""
    return finished(runs, exists_in(workflow))


# ----------------------------------------------------------------------------- data staging
def staged_path(rel: str) -> str:
    """Where a task file (`rel`: its path below data_dir) is staged, relative to the workflow."""
    rel = PurePosixPath(rel)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"task file path {rel} must be relative to data_dir, without '..'")
    return f"{STAGED_DIR}/{rel.as_posix()}"


def task_inputs(data_dir: Path | None, task_def: dict, staged: bool) -> list[str]:
    """prepare_data's inputs, in the catalog's `files` order: the staged copies (remote storage) or
    the files in data_dir (local); none for the hub."""
    if data_dir is None:
        return []
    rels = list(task_def["files"].values())
    return [staged_path(rel) for rel in rels] if staged else [str(Path(data_dir) / rel) for rel in rels]


def stage_source(data_dir: Path | None, rel: str) -> str | None:
    """The local file rule stage_data uploads (None when this machine does not have it: then an
    already staged copy stands, and a missing one fails the job with a message)."""
    if data_dir is None:
        return None
    path = Path(data_dir) / rel
    return str(path) if path.is_file() else None


def stage_file(source: str | None, target: str, rel: str, data_dir: Path | None) -> None:
    """Copy a task file to its staged path (rule stage_data; Snakemake uploads the target)."""
    if not source:
        raise StagingError(
            f"task file {rel}: not found in data_dir ({data_dir}) on this machine and not staged yet "
            f"(bucket path {staged_path(rel)}); run once where data_dir holds the files")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def data_root(inputs: Iterable[str], task_def: dict) -> Path | None:
    """The folder prepare_data reads a task's files from: its inputs (data_dir's files or their
    staged copies, in the catalog's `files` order) minus their relative paths; None (the hub)
    without inputs."""
    inputs = [str(p) for p in inputs]
    if not inputs:
        return None
    rels = list(task_def["files"].values())
    if len(inputs) != len(rels):
        raise ValueError(f"prepare_data got {len(inputs)} input files for {len(rels)} catalog files")
    roots = set()
    for path, rel in zip(inputs, rels):
        p, r = PurePosixPath(Path(path).as_posix()), PurePosixPath(rel)
        if p.parts[-len(r.parts):] != r.parts:
            raise ValueError(f"input {path} does not end with the catalog path {rel}")
        roots.add(Path(*p.parts[:-len(r.parts)]) if len(p.parts) > len(r.parts) else Path("."))
    if len(roots) != 1:
        raise ValueError(f"prepare_data's inputs lie under different folders: {sorted(map(str, roots))}")
    return roots.pop()
