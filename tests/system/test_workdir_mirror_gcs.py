"""The checkpoint mirror (ftdrift.training.workdir) against a real GCS API: fake-gcs-server on
loopback behind a proxy that injects errors (tests/system/gcs_emulator.py); no mocks.

- the mirror outlives the job until a later job has read the run's outputs from the bucket, so a
  job preempted while Snakemake uploads its outputs resumes instead of training again;
- a transient 503 on an upload (multipart or resumable) or a delete costs a retry, not the job;
- a retry on the same disk never leaves the mirror without a complete checkpoint of the job, and a
  fresh VM restores only what resuming needs and still ends equal to an uninterrupted run;
- a finished job leaves no second copy of its state in the work folder, and a job killed while
  removing it leaves nothing that looks resumable.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ftdrift.study.grid import RUN_PATTERN
from ftdrift.testing import REPO
from ftdrift.training import workdir
from ftdrift.training.recipe import finetune
from ftdrift.training.workdir import MIRROR_ENV, WorkDirMirror

gcs_emulator = pytest.importorskip("gcs_emulator")
try:
    gcs_emulator.binary()
except (FileNotFoundError, ImportError) as err:  # pragma: no cover - platform without the bundled binary
    pytest.skip(f"fake-gcs-server not available: {err}", allow_module_level=True)

BUCKET = "mirror-ci"
RUN = {"task": "sst2", "method": "full", "lr": "1e-3", "batch_size": 4, "seed": 1}  # the tiny job's run (conftest)
FINGERPRINT = "f" * 64


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running() as emulator:
        emulator.create_bucket(BUCKET)
        with gcs_emulator.Proxy(emulator.url, route_uploads=True) as proxy:
            yield SimpleNamespace(emulator=emulator, proxy=proxy)


@pytest.fixture
def mirror_base(gcs, request, monkeypatch):
    """$FTDRIFT_CHECKPOINT_MIRROR for this test (a folder of its own), the client pointed at the proxy."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.proxy.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    folder = "".join(c if c.isalnum() else "-" for c in request.node.name)
    monkeypatch.setenv(MIRROR_ENV, f"gs://{BUCKET}/{folder}")
    gcs.proxy.rules.clear()
    return folder


def objects(gcs, base: str, run: dict = RUN) -> list[str]:
    """The run's mirrored files, relative to its mirror folder."""
    prefix = f"{base}/{RUN_PATTERN.format(**run)}/"
    return sorted(name.removeprefix(prefix) for name in gcs.emulator.objects(BUCKET, prefix))


def read(gcs, base: str, rel: str) -> bytes:
    name = urllib.parse.quote(f"{base}/{RUN_PATTERN.format(**RUN)}/{rel}", safe="")
    with urllib.request.urlopen(f"{gcs.emulator.url}/storage/v1/b/{BUCKET}/o/{name}?alt=media", timeout=30) as r:
        return r.read()


def complete_checkpoints(files: list[str]) -> list[str]:
    return sorted((rel.split("/")[1] for rel in files if rel.startswith("checkpoints/")
                   and rel.endswith("/trainer_state.json")), key=lambda c: int(c.rsplit("-", 1)[1]))


