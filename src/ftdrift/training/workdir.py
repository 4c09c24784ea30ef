"""A fine-tuning job's work folder: the resumable state (checkpoints, best weights, snapshots
taken so far) of exactly one job definition, optionally mirrored to durable storage.

* `claim` empties the folder when it holds state of another definition (changed config,
  data or code version): resuming a checkpoint of an older definition would silently finish
  the old run instead of the new one. A new definition thereby also gets a new W&B run
  (`TRACKING_FILE`); the same definition keeps its run across processes and retries.
* `WorkDirMirror` copies the state to `$FTDRIFT_CHECKPOINT_MIRROR` (`gs://bucket/folder`, or
  any fsspec URL such as `file:///scratch/mirror`) at every checkpoint, and fills an empty
  folder from it at start. A spot VM's disk goes with the VM;
  without the mirror a preempted job on a fresh VM starts again from step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from transformers import TrainerCallback

from ftdrift.core import io

log = logging.getLogger(__name__)

DEFINITION_FILE = "job.json"
# the job's W&B run id and what was sent to it (ftdrift.training.tracking.RunRecord): a resumed
# job continues that run and does not send a re-done step again
TRACKING_FILE = "wandb_run.json"
MIRROR_ENV = "FTDRIFT_CHECKPOINT_MIRROR"
# what a resumed job needs; W&B's local files (wandb/) are not part of it
THREADS_FILE = "cpu_threads.json"  # the CPU thread counts of the sessions that trained (training.recipe)
RESUMABLE = (DEFINITION_FILE, TRACKING_FILE, THREADS_FILE, "checkpoints", "best", "representations.zarr")


def fingerprint(definition: dict, files: list[Path]) -> str:
    """A hash of a job's definition (JSON-able settings) and the contents of its input files."""
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _recorded(read) -> str | None:
    """The fingerprint in a definition file, given a function returning its text; None if unreadable."""
    try:
        return json.loads(read())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim(work_dir: Path, job_fingerprint: str) -> None:
    """Make `work_dir` this job's: keep it if it holds the same definition's state, else empty it."""
    work_dir = Path(work_dir)
    if work_dir.is_dir() and any(work_dir.iterdir()) and _recorded((work_dir / DEFINITION_FILE).read_text) != job_fingerprint:
        log.warning("%s holds the state of an earlier definition of this job (config, data or code "
                    "changed): starting from scratch", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(work_dir / DEFINITION_FILE, {"fingerprint": job_fingerprint})


def _is_trainer_state(rel: str) -> bool:
    return PurePosixPath(rel).name == "trainer_state.json"


def _upload_order(rel: str) -> tuple[int, str]:
    # a checkpoint counts as complete once its trainer_state.json is readable
    # (train.last_complete_checkpoint), so those go after everything they describe
    return (1 if _is_trainer_state(rel) else 0, rel)


class _GcsFileSystem:
    """The few fsspec calls the mirror makes, on google-cloud-storage (installed with the GCS
    storage plugin). gcsfs would be the fsspec way, but every current gcsfs needs
    google-cloud-storage >= 3, which the Google Batch executor plugin (0.5.1: < 3) excludes."""

    def __init__(self):
        from google.cloud import storage

        self.client = storage.Client()

    def _blob(self, path: str):
        bucket, _, name = path.partition("/")
        return self.client.bucket(bucket).blob(name)

    def find(self, root: str) -> list[str]:
        bucket, _, prefix = root.partition("/")
        return [f"{bucket}/{b.name}" for b in self.client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/")]

    def exists(self, root: str) -> bool:
        bucket, _, prefix = root.partition("/")
        return any(True for _ in self.client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/", max_results=1))

    def cat_file(self, path: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self._blob(path).download_as_bytes()
        except NotFound as e:
            raise FileNotFoundError(path) from e

    def get_file(self, rpath: str, lpath: str) -> None:
        self._blob(rpath).download_to_filename(lpath)

    def put_file(self, lpath: str, rpath: str) -> None:
        self._blob(rpath).upload_from_filename(lpath)

    def rm_file(self, path: str) -> None:
        self._blob(path).delete()

    def rm(self, root: str, recursive: bool = True) -> None:
        for path in self.find(root):
            self.rm_file(path)

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        pass  # object storage has no folders


def _filesystem(url: str):
    """(filesystem, root path) for a mirror URL."""
    if url.startswith("gs://"):
        return _GcsFileSystem(), url.removeprefix("gs://")
    import fsspec

    return fsspec.core.url_to_fs(url)


class WorkDirMirror(TrainerCallback):
    """Keeps a copy of a work folder's resumable state at `url` (pushed at every checkpoint)."""

    def __init__(self, url: str, work_dir: Path, job_fingerprint: str):
        self.fs, root = _filesystem(url)
        self.root = root.rstrip("/")
        self.url = url
        self.work_dir = Path(work_dir)
        self.job_fingerprint = job_fingerprint
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) at upload
        self._remote_is_ours = False

    @classmethod
    def from_env(cls, name: str, work_dir: Path, job_fingerprint: str) -> WorkDirMirror | None:
        base = os.environ.get(MIRROR_ENV, "").strip()
        return cls(f"{base.rstrip('/')}/{name}", work_dir, job_fingerprint) if base else None

    # -- listing
    def _local_files(self) -> dict[str, tuple[int, int]]:
        files = {}
        for top in RESUMABLE:
            path = self.work_dir / top
            for p in ([path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())):
                if p.name.endswith(".partial"):
                    continue
                st = p.stat()
                files[p.relative_to(self.work_dir).as_posix()] = (st.st_size, st.st_mtime_ns)
        return files

    def _remote_files(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(PurePosixPath(p).relative_to(PurePosixPath(self.root)).as_posix()
                      for p in self.fs.find(self.root))

    def _remote_fingerprint(self) -> str | None:
        return _recorded(lambda: self.fs.cat_file(f"{self.root}/{DEFINITION_FILE}"))

    # -- pull
    def restore(self) -> bool:
        """Fill the work folder from the mirror if it holds this job's state with a complete
        checkpoint; True if it did."""
        if self._remote_fingerprint() != self.job_fingerprint:
            return False
        remote = self._remote_files()
        if not any(rel.startswith("checkpoints/") and _is_trainer_state(rel) for rel in remote):
            return False
        log.info("restoring %s from %s (%d files)", self.work_dir, self.url, len(remote))
        for rel in sorted(remote, key=_upload_order):
            target = self.work_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            self.fs.get_file(f"{self.root}/{rel}", str(partial))
            os.replace(partial, target)
        self._pushed = self._local_files()
        self._remote_is_ours = True
        return True

    # -- push
    def push(self) -> None:
        if not self._remote_is_ours:
            # another definition's (or a half-written) state must not mix with ours
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
            self._pushed = {}
            self._remote_is_ours = True
        local = self._local_files()
        changed = sorted((rel for rel, sig in local.items() if self._pushed.get(rel) != sig), key=_upload_order)
        for rel in changed:
            self.fs.makedirs(f"{self.root}/{PurePosixPath(rel).parent}", exist_ok=True)
            self.fs.put_file(str(self.work_dir / rel), f"{self.root}/{rel}")
            self._pushed[rel] = local[rel]
        gone = sorted((rel for rel in self._pushed if rel not in local), key=_upload_order, reverse=True)
        for rel in gone:  # checkpoints pruned by save_total_limit: their trainer_state.json first
            self.fs.rm_file(f"{self.root}/{rel}")
            del self._pushed[rel]
        log.info("mirrored %d changed and %d removed files to %s", len(changed), len(gone), self.url)

    def discard(self) -> None:
        """Drop the mirrored state once the job's outputs are written."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)

    def on_save(self, args, state, control, **kwargs):
        self.push()
