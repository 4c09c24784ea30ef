"""The Google Cloud Batch executor (snakemake-executor-plugin-googlebatch; profiles/gcp-gpu): every
job in our container on a VM, inputs and outputs in a GCS bucket (no shared file system). The VMs
see only the HF_TOKEN the profile passes on, never a login saved on this machine.

Preflight (`check`), from the variables profiles/gcp-gpu reads:
* project (GOOGLE_CLOUD_PROJECT / SNAKEMAKE_GOOGLEBATCH_PROJECT), region (GOOGLE_CLOUD_REGION /
  SNAKEMAKE_GOOGLEBATCH_REGION) and bucket (FTDRIFT_GCS_BUCKET) are set: every missing one is named;
* the bucket can be listed with this machine's Google credentials (google-cloud-storage; with
  STORAGE_EMULATOR_HOST set, the emulator is probed instead of storage.googleapis.com);
* the container image (FTDRIFT_IMAGE, else <region>-docker.pkg.dev/<project>/ftdrift/ftdrift:<version
  in pyproject.toml>) exists: `docker manifest inspect`, else `gcloud artifacts docker images describe`.
Data (`staging`): the jobs read the task files that rule stage_data uploads from `data_dir` to
gs://<bucket>/<prefix>/results/staged/ (ftdrift.study.storage), so a file already there counts.

Estimate (`hardware`): the machine type per rule (`set-resources: <rule>: googlebatch_machine_type`,
else the profile's `googlebatch-machine-type`), which the price table's `machines` must list; the
GPUs at once (`resources: gpu`, FTDRIFT_GCP_MAX_GPUS); the rules on spot VMs (`preemptible-rules`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Mapping

from ftdrift.executors.base import (
    Executor,
    HardwareProfile,
    Network,
    Report,
    Staging,
    env_first,
    run_tool,
    yte_int,
)

NAME = "googlebatch"
GCS_HOST = "storage.googleapis.com"
DEFAULT_PREFIX = "ftdrift"
DEFAULT_MACHINE = "e2-standard-4"  # the profile's `googlebatch-machine-type`, if it has none
DEFAULT_JOBS, DEFAULT_GPUS = 50, 8
NOT_FOUND = re.compile(r"manifest unknown|no such manifest|not found|NOT_FOUND|does not exist", re.IGNORECASE)


def _project_version() -> str:
    """The default image tag, as profiles/gcp-gpu computes it (pyproject.toml in the working directory)."""
    import tomllib

    try:
        with open("pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "latest"


def _storage_down(net: Network) -> str | None:
    # google-cloud-storage talks to the emulator instead when STORAGE_EMULATOR_HOST is set: probe that
    return net.down(net.env.get("STORAGE_EMULATOR_HOST") or GCS_HOST)


# ----------------------------------------------------------------------------- data staged in the bucket
def _objects_exist(net: Network, bucket: str, project: str | None, names: list[str]) -> dict[str, bool] | str:
    """Which of the object `names` exist in the bucket (google-cloud-storage), or why it could not say."""
    try:
        from google.cloud import storage
    except ImportError:
        return "google-cloud-storage not installed"
    down = _storage_down(net)
    if down:
        return f"no network ({down})"
    try:
        handle = storage.Client(project=project).bucket(bucket)
        return {name: handle.blob(name).exists() for name in names}
    except Exception as err:  # credentials, permissions, transport: the bucket check names those
        return f"bucket gs://{bucket} not readable ({type(err).__name__})"


def _staged(bucket: str, prefix: str, project: str | None, net: Network, rels: list[str]) -> dict[str, bool] | str:
    from ftdrift.study import storage as ftstorage

    names = {rel: ftstorage.storage_query(prefix, ftstorage.staged_path(rel)) for rel in rels}
    found = _objects_exist(net, bucket, project, list(names.values())) if names else {}
    return found if isinstance(found, str) else {rel: found[name] for rel, name in names.items()}


def staging(env: Mapping) -> Staging | None:
    """gs://<bucket>/<prefix>/results/staged/ as profiles/gcp-gpu computes it; None without a bucket."""
    from ftdrift.study import storage as ftstorage

    bucket = env.get("FTDRIFT_GCS_BUCKET")
    if not bucket:
        return None
    bucket = bucket.removeprefix("gs://").strip("/")
    prefix = (env.get("FTDRIFT_GCS_PREFIX") or DEFAULT_PREFIX).strip("/")
    project = env_first(env, "SNAKEMAKE_GOOGLEBATCH_PROJECT", "GOOGLE_CLOUD_PROJECT")
    return Staging(f"gs://{bucket}/{ftstorage.storage_query(prefix, ftstorage.STAGED_DIR)}/",
                   "the jobs on Google Batch", functools.partial(_staged, bucket, prefix, project))


