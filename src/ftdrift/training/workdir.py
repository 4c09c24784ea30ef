"""A fine-tuning job's work folder: the resumable state (checkpoints, best weights, snapshots
taken so far) of exactly one job definition, optionally mirrored to durable storage.

The life of one job's state (ftdrift.training.recipe.finetune). The folder is results/work/<run>
and the mirror $FTDRIFT_CHECKPOINT_MIRROR/<run> (`gs://bucket/folder`, or any fsspec URL such as
`file:///scratch/mirror`), <run> being the run's path (ftdrift.study.grid.RUN_PATTERN):

1. `claim` empties the folder when it holds state of another definition (changed config, data or
   code version), or no definition file: resuming a checkpoint of an older definition would
   silently finish the old run instead of the new one. A new definition thereby also gets a new
   W&B run (`TRACKING_FILE`); the same definition keeps its run across processes and retries.
2. `WorkDirMirror.restore` fills the folder from the mirror when that holds a newer complete
   checkpoint (a spot VM's disk goes with the VM; without the mirror a preempted job on a fresh VM
   starts again from step 0). It fetches what resuming needs: the newest complete checkpoint, the
   best dev-loss weights, the snapshot store and the small files, not the older checkpoints.
3. `WorkDirMirror.push`, at every checkpoint, uploads what changed (a checkpoint's
   trainer_state.json, which marks it complete, after everything it describes) and only then
   removes what the folder no longer holds. Whenever the job dies, the mirror holds a complete
   checkpoint of this definition, or what it held before; only another definition's state is
   removed before ours goes up.
4. `drop`, once the outputs are written, removes the folder's resumable state (checkpoints, best
   weights and a second copy of the snapshot store: tens of GB per run at 1.3B), its definition
   file first: a job killed halfway leaves nothing to resume from, and `claim` empties the rest.
5. The mirror outlives the job. Snakemake uploads the outputs to the bucket after the job's script
   returns; a job preempted during that upload (gigabytes) runs again and resumes from the mirror,
   its final checkpoint, instead of training from step 0 (and trains no further:
   ftdrift.training.trainer.StudyTrainer). `release` removes the mirror once a later job has read
   the run's outputs, which proves them stored: rule validate_checkpoint, which runs for every run
   (workflow/scripts/validate_checkpoint.py). A run whose check never runs keeps its mirror.
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
from ftdrift.study.grid import RUN_PATTERN

log = logging.getLogger(__name__)

DEFINITION_FILE = "job.json"
# the job's W&B run id and what was sent to it (ftdrift.training.tracking.RunRecord): a resumed
# job continues that run and does not send a re-done step again
TRACKING_FILE = "wandb_run.json"
MIRROR_ENV = "FTDRIFT_CHECKPOINT_MIRROR"
# what a resumed job needs; W&B's local files (wandb/) are not part of it
THREADS_FILE = "cpu_threads.json"  # the CPU thread counts of the sessions that trained (training.recipe)
RESUMABLE = (DEFINITION_FILE, TRACKING_FILE, THREADS_FILE, "checkpoints", "best", "representations.zarr")
# written by each training attempt (ftdrift.training.recipe.Job.initial_adapter), read when the outputs are saved
INITIAL_ADAPTER = "initial_adapter"


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
        log.warning("%s holds no state of this job definition (an earlier definition's: config, data or code "
                    "changed; or a finished job's leftovers): starting from scratch", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(work_dir / DEFINITION_FILE, {"fingerprint": job_fingerprint})


def drop(work_dir: Path) -> None:
    """Remove a finished job's resumable state (step 4 of the module docstring); the small records
    (W&B's local files and run id, the thread counts) stay with the run's logs."""
    work_dir = Path(work_dir)
    (work_dir / DEFINITION_FILE).unlink(missing_ok=True)  # first: from here on the folder is no one's state
    for name in ("checkpoints", "best", "representations.zarr", INITIAL_ADAPTER):
        if (work_dir / name).exists():
            shutil.rmtree(work_dir / name)


def _is_trainer_state(rel: str) -> bool:
    return PurePosixPath(rel).name == "trainer_state.json"


def _upload_order(rel: str) -> tuple[int, str]:
    # a checkpoint counts as complete once its trainer_state.json is readable
    # (train.last_complete_checkpoint), so those go after everything they describe
    return (1 if _is_trainer_state(rel) else 0, rel)


def checkpoint_step(name) -> int | None:
    """N of a Trainer checkpoint folder `checkpoint-N` (a name or a path); None for any other name."""
    prefix, _, step = PurePosixPath(str(name)).name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def _checkpoint_of(rel: str) -> str | None:
    """'checkpoints/checkpoint-12' for a file under it, else None."""
    parts = PurePosixPath(rel).parts
    return "/".join(parts[:2]) if len(parts) > 2 and parts[0] == "checkpoints" else None


def _newest_complete_checkpoint(files: list[str]) -> str | None:
    complete = [_checkpoint_of(rel) for rel in files if _is_trainer_state(rel) and _checkpoint_of(rel)]
    numbered = [c for c in complete if checkpoint_step(c) is not None]
    return max(numbered, key=checkpoint_step, default=None)


class _GcsFileSystem:
    """The few fsspec calls the mirror makes, on google-cloud-storage (installed with the GCS
    storage plugin). gcsfs would be the fsspec way, but every current gcsfs needs
    google-cloud-storage >= 3, which the Google Batch executor plugin (0.5.1: < 3) excludes: this
    class stands in only while that pin conflict stands; once both allow one version, use gcsfs
    through `fsspec.core.url_to_fs` (the `_filesystem` fallback) and delete it.

    Writes are retried (`DEFAULT_RETRY`: 429, 5xx, connection errors, with backoff for up to 120 s).
    The client retries an upload or delete only under a generation precondition by default
    (DEFAULT_RETRY_IF_GENERATION_SPECIFIED), so one transient 503 would end the job; the mirror's
    writes are idempotent (a name gets the same bytes again, a deleted object stays deleted), so
    they are retried without one."""

    def __init__(self):
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.client = storage.Client()
        self.retry = DEFAULT_RETRY

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
        self._blob(rpath).upload_from_filename(lpath, retry=self.retry)

    def rm_file(self, path: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._blob(path).delete(retry=self.retry)
        except NotFound:
            pass  # gone already: a retried delete whose first attempt went through

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


def _mirror_url(run: dict) -> str | None:
    """The mirror of `run` (its grid keys: task, method, lr, batch_size, seed), named by the run's
    path as every rule names it; None without $FTDRIFT_CHECKPOINT_MIRROR."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    return f"{base.rstrip('/')}/{RUN_PATTERN.format(**run)}" if base else None


def _listing(fs, root: str) -> list[str]:
    """The files under `root`, relative to it."""
    if not fs.exists(root):
        return []
    return sorted(PurePosixPath(p).relative_to(PurePosixPath(root)).as_posix() for p in fs.find(root))


def _removal_order(rel: str) -> tuple[int, str]:
    # the definition file first (what is left is then no one's state), then the markers of
    # complete checkpoints, then what they describe
    return (0 if rel == DEFINITION_FILE else 1 if _is_trainer_state(rel) else 2, rel)


def _remove(fs, root: str, files) -> None:
    for rel in sorted(files, key=_removal_order):
        fs.rm_file(f"{root}/{rel}")


def release(run: dict) -> None:
    """Remove `run`'s mirror (step 5 of the module docstring): call it only once the run's
    outputs are stored. `run`: its grid keys (task, method, lr, batch_size, seed), e.g. a rule's wildcards."""
    if url := _mirror_url(run):
        fs, root = _filesystem(url)
        root = root.rstrip("/")
        if files := _listing(fs, root):
            log.info("the outputs of %s are stored: removing its checkpoint mirror %s",
                     RUN_PATTERN.format(**run), url)
            _remove(fs, root, files)


class WorkDirMirror(TrainerCallback):
    """Keeps a copy of a work folder's resumable state at `url` (pushed at every checkpoint)."""

    def __init__(self, url: str, work_dir: Path, job_fingerprint: str):
        self.fs, root = _filesystem(url)
        self.root = root.rstrip("/")
        self.url = url
        self.work_dir = Path(work_dir)
        self.job_fingerprint = job_fingerprint
        # relative path -> (size, mtime_ns) of the local file when uploaded; None: in the mirror,
        # not known to equal the local file
        self._pushed: dict[str, tuple[int, int] | None] = {}
        self._known = False  # whether _pushed describes the mirror (after restore or the first push)

    @classmethod
    def from_env(cls, run: dict, work_dir: Path, job_fingerprint: str) -> WorkDirMirror | None:
        url = _mirror_url(run)
        return cls(url, work_dir, job_fingerprint) if url else None

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

    def _remote_fingerprint(self) -> str | None:
        return _recorded(lambda: self.fs.cat_file(f"{self.root}/{DEFINITION_FILE}"))

    # -- pull
    def restore(self, local_checkpoint: str | None = None) -> bool:
        """Fill the work folder from the mirror if it holds this job's state with a complete
        checkpoint newer than `local_checkpoint` (the folder's newest complete one, a path);
        True if it did. Fetches only what resuming needs (step 2 of the module docstring)."""
        if self._remote_fingerprint() != self.job_fingerprint:
            return False
        remote = _listing(self.fs, self.root)
        newest = _newest_complete_checkpoint(remote)
        local_step = checkpoint_step(local_checkpoint) if local_checkpoint else -1
        if newest is None or checkpoint_step(newest) <= local_step:
            return False
        wanted = {rel for rel in remote if _checkpoint_of(rel) in (None, newest)}
        log.info("restoring %s from %s: %s and the rest of the state (%d files; %d files of older checkpoints "
                 "left there)", self.work_dir, self.url, newest, len(wanted), len(remote) - len(wanted))
        for rel in sorted(wanted, key=_upload_order):  # the checkpoint's marker last, as in push
            target = self.work_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            self.fs.get_file(f"{self.root}/{rel}", str(partial))
            os.replace(partial, target)
        local = self._local_files()
        self._pushed = {rel: local.get(rel) if rel in wanted else None for rel in remote}
        self._known = True
        return True

    # -- push
    def _take_over(self) -> None:
        """Learn what the mirror holds before the first push of this process."""
        remote = _listing(self.fs, self.root)
        if remote and self._remote_fingerprint() == self.job_fingerprint:
            # this definition's state (a retry on the same disk): replaced file by file, never emptied
            # first; which of its files equal ours is not known, so all of ours go up again
            self._pushed = dict.fromkeys(remote)
        else:
            _remove(self.fs, self.root, remote)  # another definition's, or half-written: ours must not mix with it
            self._pushed = {}
        self._known = True

    def push(self) -> None:
        if not self._known:
            self._take_over()
        local = self._local_files()
        changed = sorted((rel for rel, sig in local.items() if self._pushed.get(rel) != sig), key=_upload_order)
        for rel in changed:
            self.fs.makedirs(f"{self.root}/{PurePosixPath(rel).parent}", exist_ok=True)
            self.fs.put_file(str(self.work_dir / rel), f"{self.root}/{rel}")
            self._pushed[rel] = local[rel]
        # then what the folder no longer holds (checkpoints pruned by save_total_limit, older ones
        # left in the mirror by restore), their trainer_state.json first
        gone = [rel for rel in self._pushed if rel not in local]
        _remove(self.fs, self.root, gone)
        for rel in gone:
            del self._pushed[rel]
        log.info("mirrored %d changed and %d removed files to %s", len(changed), len(gone), self.url)

    def on_save(self, args, state, control, **kwargs):
        self.push()
