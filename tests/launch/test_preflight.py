"""Preflight (ftdrift.preflight): every problem named in one message before any job, without the internet.

The Hub is a local HTTP server answering as huggingface.co does (status codes and the X-Error-Code
header that huggingface_hub's hf_raise_for_status maps to RepositoryNotFoundError, GatedRepoError,
RevisionNotFoundError); huggingface_hub is pointed at it through HF_ENDPOINT in the checked env.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ftdrift import preflight
from ftdrift.study import config as ftconfig
from ftdrift.testing import REPO

TOKEN = "hf_preflightSecretToken9876"
GOOD, GATED, DATASET = "org/good-model", "org/gated-model", "org/some-data"
GOOD_SHA = "0123456789abcdef0123456789abcdef01234567"
# what a user may have set that would change the outcome; removed from the checked env
LEAKY = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "FTDRIFT_DATA_DIR", "FTDRIFT_IMAGE",
         "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_REGION", "SNAKEMAKE_GOOGLEBATCH_PROJECT", "SNAKEMAKE_GOOGLEBATCH_REGION",
         "FTDRIFT_GCS_BUCKET", "FTDRIFT_SLURM_PARTITION", "FTDRIFT_SLURM_GPU_PARTITION", "SNAKEMAKE_SLURM_PARTITIONS",
         "FTDRIFT_PREFLIGHT")


class FakeHub(BaseHTTPRequestHandler):
    """The three Hub answers the preflight must tell apart (see huggingface_hub/utils/_http.py)."""

    seen_auth: list[str] = []

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        FakeHub.seen_auth.append(self.headers.get("Authorization", ""))
        path = self.path.split("?")[0]
        for kind, repo in (("models", GOOD), ("datasets", DATASET)):
            base = f"/api/{kind}/{repo}"
            if path in (f"{base}/auth-check", base, f"{base}/revision/main"):
                return self._send(200, {"id": repo, "sha": GOOD_SHA, "private": False, "gated": False})
            if path.startswith(f"{base}/revision/"):
                return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound",
                                                                     "X-Error-Message": "Invalid rev id"})
        if path == f"/api/models/{GATED}/auth-check":
            message = f"Access to model {GATED} is restricted. You must have access to it and be authenticated."
            return self._send(403, {"error": message}, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        if path == f"/api/models/{GATED}":  # the Hub shows a gated repo's card to anyone
            return self._send(200, {"id": GATED, "sha": GOOD_SHA, "gated": "manual"})
        message = "Repository not found"
        return self._send(404, {"error": message}, {"X-Error-Code": "RepoNotFound", "X-Error-Message": message})


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(hub, monkeypatch):
    """A clean environment that points huggingface_hub at the fake Hub, with a secret token."""
    import huggingface_hub.constants

    # read at import from the process environment: another test may have switched offline mode on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    clean = {k: v for k, v in os.environ.items() if k not in LEAKY}
    clean.update({"HF_ENDPOINT": hub, "HF_TOKEN": TOKEN})
    return clean


def write_data(data_dir: Path, tasks, skip=()) -> dict[str, Path]:
    """Empty stand-ins for the catalog's files (the preflight only opens them); returns the paths."""
    catalog = ftconfig.load_catalog(REPO / "config" / "tasks.yaml")
    paths = {}
    for task in tasks:
        for split, rel in catalog[task]["files"].items():
            path = data_dir / rel
            paths[task, split] = path
            if (task, split) not in skip:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x\n")
    return paths


