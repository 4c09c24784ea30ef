"""`snakemake --profile profiles/gcp-gpu --executor local` against a real GCS API (fake-gcs-server in
memory on a loopback port, tests/system/gcs_emulator.py): the bucket as default storage, as on Google Batch,
with jobs run on this machine. Not covered: Batch submission itself and real IAM (docs/cluster.md).

One tiny study (SST-2 only, full and LoRA, one seed, 6 steps, the 2-block tiny Llama) runs once with
`data_dir` set and no hand upload (the task files are staged into the bucket by the workflow); the
tests then look at the bucket and plan from a fresh clone. The last three re-run the LoRA run's
fine-tuning job under faults, in order: a 503 on its first mirror upload, then a SIGKILL while its
second checkpoint uploads (work folder wiped); a SIGKILL while Snakemake uploads its outputs (the
mirror must still be there); a plain re-run that resumes from the mirror and must equal the
uninterrupted run. They replace that run's outputs in the bucket, so they come last.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ftdrift.study import storage as ftstorage
from ftdrift.study.grid import Run
from ftdrift.testing import REPO, TINY_CONFIG, make_tiny_workdir
from ftdrift.testing import no_slurm_conf as _no_slurm_conf

gcs_emulator = pytest.importorskip("gcs_emulator")

BUCKET = "ftdrift-ci"
PREFIX = "ftdrift"
MIRROR = f"{PREFIX}-checkpoints"  # the profile's default: gs://<bucket>/<prefix>-checkpoints
TIMEOUT_S = 300  # one Snakemake call after the study (a dry run, one fine-tuning job)
STUDY_TIMEOUT_S = 900  # the whole tiny study (about 5 minutes on 2 busy cores)
# what a clone of the repository holds that the workflow needs (the rest: tests, docs, venv, git)
CLONED = ("Snakefile", "rules", "workflow", "src", "config", "profiles", "report", "envs", "pyproject.toml")
# metrics.json / train_log.csv fields that measure the machine (time, memory) or record the resumption
# itself, not what the run computed: those tests/system/chaos_slurm.py drops as well
VOLATILE_FIELD = re.compile(r"runtime|per_second|(^|_)seconds$|cpu_rss|^resumed_from$")


# ----------------------------------------------------------------------------- a proxy that reads bodies
@dataclass
class BodyRule:
    """Catch uploads whose body (the object name is in a multipart or resumable upload's JSON
    metadata, not in the URL) contains every one of `needles`: `fail` answers `status`; `stall`
    holds the request until `release` is set, then answers 503 (the client is gone by then)."""

    needles: tuple[bytes, ...]
    action: str
    times: int = 1
    status: int = 503
    release: threading.Event = field(default_factory=threading.Event)
    caught: threading.Event = field(default_factory=threading.Event)
    seen: list = field(default_factory=list)


class BodyProxy(gcs_emulator.Proxy):
    """gcs_emulator.Proxy that can also fail or hold a request by what its body names."""

    def __init__(self, target: str, port: int | None = None, **options):
        super().__init__(target, port, **options)
        self.body_rules: list[BodyRule] = []
        base, proxy = self.server.RequestHandlerClass, self

        class Handler(base):
            def _handle_body(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._match_body(body)
                if rule is not None:
                    if rule.action == "stall":
                        rule.release.wait(TIMEOUT_S)
                    payload = json.dumps({"error": {"code": rule.status, "message": "injected by the test"}}).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                original, self.rfile = self.rfile, io.BytesIO(body)
                try:
                    base._handle(self)
                finally:
                    self.rfile = original

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle_body

        self.server.RequestHandlerClass = Handler

    def _match_body(self, body: bytes) -> BodyRule | None:
        with self._lock:
            for rule in self.body_rules:
                if rule.times > 0 and all(n in body for n in rule.needles):
                    rule.times -= 1
                    rule.seen.append(body[:200])
                    rule.caught.set()
                    return rule
        return None

    def on_body(self, needles: list[str], action: str, times: int = 1, status: int = 503) -> BodyRule:
        """Catch the next `times` requests whose body contains every one of `needles`."""
        rule = BodyRule(tuple(n.encode() for n in needles), action, times, status)
        with self._lock:
            self.body_rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self.body_rules:
                rule.release.set()
            self.body_rules.clear()


# ----------------------------------------------------------------------------- the bucket
def read_object(url: str, name: str) -> bytes:
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media",
                                timeout=30) as response:
        return response.read()


def delete_prefix(gcs, prefix: str) -> None:
    for name in gcs.objects(BUCKET, prefix):
        request = urllib.request.Request(f"{gcs.url}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}",
                                         method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise


@dataclass
class Study:
    gcs: object
    proxy: BodyProxy
    inputs: Path  # data, tiny model, tiny.yaml (the laptop's files)
    clone: Path  # the clone the study ran from
    tmp: Path
    env: dict
    runs: dict  # method -> run path (task/method/setting)
    reference: dict  # run path -> {file name: bytes} of the uninterrupted run
    first_run_s: float

    @property
    def config(self) -> Path:
        return self.inputs / "tiny.yaml"

    def objects(self, prefix: str = "") -> list[str]:
        return self.gcs.objects(BUCKET, prefix)

    def read(self, name: str) -> bytes:
        return read_object(self.gcs.url, name)

    def command(self, *args: str, configfile: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "snakemake", "--profile", "profiles/gcp-gpu", "--executor", "local",
                "--jobs", "2", "--configfile", str(configfile or self.config), *args]

    def snakemake(self, *args: str, clone: Path | None = None, check: bool = True,
                  configfile: Path | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(*args, configfile=configfile), check=False, cwd=clone or self.clone,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc

    def start(self, *args: str) -> subprocess.Popen:
        """Snakemake in its own process group (so that a SIGKILL takes the job's script too)."""
        path = self.tmp / f"snakemake-{time.monotonic_ns()}.log"
        with open(path, "w") as log:
            process = subprocess.Popen(self.command(*args), cwd=self.clone, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True, text=True)
        process.log_path = path
        return process


def clone_repository(target: Path) -> Path:
    """A fresh clone: the workflow's files, no .snakemake, no results."""
    target.mkdir(parents=True)
    for name in CLONED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    return target


def planned_jobs(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    return "" if "Nothing to be done" in text else text.split("Job stats:")[-1].split("Reasons:")[0]


# ----------------------------------------------------------------------------- ftdrift.study.storage, alone
def test_staged_inputs_and_the_folder_prepare_data_reads(tmp_path):
    task_def = {"files": {"train": "glue/SST-2/train.tsv", "validation": "glue/SST-2/dev.tsv"}}
    assert ftstorage.task_inputs(None, task_def, staged=True) == []
    assert ftstorage.task_inputs(tmp_path, task_def, staged=False) == [str(tmp_path / "glue/SST-2/train.tsv"),
                                                                      str(tmp_path / "glue/SST-2/dev.tsv")]
    staged = ftstorage.task_inputs(tmp_path, task_def, staged=True)
    assert staged == ["results/staged/glue/SST-2/train.tsv", "results/staged/glue/SST-2/dev.tsv"]
    local = [f".snakemake/storage/gcs/b/ftdrift/{path}" for path in staged]  # as a job sees them
    assert ftstorage.data_root(local, task_def) == Path(".snakemake/storage/gcs/b/ftdrift/results/staged")
    assert ftstorage.data_root(ftstorage.task_inputs(tmp_path, task_def, staged=False), task_def) == tmp_path
    assert ftstorage.data_root([], task_def) is None
    with pytest.raises(ValueError):
        ftstorage.staged_path("../elsewhere.tsv")
    assert ftstorage.storage_query("gs://b/ftdrift/", "/results/x") == "gs://b/ftdrift/results/x"
    with pytest.raises(ftstorage.StagingError, match="not staged"):
        ftstorage.stage_file(None, str(tmp_path / "out"), "glue/SST-2/train.tsv", tmp_path)


def test_finished_runs_are_asked_where_the_results_are():
    runs = [Run("sst2", "full", "1e-3", 4, 1), Run("sst2", "lora", "5e-3", 4, 1)]
    asked = []

    def in_bucket(path):
        asked.append(path)
        return "/full/" in path

    assert ftstorage.finished(runs, in_bucket) == runs[:1]
    assert sorted(asked) == sorted(f"results/runs/{run.path}/metrics.json" for run in runs)


# ----------------------------------------------------------------------------- the study, on the emulator
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    try:
        gcs_emulator.binary()
    except FileNotFoundError as err:  # pragma: no cover - a platform without the bundled binary
        pytest.skip(f"fake-gcs-server not available: {err}")
    tmp = tmp_path_factory.mktemp("gcp")
    # a checkpoint every 3 steps, a logged loss every 3: a resumed run logs the same averages as an
    # uninterrupted one (the Trainer averages the loss since the last log within one session)
    inputs = make_tiny_workdir(tmp / "inputs", tasks=["sst2"], training={**TINY_CONFIG["training"], "logging_steps": 3})
    port = gcs_emulator.free_port()
    with gcs_emulator.running(external_url=f"http://127.0.0.1:{port}") as gcs, BodyProxy(gcs.url, port) as proxy:
        gcs.create_bucket(BUCKET)
        env = {**os.environ, **gcs.env, "STORAGE_EMULATOR_HOST": proxy.url, "GOOGLE_CLOUD_REGION": "us-central1",
               "FTDRIFT_GCS_BUCKET": BUCKET, "FTDRIFT_GCS_PREFIX": PREFIX, "WANDB_MODE": "offline",
               "FTDRIFT_IMAGE": "example.invalid/ftdrift:test", "SLURM_CONF": str(_no_slurm_conf())}
        for name in ("FTDRIFT_CHECKPOINT_MIRROR", "SNAKEMAKE_GOOGLEBATCH_PROJECT", "SNAKEMAKE_GOOGLEBATCH_REGION",
                     "FTDRIFT_DATA_DIR", "GOOGLE_APPLICATION_CREDENTIALS"):
            env.pop(name, None)
        clone = clone_repository(tmp / "clone")
        study = Study(gcs, proxy, inputs, clone, tmp, env, {}, {}, 0.0)
        started = time.monotonic()
        study.snakemake(timeout=STUDY_TIMEOUT_S)
        study.first_run_s = time.monotonic() - started
        for name in study.objects(f"{PREFIX}/results/runs/"):
            if name.endswith("/metrics.json"):
                run = name.removeprefix(f"{PREFIX}/results/runs/").removesuffix("/metrics.json")
                study.runs[run.split("/")[1]] = run
                study.reference[run] = {file: study.read(f"{PREFIX}/results/runs/{run}/{file}")
                                        for file in ("metrics.json", "train_log.csv", "predictions.json")}
        yield study


# ----------------------------------------------------------------------------- the study in the bucket
@pytest.mark.cloud
def test_study_runs_from_data_dir_into_the_bucket(study):
    """Item 1: with data_dir set and nothing uploaded by hand, the task files are staged into the
    bucket, prepare_data reads that copy, and the tables, report and zarr stores land in the bucket."""
    names = study.objects()
    print(f"first run: {study.first_run_s:.0f} s, {len(names)} objects")
    assert not [n for n in names if "//" in n], "an object under a doubled slash (a local path as a query)"
    staged = {n for n in names if n.startswith(f"{PREFIX}/results/staged/")}
    assert staged == {f"{PREFIX}/results/staged/glue/SST-2/train.tsv", f"{PREFIX}/results/staged/glue/SST-2/dev.tsv"}
    assert study.read(f"{PREFIX}/results/staged/glue/SST-2/train.tsv") == \
        (study.inputs / "data/glue/SST-2/train.tsv").read_bytes()
    splits = json.loads(study.read(f"{PREFIX}/results/data/sst2/splits.json"))
    assert splits["sources"]["train"]["source"] == "file"
    assert "results/staged/glue/SST-2/train.tsv" in splits["sources"]["train"]["path"]

    runs = pd.read_csv(io.BytesIO(study.read(f"{PREFIX}/results/tables/runs.csv")))
    assert sorted(runs.method) == ["full", "lora"] and set(runs.status) == {"completed"}
    for table in ("drift.csv", "best.csv", "summary.md", "weights.csv"):
        assert f"{PREFIX}/results/tables/{table}" in names
    assert f"{PREFIX}/results/report/overview/overview.html" in names
    assert any(n.startswith(f"{PREFIX}/results/report/drift/sst2/") for n in names)
    for run in study.runs.values():
        store = f"{PREFIX}/results/runs/{run}/representations.zarr/"
        assert f"{store}zarr.json" in names or f"{store}.zgroup" in names, f"no zarr store at {store}"
    assert any(n.startswith(f"{PREFIX}/results/representations/base/sst2.zarr/") for n in names)


@pytest.mark.cloud
def test_fresh_clone_plans_nothing(study, tmp_path):
    """A second clone (no .snakemake, no local results) reads the bucket and finds nothing to do,
    also on a machine without the data folder (the staged copies stand)."""
    fresh = clone_repository(tmp_path / "fresh")
    assert planned_jobs(study.snakemake("-n", clone=fresh)) == ""
    config = yaml.safe_load(study.config.read_text())
    config["data_dir"] = str(tmp_path / "no-such-folder")
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump(config))
    assert planned_jobs(study.snakemake("-n", clone=fresh, configfile=elsewhere)) == ""


@pytest.mark.cloud
def test_allow_missing_runs_sees_the_bucket(study, tmp_path):
    """Item 5: with analysis.allow_missing_runs the finished runs are looked up in the bucket: a
    complete study plans nothing (it planned aggregate and every report job, with every run
    'missing'), from the clone that ran it and from a fresh one."""
    config = yaml.safe_load(study.config.read_text())
    config["analysis"] = {"allow_missing_runs": True}
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(config))
    fresh = clone_repository(tmp_path / "fresh")
    for clone in (study.clone, fresh):
        proc = study.snakemake("-n", clone=clone, configfile=partial)
        assert planned_jobs(proc) == "", f"planned on a complete study:\n{planned_jobs(proc)}"
    runs = pd.read_csv(io.BytesIO(study.read(f"{PREFIX}/results/tables/runs.csv")))
    assert set(runs.status) == {"completed"}