def write_state(work: Path, checkpoints: dict[int, bool], big: int = 0, fingerprint: str = FINGERPRINT) -> None:
    """A work folder as a job leaves it: checkpoints (step -> complete?), best weights, a snapshot
    store, the small files. `big`: bytes of the newest checkpoint's weights (over 8 MiB: a resumable upload)."""
    workdir.claim(work, fingerprint)
    newest = max(checkpoints, default=None)
    for step, complete in checkpoints.items():
        folder = work / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(os.urandom(big) if big and step == newest else f"w{step}".encode())
        (folder / "optimizer.pt").write_bytes(f"o{step}".encode())
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (work / "best").mkdir(exist_ok=True)
    (work / "best" / "best.json").write_text(json.dumps({"step": newest or 0, "eval_loss": 0.5}))
    (work / "best" / "weights.safetensors").write_bytes(b"best")
    for rel in ("representations.zarr/zarr.json", f"representations.zarr/mean/c/{newest or 0}/0/0"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(f"snapshots to {newest}")
    (work / workdir.TRACKING_FILE).write_text(json.dumps({"run_id": "abc"}))
    (work / workdir.THREADS_FILE).write_text(json.dumps({"used": [1]}))


# ----------------------------------------------------------------------------- item 4: transient errors
@pytest.mark.parametrize("method,path_part,size", [
    ("POST", "uploadType=multipart", 0),  # a small file: one request
    ("POST", "uploadType=resumable", 9 * 2**20),  # over 8 MiB (a checkpoint's weights): the upload's start
    ("PUT", "uploadType=resumable", 9 * 2**20),  # or one of its chunks
], ids=["multipart", "resumable-start", "resumable-chunk"])
def test_a_transient_503_on_an_upload_is_retried(gcs, mirror_base, tmp_path, method, path_part, size):
    work = tmp_path / "work"
    write_state(work, {2: True}, big=size)
    failed = gcs.proxy.fail(method, path_part, times=1, status=503)
    started = time.monotonic()
    WorkDirMirror.from_env(RUN, work, FINGERPRINT).push()
    assert failed.seen, "no such upload was made"
    assert time.monotonic() - started < 30  # a retry after a second or two of backoff
    local = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert objects(gcs, mirror_base) == local
    assert read(gcs, mirror_base, "checkpoints/checkpoint-2/model.safetensors") == \
        (work / "checkpoints/checkpoint-2/model.safetensors").read_bytes()


def test_a_transient_503_on_a_delete_is_retried(gcs, mirror_base, tmp_path):
    work = tmp_path / "work"
    write_state(work, {2: True, 4: True})
    mirror = WorkDirMirror.from_env(RUN, work, FINGERPRINT)
    mirror.push()
    shutil.rmtree(work / "checkpoints" / "checkpoint-2")  # pruned by save_total_limit after checkpoint-6
    write_state(work, {6: True})
    failed = gcs.proxy.fail("DELETE", f"/b/{BUCKET}/o/", times=1, status=503)
    mirror.push()
    assert failed.seen, "no delete was made"
    assert complete_checkpoints(objects(gcs, mirror_base)) == ["checkpoint-4", "checkpoint-6"]
    assert not [rel for rel in objects(gcs, mirror_base) if "checkpoint-2/" in rel]


# ----------------------------------------------------------------------------- item 6: never without a checkpoint
def watch(gcs, base: str, mirror: WorkDirMirror) -> list[list[str]]:
    """Check before every write of `mirror` (and return every state seen) that the bucket holds
    this job's definition and a complete checkpoint: whenever the job died, it could resume."""
    seen = []

    def check():
        files = objects(gcs, base)
        seen.append(files)
        assert workdir.DEFINITION_FILE in files and \
            json.loads(read(gcs, base, workdir.DEFINITION_FILE))["fingerprint"] == FINGERPRINT, files
        assert any(f"checkpoints/{c}/model.safetensors" in files for c in complete_checkpoints(files)), files

    for name in ("put_file", "rm_file"):
        original = getattr(mirror.fs, name)

        def checked(*args, _original=original, **kwargs):
            check()
            return _original(*args, **kwargs)

        setattr(mirror.fs, name, checked)
    return seen


def test_a_retry_on_the_same_disk_keeps_a_complete_checkpoint_in_the_mirror(gcs, mirror_base, tmp_path):
    """The first process mirrored checkpoints 2 and 4 and died; the retry on the same disk (no
    restore: the folder has its checkpoints) trains on and pushes checkpoint 6, 2 pruned."""
    work = tmp_path / "work"
    write_state(work, {2: True, 4: True})
    WorkDirMirror.from_env(RUN, work, FINGERPRINT).push()
    shutil.rmtree(work / "checkpoints" / "checkpoint-2")
    write_state(work, {4: True, 6: True})
    retry = WorkDirMirror.from_env(RUN, work, FINGERPRINT)  # a new process
    seen = watch(gcs, mirror_base, retry)
    retry.push()
    assert len(seen) > 1
    assert objects(gcs, mirror_base) == sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())

    # another definition's state is no one's once its definition file is gone, and then replaced
    other = tmp_path / "other"
    write_state(other, {2: True}, fingerprint="0" * 64)
    WorkDirMirror.from_env(RUN, other, "0" * 64).push()
    assert complete_checkpoints(objects(gcs, mirror_base)) == ["checkpoint-2"]
    assert WorkDirMirror.from_env(RUN, tmp_path / "empty", FINGERPRINT).restore() is False