@pytest.fixture(scope="module")
def base_config() -> dict:
    """The embedded default, resolved once (schema validation is the slow part)."""
    return ftconfig.resolve(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


@pytest.fixture
def make_config(base_config, tmp_path):
    def make(model: str, revision=None, tasks=("sst2",), data=True, gpus=0) -> dict:
        config = copy.deepcopy(base_config)
        config["tasks"] = list(tasks)
        config["task_defs"] = {t: config["task_defs"][t] for t in tasks}
        config["model"] = {"name_or_path": model, "family": "bert", "revision": revision}
        config["resources"]["gpus_per_finetune"] = gpus
        config["data_dir"] = None
        if data:
            config["data_dir"] = str(tmp_path / "data")
            write_data(tmp_path / "data", tasks)
        return config

    return make


def test_gated_and_misspelt_models_are_named(tmp_path, env, make_config):
    FakeHub.seen_auth.clear()
    gated = preflight.check(make_config(GATED), None, env=env)
    misspelt = preflight.check(make_config("org/good-modle"), None, env=env)
    good = preflight.check(make_config(GOOD), None, env=env)

    assert not gated.ok and not misspelt.ok and good.ok, (gated.message(), misspelt.message(), good.message())
    [gated_line] = [p for p in gated.problems if GATED in p]
    assert "gated" in gated_line and "accept the licence" in gated_line
    assert f"{env['HF_ENDPOINT']}/{GATED}" in gated_line  # the page where the licence is accepted
    assert "HF_TOKEN" in gated_line  # which token: the user must know which account it belongs to
    [misspelt_line] = [p for p in misspelt.problems if "org/good-modle" in p]
    assert "not found" in misspelt_line and "model.name_or_path" in misspelt_line
    assert any(GOOD in p and GOOD_SHA[:12] in p for p in good.passed)
    # the token was sent to the Hub, and appears in no report
    assert f"Bearer {TOKEN}" in FakeHub.seen_auth
    for report in (gated, misspelt, good):
        text = report.message() + repr(report)
        assert TOKEN not in text and TOKEN[3:12] not in text


def test_unknown_revision_is_named(tmp_path, env, make_config):
    report = preflight.check(make_config(GOOD, revision="v9.9"), None, env=env)
    assert [p for p in report.problems if "v9.9" in p and "model.revision" in p], report.message()
    assert preflight.check(make_config(GOOD, revision="main"), None, env=env).ok


def test_missing_data_file_is_named(tmp_path, env, make_config):
    config = make_config("embedded:all-MiniLM-L6-v2", tasks=("sst2", "mrpc"), data=False)
    data_dir = tmp_path / "mydata"
    paths = write_data(data_dir, ("sst2", "mrpc"), skip={("mrpc", "validation")})
    config["data_dir"] = str(data_dir)
    report = preflight.check(config, None, env=env)
    assert not report.ok
    [line] = report.problems
    assert "task mrpc" in line and str(paths["mrpc", "validation"]) in line and "validation" in line
    assert str(paths["mrpc", "train"]) not in line  # only what is missing
    assert any("task sst2" in p for p in report.passed)
    assert any("embedded:all-MiniLM-L6-v2" in p for p in report.passed)


def test_hub_dataset_checked_without_data_dir(env, make_config):
    config = make_config(GOOD, data=False)
    config["task_defs"]["sst2"] = {**config["task_defs"]["sst2"], "hub": {"path": DATASET, "name": "sst2"}}
    assert preflight.check(config, None, env=env).ok
    config["task_defs"]["sst2"]["hub"] = {"path": "org/no-such-data"}
    report = preflight.check(config, None, env=env)
    assert [p for p in report.problems if "org/no-such-data" in p and "task sst2" in p], report.message()


def test_gcp_settings_all_named_in_one_message(tmp_path, env, make_config):
    env = {**env, "FTDRIFT_GCS_BUCKET": "my-bucket"}
    report = preflight.check(make_config(GATED), "gcp-gpu", offline=True, env=env)
    message = report.message()
    assert report.profile == "gcp-gpu" and not report.ok
    for name in ("GOOGLE_CLOUD_PROJECT", "SNAKEMAKE_GOOGLEBATCH_PROJECT", "GOOGLE_CLOUD_REGION"):
        assert name in message
    assert not [p for p in report.problems if "FTDRIFT_GCS_BUCKET" in p]  # it is set
    assert any("image" in s for s in report.skipped)  # unknown without project and region
    assert message.index("problem") < message.index("Not checked")


def test_gcp_with_settings_offline_only_skips(tmp_path, env, make_config):
    env = {**env, "GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_CLOUD_REGION": "us-central1", "FTDRIFT_GCS_BUCKET": "gs://b/"}
    report = preflight.check(make_config(GOOD), "gcp-gpu", offline=True, env=env)
    assert report.ok, report.message()
    skipped = "\n".join(report.skipped)
    assert "gs://b " in skipped and "us-central1-docker.pkg.dev/p/ftdrift/ftdrift:" in skipped


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_skips_network_checks_and_runs_local_ones(tmp_path, env, how, make_config):
    config = make_config(GATED, tasks=("sst2", "rte"), data=False)
    config["data_dir"] = str(tmp_path / "data")
    write_data(tmp_path / "data", ("sst2",))  # rte's files are missing
    if how == "argument":
        report = preflight.check(config, None, offline=True, env=env)
    else:
        report = preflight.check(config, None, env={**env, "HF_HUB_OFFLINE": "1"})
    assert [s for s in report.skipped if GATED in s and s.startswith("no network")], report.message()
    assert not [p for p in report.problems if GATED in p]
    assert [p for p in report.problems if "task rte" in p] and [p for p in report.passed if "task sst2" in p]


def test_unreachable_hub_is_skipped_not_a_problem(tmp_path, env, make_config):
    # a port nothing listens on (bound, then closed)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = preflight.check(make_config(GATED), None, env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert report.ok and any("no network" in s and GATED in s for s in report.skipped), report.message()


def test_the_bucket_check_probes_the_storage_emulator_when_one_is_set(tmp_path, env, make_config):
    """With STORAGE_EMULATOR_HOST set, the bucket lives there: an emulator that is down is named,
    whether or not the public GCS host is reachable."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_CLOUD_REGION": "us-central1", "FTDRIFT_GCS_BUCKET": "gs://b/",
           "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "1"}
    report = preflight.check(make_config(GOOD), "gcp-gpu", offline=False, env=env)
    assert any(f"cannot reach 127.0.0.1:{port}" in s and "gs://b" in s for s in report.skipped), report.message()


def test_gcp_data_dir_is_checked_where_the_jobs_read_it(tmp_path, env, make_config, monkeypatch):
    """On gcp-gpu the jobs read the task files staged in the bucket (rule stage_data uploads them from
    data_dir): a file missing here but staged passes; one in neither place is named with both places.
    (It checked only this machine's data_dir, which the Batch VMs never see.)"""
    import urllib.parse
    import urllib.request

    gcs_emulator = pytest.importorskip("gcs_emulator")
    try:
        gcs_emulator.binary()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    config = make_config(GOOD, tasks=("sst2", "mrpc"), data=False)
    data_dir = tmp_path / "mydata"
    paths = write_data(data_dir, ("sst2", "mrpc"), skip={("sst2", "train"), ("mrpc", "train"), ("mrpc", "validation")})
    config["data_dir"] = str(data_dir)
    with gcs_emulator.running() as gcs:
        gcs.create_bucket("ftdrift-pf")
        name = urllib.parse.quote("ftdrift/results/staged/glue/SST-2/train.tsv", safe="")
        request = urllib.request.Request(f"{gcs.url}/upload/storage/v1/b/ftdrift-pf/o?uploadType=media&name={name}",
                                         data=b"x\n", headers={"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)  # google-cloud-storage reads the process env
        env = {**env, **gcs.env, "GOOGLE_CLOUD_REGION": "us-central1", "FTDRIFT_GCS_BUCKET": "ftdrift-pf",
               "FTDRIFT_IMAGE": "registry.invalid/ftdrift:test"}
        report = preflight.check(config, "gcp-gpu", env=env)
    staged = "gs://ftdrift-pf/ftdrift/results/staged/"
    assert not [p for p in report.problems if "task sst2" in p], report.message()
    assert [p for p in report.passed if "task sst2" in p and staged in p], report.message()
    [line] = [p for p in report.problems if "task mrpc" in p]
    assert str(paths["mrpc", "train"]) in line and str(paths["mrpc", "validation"]) in line and staged in line
    assert "bucket gs://ftdrift-pf readable" in report.passed


def fake_sinfo(tmp_path: Path, env: dict) -> dict:
    """A `sinfo` on PATH that knows a CPU partition (the default) and a GPU partition, as
    `sinfo --format='%P %G'` prints them (one line per node group)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "sinfo"
    script.write_text("#!/bin/sh\nprintf 'cpu* (null)\\ngpu gpu:a100:4(S:0-1)\\ngpu gpu:a100:8\\n'\n")
    script.chmod(0o755)
    return {**env, "PATH": str(bin_dir)}


def test_slurm_partitions(tmp_path, env, make_config):
    gpu_study = make_config(GOOD, gpus=1)
    env = fake_sinfo(tmp_path, env)
    missing = preflight.check(gpu_study, "slurm", env=env)
    assert [p for p in missing.problems if "FTDRIFT_SLURM_GPU_PARTITION" in p], missing.message()
    wrong = preflight.check(gpu_study, "slurm", env={**env, "FTDRIFT_SLURM_GPU_PARTITION": "gpux",
                                                     "FTDRIFT_SLURM_PARTITION": "cpu"})
    assert [p for p in wrong.problems if "'gpux'" in p and "does not exist" in p], wrong.message()
    no_gpus = preflight.check(gpu_study, "slurm", env={**env, "FTDRIFT_SLURM_GPU_PARTITION": "cpu"})
    assert [p for p in no_gpus.problems if "has no GPUs" in p], no_gpus.message()
    right = preflight.check(gpu_study, "slurm", env={**env, "FTDRIFT_SLURM_GPU_PARTITION": "gpu",
                                                     "FTDRIFT_SLURM_PARTITION": "cpu"})
    assert right.ok and len([p for p in right.passed if p.startswith("profile slurm: partition")]) == 2, right.message()
    # unset, the GPU jobs go with the CPU jobs: fine where that partition has GPUs
    shared = preflight.check(gpu_study, "slurm", env={**env, "FTDRIFT_SLURM_PARTITION": "gpu"})
    assert shared.ok and any("GPU jobs go to partition 'gpu'" in p for p in shared.passed), shared.message()
    blind = preflight.check(gpu_study, "slurm", env={**env, "PATH": str(tmp_path / "empty")})
    assert [p for p in blind.problems if "FTDRIFT_SLURM_GPU_PARTITION" in p], blind.message()
    # a CPU-only study needs no GPU partition; without sinfo the partition is skipped, not failed
    cpu_study = make_config(GOOD)
    no_sinfo = preflight.check(cpu_study, "slurm", env={**env, "PATH": str(tmp_path / "empty"),
                                                        "FTDRIFT_SLURM_PARTITION": "cpu"})
    assert no_sinfo.ok and any("sinfo not on PATH" in s for s in no_sinfo.skipped), no_sinfo.message()


def test_the_executor_adapter_is_asked(tmp_path, env, make_config, monkeypatch):
    """A new executor is one adapter (ftdrift.executors): the preflight asks the adapter of the
    profile's `executor:` for its checks, where its jobs read staged data and whether a saved
    login reaches them; a profile whose executor has none is reported as not checked."""
    from ftdrift import executors
    from ftdrift.executors.base import Executor, Staging

    folder = tmp_path / "k8s"
    folder.mkdir()
    (folder / "profile.yaml").write_text("__use_yte__: true\nexecutor: kubernetes\n")
    config = make_config(GATED, data=False)
    config["data_dir"] = str(tmp_path / "d")
    write_data(tmp_path / "d", ("sst2",), skip={("sst2", "train")})
    bare = preflight.check(config, str(folder), offline=True, env=env)
    assert bare.profile == "k8s" and [s for s in bare.skipped if "executor kubernetes" in s and "not checked" in s]
    assert [p for p in bare.problems if "glue/SST-2/train.tsv" in p], bare.message()

    asked = []

    def check(report, net, config, env):
        asked.append(report.profile)
        report.problems.append(f"profile {report.profile}: KUBE_NAMESPACE is not set")

    staged = Staging("pvc://ftdrift/staged/", "the pods", lambda net, rels: {rel: "train" in rel for rel in rels})
    adapter = Executor("kubernetes", check, hardware=lambda *args: None, staging=lambda env: staged,
                       login_reaches_jobs=False)
    monkeypatch.setitem(executors.ADAPTERS, "kubernetes", adapter)
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    report = preflight.check(config, str(folder), env=no_token)
    assert asked == ["k8s"] and "profile k8s: KUBE_NAMESPACE is not set" in report.problems, report.message()
    assert [p for p in report.passed if "task sst2" in p and "pvc://ftdrift/staged/" in p], report.message()
    assert [p for p in report.problems if GATED in p and "the jobs see no other" in p], report.message()
    assert not [s for s in report.skipped if "kubernetes" in s]


def test_run_before_jobs_raises_the_message_and_can_be_switched_off(tmp_path, env, make_config):
    config = make_config(GATED)
    with pytest.raises(preflight.PreflightError) as err:
        preflight.run_before_jobs(config, "googlebatch", env=env)
    assert GATED in str(err.value) and "GOOGLE_CLOUD_PROJECT" in str(err.value) and TOKEN not in str(err.value)
    assert preflight.run_before_jobs(config, "googlebatch", env={**env, "FTDRIFT_PREFLIGHT": "0"}) is None


def test_command_line_exits_1_with_every_problem(tmp_path, env, make_config):
    config = make_config(GOOD)
    raw = {k: v for k, v in config.items() if k != "task_defs"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "ftdrift.preflight", "--configfile", str(tmp_path / "c.yaml"),
                           "--profile", "gcp-gpu", "--offline", "--config", f"data_dir={tmp_path / 'none'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for expected in ("GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_REGION", "FTDRIFT_GCS_BUCKET",
                     str(tmp_path / "none" / "glue" / "SST-2" / "train.tsv")):
        assert expected in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr


@pytest.mark.skipif(not shutil.which("sinfo"), reason="needs a SLURM installation (the executor plugin talks to it)")
def test_snakemake_stops_before_submitting(tmp_path):
    """The Snakefile's onstart hook, for real: the study through profiles/slurm with a partition that
    does not exist stops with the preflight's message before any job is submitted."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY and k != "SNAKEMAKE_PROFILE"}
    env.update({"FTDRIFT_SLURM_PARTITION": "ftdrift-no-such-partition", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm",
                           "--directory", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Preflight (profile slurm)" in out and "Nothing was submitted" in out, out[-3000:]
    assert "ftdrift-no-such-partition" in out or "FTDRIFT_SLURM_GPU_PARTITION" in out
    assert "Submitted job" not in out and not (tmp_path / ".snakemake" / "slurm_logs").exists()