# ----------------------------------------------------------------------------- faults in a fine-tuning job
def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not VOLATILE_FIELD.search(k)}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(key), b.get(key), f"{path}.{key}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_equal_to_uninterrupted(study, run: str) -> None:
    """metrics.json, predictions.json and train_log.csv as the uninterrupted run wrote them, but for
    the volatile fields (time, memory, resumed_from)."""
    reference = study.reference[run]
    now = {file: study.read(f"{PREFIX}/results/runs/{run}/{file}") for file in reference}
    metrics, expected = json.loads(now["metrics.json"]), json.loads(reference["metrics.json"])
    assert metrics["meta"].get("resumed_from"), "the run did not resume from a checkpoint"
    differences = _differences(_strip_timing(metrics), _strip_timing(expected))
    assert not differences, "the resumed run differs from the uninterrupted one:\n" + "\n".join(differences)
    assert json.loads(now["predictions.json"]) == json.loads(reference["predictions.json"])
    log_now = pd.read_csv(io.BytesIO(now["train_log.csv"]))
    log_ref = pd.read_csv(io.BytesIO(reference["train_log.csv"]))
    columns = [c for c in log_ref.columns if not VOLATILE_FIELD.search(c)]
    pd.testing.assert_frame_equal(log_now[columns], log_ref[columns])