def test_restore_fetches_what_resuming_needs_and_nothing_else(gcs, mirror_base, tmp_path):
    """The mirror holds checkpoints 2 and 4 (complete) and 6 (half-uploaded): a fresh VM gets
    checkpoint 4 and the rest of the state, not checkpoint 2; its first push then trims the mirror
    to what the folder holds, after uploading the new checkpoint."""
    source = tmp_path / "first-vm"
    write_state(source, {2: True, 4: True, 6: False})
    WorkDirMirror.from_env(RUN, source, FINGERPRINT).push()

    work = tmp_path / "fresh-vm"
    workdir.claim(work, FINGERPRINT)
    mirror = WorkDirMirror.from_env(RUN, work, FINGERPRINT)
    downloads_before = len(gcs.proxy.requests)
    assert mirror.restore()
    fetched = [urllib.parse.unquote(path) for method, path in gcs.proxy.requests[downloads_before:]
               if method == "GET" and "alt=media" in path]
    assert not [p for p in fetched if "checkpoint-2/" in p or "checkpoint-6/" in p], fetched
    local = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                      if p.is_file() and "checkpoint-2" not in p.as_posix() and "checkpoint-6" not in p.as_posix())
    assert local == expected
    for rel in local:
        assert (work / rel).read_bytes() == (source / rel).read_bytes(), rel

    write_state(work, {8: True})  # the resumed job's next checkpoint
    seen = watch(gcs, mirror_base, mirror)
    mirror.push()
    assert seen
    assert objects(gcs, mirror_base) == sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert complete_checkpoints(objects(gcs, mirror_base)) == ["checkpoint-4", "checkpoint-8"]

    # a folder whose own newest checkpoint is older than the mirror's (another VM got further) is brought up
    behind = tmp_path / "behind"
    write_state(behind, {2: True})
    assert WorkDirMirror.from_env(RUN, behind, FINGERPRINT).restore(str(behind / "checkpoints" / "checkpoint-2"))
    assert (behind / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file()
    assert not WorkDirMirror.from_env(RUN, behind, FINGERPRINT).restore(str(behind / "checkpoints" / "checkpoint-8"))


def test_a_fresh_vm_resumes_from_the_newest_mirrored_checkpoint_equal_to_an_uninterrupted_run(
        tiny, gcs, mirror_base, tmp_path, monkeypatch):
    training = {"max_steps": 10, "save_steps": 2, "eval_steps": 2, "early_stopping_patience": None}
    monkeypatch.delenv(MIRROR_ENV)
    reference = finetune(**tiny.run_kwargs(tmp_path / "ref", **training))
    monkeypatch.setenv(MIRROR_ENV, f"gs://{BUCKET}/{mirror_base}")

    kwargs = tiny.run_kwargs(tmp_path / "run", **training)
    with pytest.raises(KeyboardInterrupt):
        finetune(**{**kwargs, "callbacks": (tiny.stop_at(6),)})
    mirrored = complete_checkpoints(objects(gcs, mirror_base))
    assert len(mirrored) >= 2 and mirrored[-1] == "checkpoint-6", mirrored  # save_total_limit 2 (+ the best one)
    shutil.rmtree(tmp_path / "run")  # the preempted VM's disk is gone
    start = len(gcs.proxy.requests)
    resumed = finetune(**kwargs)
    fetched = [urllib.parse.unquote(path) for method, path in gcs.proxy.requests[start:]
               if method == "GET" and "alt=media" in path]
    assert {p.split("/checkpoints/")[1].split("/")[0] for p in fetched if "/checkpoints/" in p} == {"checkpoint-6"}
    assert resumed["meta"]["resumed_from"].endswith("checkpoint-6")
    assert tiny.comparable(resumed) == tiny.comparable(reference)
    steps_ref, reps_ref = tiny.reps(tmp_path / "ref" / "reps.zarr")
    steps_res, reps_res = tiny.reps(tmp_path / "run" / "reps.zarr")
    assert list(steps_res) == list(steps_ref)
    for pooling in reps_ref:
        assert np.array_equal(reps_ref[pooling], reps_res[pooling])
    mirrored = complete_checkpoints(objects(gcs, mirror_base))
    assert mirrored[-1] == "checkpoint-10" and not set(mirrored[:-1]) - {"checkpoint-6", "checkpoint-8"}, mirrored


# ----------------------------------------------------------------------------- item 3: the mirror outlives the job
def validate_checkpoint(kwargs: dict, out: Path) -> dict:
    """workflow/scripts/validate_checkpoint.py as the rule runs it (wildcards are strings)."""
    check = out.parent / "check.json"
    snakemake = SimpleNamespace(
        input=SimpleNamespace(model=str(out / "model"), metrics=str(out / "metrics.json"),
                              predictions=str(out / "predictions.json"),
                              validation=str(kwargs["data_dir"] / "validation.jsonl")),
        output=SimpleNamespace(check=str(check)),
        params=SimpleNamespace(model=kwargs["model_cfg"], method=kwargs["method_spec"], task_def=kwargs["task_def"],
                               data=kwargs["settings"]["data"]),
        wildcards=SimpleNamespace(**{k: str(v) for k, v in kwargs["run"].items()}), log=[], threads=1)
    runpy.run_path(str(REPO / "workflow" / "scripts" / "validate_checkpoint.py"), init_globals={"snakemake": snakemake})
    return json.loads(check.read_text())


@pytest.mark.parametrize("lr,training", [
    ("1e-3", {"max_steps": 8, "save_steps": 4, "eval_steps": 4, "early_stopping_patience": None}),  # 10 steps an epoch
    ("1e-2", {"max_steps": 40, "save_steps": 2, "eval_steps": 2, "early_stopping_patience": 1}),
], ids=["max-steps-inside-an-epoch", "early-stopping-at-a-checkpoint"])
def test_the_mirror_stays_until_a_later_job_has_read_the_outputs(
        tiny, gcs, mirror_base, tmp_path, lr, training):
    """Snakemake uploads a job's outputs after its script returns. A preemption during that upload
    (gigabytes at 1.3B) re-runs the job on a fresh VM: it must resume from the mirror, its final
    checkpoint, not train from step 0, nor on past where the run stopped. The checkpoint
    validation, a later job that read the outputs from the bucket, releases the mirror."""
    kwargs = tiny.run_kwargs(tmp_path / "run", lr=lr, **training)
    first = finetune(**kwargs)
    final = f"checkpoint-{first['meta']['steps']}"
    assert first["meta"]["stopped_early"] == bool(training["early_stopping_patience"])
    assert complete_checkpoints(objects(gcs, mirror_base, kwargs["run"]))[-1:] == [final]

    shutil.rmtree(tmp_path / "run")  # preempted while uploading: no work folder, no outputs
    again = finetune(**kwargs)
    assert again["meta"]["resumed_from"].endswith(final)
    assert tiny.comparable(again) == tiny.comparable(first)  # nothing trained again, nor further
    assert objects(gcs, mirror_base, kwargs["run"]), "the mirror is kept until the outputs are stored"

    assert validate_checkpoint(kwargs, tmp_path / "run")["passed"]
    assert objects(gcs, mirror_base, kwargs["run"]) == []


# ----------------------------------------------------------------------------- item 7: no second copy on disk
def test_a_finished_job_leaves_no_copy_of_its_state_and_a_kill_while_removing_it_nothing_resumable(
        tiny, tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    kwargs = tiny.run_kwargs(tmp_path / "run", max_steps=4, save_steps=2, eval_steps=2)
    first = finetune(**kwargs)
    work = tmp_path / "run" / "work"
    assert not [name for name in (workdir.DEFINITION_FILE, "checkpoints", "best", "representations.zarr",
                                  "initial_adapter") if (work / name).exists()]
    assert steps_of(tiny, tmp_path / "run" / "reps.zarr") == [0, 2, 4]  # the outputs' copy

    rmtree = shutil.rmtree

    def killed_while_removing(path, *args, **kwargs):
        if Path(path) == work / "checkpoints":  # the job dies while its state is being removed
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    (tmp_path / "run" / "metrics.json").unlink()  # Snakemake: the killed job's outputs are incomplete
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", killed_while_removing)
        with pytest.raises(KeyboardInterrupt):
            finetune(**kwargs)
    assert (work / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (work / workdir.DEFINITION_FILE).exists()
    again = finetune(**kwargs)
    assert again["meta"]["resumed_from"] is None  # not resumed from the half-removed state
    assert tiny.comparable(again) == tiny.comparable(first)


def steps_of(tiny, path: Path) -> list[int]:
    return [int(s) for s in tiny.reps(path)[0]]