# ----------------------------------------------------------------------------- preflight
def _check_image(report: Report, net: Network, image: str, env: Mapping) -> None:
    registry = image.split("/")[0] if "." in image.split("/")[0] and "/" in image else "registry-1.docker.io"
    down = net.down(registry)
    if down:
        report.skipped.append(f"no network ({down}): container image {image} not checked")
        return
    path = env.get("PATH", os.defpath)
    if shutil.which("docker", path=path):
        args = ["docker", "manifest", "inspect", image]
    elif shutil.which("gcloud", path=path):
        args = ["gcloud", "artifacts", "docker", "images", "describe", image, "--format=value(image_summary.digest)"]
    else:
        report.skipped.append(f"container image {image}: neither docker nor gcloud on PATH, not checked")
        return
    proc = run_tool(args, env)
    if isinstance(proc, str):
        report.skipped.append(f"container image {image}: {proc}, not checked")
    elif proc.returncode == 0:
        report.passed.append(f"container image {image} exists ({args[0]})")
    elif NOT_FOUND.search(proc.stderr):
        report.problems.append(f"container image {image} does not exist: build and push it (docs/cluster.md, "
                               "'Build and push the container') or point FTDRIFT_IMAGE at an existing one")
    else:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        report.skipped.append(f"container image {image}: {args[0]} could not check it ({last})")


def _check_bucket(report: Report, net: Network, bucket: str, prefix: str, project: str | None) -> None:
    try:
        from google.cloud import storage
    except ImportError:
        report.skipped.append(f"bucket gs://{bucket}: google-cloud-storage not installed, not checked")
        return
    down = _storage_down(net)
    if down:
        report.skipped.append(f"no network ({down}): bucket gs://{bucket} not checked")
        return
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        client = storage.Client(project=project)
        list(client.list_blobs(bucket, prefix=f"{prefix}/", max_results=1))
    except auth_exc.DefaultCredentialsError:
        report.problems.append("no Google Cloud credentials for the bucket and Batch: run "
                               "`gcloud auth application-default login`")
    except gexc.NotFound:
        report.problems.append(f"bucket gs://{bucket} (FTDRIFT_GCS_BUCKET) does not exist "
                               "(create it: docs/cluster.md, 'One-time setup')")
    except (gexc.Forbidden, gexc.Unauthorized):
        report.problems.append(f"bucket gs://{bucket} (FTDRIFT_GCS_BUCKET): your Google credentials may not list it "
                               "(need roles/storage.objectAdmin on the bucket)")
    except Exception as err:  # transport errors: not the user's fault
        report.skipped.append(f"bucket gs://{bucket}: not checked ({type(err).__name__})")
    else:
        report.passed.append(f"bucket gs://{bucket} readable")


def check(report: Report, net: Network, config: dict, env: Mapping) -> None:
    """Settings, bucket and image (see the module docstring)."""
    label = f"profile {report.profile or NAME}"
    settings = {
        "project": (("GOOGLE_CLOUD_PROJECT", "SNAKEMAKE_GOOGLEBATCH_PROJECT"),
                    "the Google Cloud project that runs the jobs"),
        "region": (("GOOGLE_CLOUD_REGION", "SNAKEMAKE_GOOGLEBATCH_REGION"), "e.g. us-central1, with A100 and L4 GPUs"),
        "bucket": (("FTDRIFT_GCS_BUCKET",), "the GCS bucket for inputs and outputs"),
    }
    values = {}
    for key, (names, what) in settings.items():
        # the profile prefers the SNAKEMAKE_GOOGLEBATCH_* spelling when both are set
        values[key] = env_first(env, *reversed(names))
        if values[key] is None:
            report.problems.append(f"{label}: set {' or '.join(names)} ({what}); see docs/cluster.md")
    if values["project"] and values["region"] and values["bucket"]:
        report.passed.append(f"{label}: project, region and bucket set")
    if values["bucket"]:
        bucket = values["bucket"].removeprefix("gs://").strip("/")
        prefix = (env.get("FTDRIFT_GCS_PREFIX") or DEFAULT_PREFIX).strip("/")
        _check_bucket(report, net, bucket, prefix, values["project"])
    image = env.get("FTDRIFT_IMAGE")
    if not image and values["project"] and values["region"]:
        image = f"{values['region']}-docker.pkg.dev/{values['project']}/ftdrift/ftdrift:{_project_version()}"
    if image:
        _check_image(report, net, image, env)
    else:
        report.skipped.append("container image: unknown until the project and region are set, not checked")


# ----------------------------------------------------------------------------- estimate
def hardware(raw: dict, label: str, config: dict, cores: int | None) -> HardwareProfile:
    jobs = int(raw.get("jobs", DEFAULT_JOBS))
    gpus, source = yte_int(raw.get("resources", {}).get("gpu", DEFAULT_GPUS), DEFAULT_GPUS)
    machines = {rule: spec["googlebatch_machine_type"] for rule, spec in raw.get("set-resources", {}).items()
                if isinstance(spec, dict) and "googlebatch_machine_type" in spec}
    # the profile's `?if spot:` block (a YTE condition, a plain key to YAML) holds preemptible-rules
    spot_block = next((v for k, v in raw.items() if str(k).startswith("?if spot")), {}) or {}
    spot_rules = tuple(spot_block.get("preemptible-rules", ()))
    notes = [f"GPUs at once: {gpus} ({source}); jobs at once: {jobs}"]
    if os.environ.get("FTDRIFT_GCP_SPOT", "1") in ("0", "false", "no"):
        notes.append("FTDRIFT_GCP_SPOT=0: the profile would run on-demand; both columns are shown anyway")
    return HardwareProfile(label, jobs, gpus, machines, raw.get("googlebatch-machine-type", DEFAULT_MACHINE),
                           spot_rules, notes)


ADAPTER = Executor(NAME, check, hardware, staging=staging, login_reaches_jobs=False)