def finetune_log(study, run: str) -> str:
    try:
        return study.read(f"{PREFIX}/results/logs/finetune/{run}.log").decode()
    except urllib.error.HTTPError:
        return ""


def wipe_vm(study, run: str) -> None:
    """What a fresh VM does not have: the job's work folder and local copies of its outputs. (The
    killed Snakemake's lock goes too, as `snakemake --unlock` would: on Batch the main process
    lives on and re-runs the job itself.)"""
    shutil.rmtree(study.clone / "results/work" / run, ignore_errors=True)
    shutil.rmtree(study.clone / ".snakemake/storage/gcs" / BUCKET / PREFIX / "results/runs" / run, ignore_errors=True)
    shutil.rmtree(study.clone / ".snakemake/locks", ignore_errors=True)


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the group this test started: snakemake and its job
    process.wait(timeout=60)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"snakemake exited ({process.returncode}) before {what}")
        time.sleep(0.1)
    kill(process)
    raise AssertionError(f"timed out waiting for {what}")


def complete_mirrored_checkpoints(study) -> list[str]:
    """The complete checkpoints in the mirror (one fine-tuning job at a time runs in these tests)."""
    return [n for n in study.objects(f"{MIRROR}/") if n.endswith("/trainer_state.json") and "/checkpoint-" in n]


def process_log(process) -> str:
    return Path(process.log_path).read_text()[-4000:]


def target(run: str) -> str:
    return f"results/runs/{run}/metrics.json"


@pytest.mark.cloud
def test_mirror_upload_503_and_a_kill_after_a_mirrored_checkpoint(study):
    """Item 4: the job's first mirror upload is answered 503 once, and the job goes on. Then the VM
    goes (SIGKILL, work folder wiped) while the second checkpoint uploads: the first one is in the
    mirror, complete (test_resume... below resumes from it)."""
    run = study.runs["lora"]
    delete_prefix(study.gcs, f"{MIRROR}/")
    failed = study.proxy.on_body([f"{MIRROR}/"], "fail", status=503)
    stall = study.proxy.on_body([f"{MIRROR}/", "/checkpoint-6/"], "stall")
    try:
        process = study.start("--forcerun", "finetune", "--", target(run))
        try:
            wait_for(stall.caught.is_set, process, "the upload of the second checkpoint")
        except AssertionError as err:
            raise AssertionError(f"{err}: the job did not survive a 503 on a mirror upload "
                                 f"(injected: {len(failed.seen)})\n{process_log(process)}") from None
        mirrored = complete_mirrored_checkpoints(study)
        kill(process)
    finally:
        study.proxy.clear()
    wipe_vm(study, run)
    assert failed.seen, "no mirror upload was seen"
    assert [m for m in mirrored if "/checkpoint-3/" in m], f"no complete first checkpoint in the mirror: {mirrored}"


@pytest.mark.cloud
def test_a_preemption_while_the_outputs_upload_keeps_the_mirror(study):
    """Item 3: the job's script has returned and Snakemake uploads its outputs to the bucket; the VM
    goes then (SIGKILL, work folder wiped). The mirror must still hold the run's state."""
    run = study.runs["lora"]
    stall = study.proxy.on_body([f"{PREFIX}/results/runs/{run}/"], "stall")
    try:
        process = study.start("--forcerun", "finetune", "--", target(run))
        wait_for(stall.caught.is_set, process, "the upload of the job's outputs")
        mirrored = complete_mirrored_checkpoints(study)
        kill(process)
    finally:
        study.proxy.clear()
    wipe_vm(study, run)
    assert mirrored, "the checkpoint mirror was dropped before Snakemake had uploaded the job's outputs"


@pytest.mark.cloud
def test_the_resumed_job_equals_the_uninterrupted_run(study):
    """After the kills above (work folder wiped each time), a plain re-run restores the mirror and
    its outputs equal the uninterrupted run's, timing fields aside."""
    run = study.runs["lora"]
    study.snakemake("--", target(run))
    assert "restor" in finetune_log(study, run).lower(), "the re-run did not restore the mirrored state"
    assert_equal_to_uninterrupted(study, run)
