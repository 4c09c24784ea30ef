"""The cluster profiles (profiles/slurm, profiles/gcp-gpu) and the container recipe.

* every profile key is an option of the installed Snakemake + plugins, and the whole profile
  goes through Snakemake's own command-line parser and the plugins' settings validation;
* on the study config, every planned job maps to the intended cluster request: the exact
  `sbatch` arguments the SLURM plugin builds, and the Google Batch machine, accelerator,
  memory, disk and time limit the googlebatch plugin would ask for;
* container/Dockerfile takes its versions from pyproject.toml only.

The planned jobs come from `snakemake --dry-run` on whatever Snakefile is in the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest
import yaml

from ftdrift.executors import ADAPTERS
from ftdrift.profiles import cluster_profiles, profile_executors
from ftdrift.testing import REPO

# every profile whose `executor:` is not local (what `python -m ftdrift.profiles install` links)
PROFILES = {name: REPO / "profiles" / name for name in cluster_profiles()}
STUDY_CONFIG = REPO / "config" / "study.yaml"
DOCKERFILE = REPO / "container" / "Dockerfile"

# Stand-ins for the values a user fills in (profiles read them from the environment).
SLURM_ENV = {
    "FTDRIFT_SLURM_PARTITION": "cpu-test",
    "FTDRIFT_SLURM_GPU_PARTITION": "gpu-test",
    "FTDRIFT_SLURM_ACCOUNT": "acct-test",
    "FTDRIFT_SLURM_QOS": "qos-test",
}
GCP_ENV = {
    "GOOGLE_CLOUD_PROJECT": "ftdrift-test-project",
    "GOOGLE_CLOUD_REGION": "us-central1",
    "FTDRIFT_GCS_BUCKET": "ftdrift-test-bucket",
    "WANDB_API_KEY": "not-a-real-key",
}
# Variables that would change what the profiles resolve to; removed for the tests.
LEAKY_ENV = ("SNAKEMAKE_PROFILE", "SNAKEMAKE_GOOGLEBATCH_PROJECT", "SNAKEMAKE_GOOGLEBATCH_REGION",
             "SNAKEMAKE_STORAGE_GCS_PROJECT", "FTDRIFT_IMAGE", "FTDRIFT_GCS_PREFIX", "FTDRIFT_GCP_SPOT",
             "FTDRIFT_GCP_MAX_GPUS", "FTDRIFT_CHECKPOINT_MIRROR", "HF_TOKEN", *SLURM_ENV, *GCP_ENV)

# Compute Engine machine types the gcp profile may use: vCPUs, memory (GB), attached GPU.
MACHINES = {
    "e2-standard-2": (2, 8, None),
    "e2-standard-4": (4, 16, None),
    "e2-standard-8": (8, 32, None),
    "e2-highmem-4": (4, 32, None),
    "e2-highmem-8": (8, 64, None),
    "e2-highmem-16": (16, 128, None),
    "g2-standard-8": (8, 32, "nvidia-l4"),
    "g2-standard-12": (12, 48, "nvidia-l4"),
    "a2-highgpu-1g": (12, 85, "nvidia-tesla-a100"),
    "a2-ultragpu-1g": (12, 170, "nvidia-a100-80gb"),
}
GPU_MEMORY_GB = {"nvidia-l4": 24, "nvidia-tesla-a100": 40, "nvidia-a100-80gb": 80}


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env.update(extra or {})
    return env


def render(profile: str, env: dict) -> dict:
    """The profile as Snakemake sees it: YTE-processed under the given environment."""
    import yte

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        with open(PROFILES[profile] / "profile.yaml") as f:
            return yte.process_yaml(f, require_use_yte=True)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def snakemake_parse(monkeypatch, argv: list[str], env: dict):
    """Snakemake's own CLI parsing (profile loading included), in-process, from the repo root."""
    from snakemake.cli import parse_args

    for key in LEAKY_ENV:
        # set first, so that undo restores the original state even for variables the profile
        # itself sets while it is read (FTDRIFT_CHECKPOINT_MIRROR)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    _parser, args = parse_args(argv)
    return args


def executor_settings(name: str, args):
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    return ExecutorPluginRegistry().get_plugin(name).get_settings(args)


# --------------------------------------------------------------------------- profile files

@pytest.mark.parametrize("name", sorted(PROFILES))
def test_snakemake_loads_profile_yaml(name):
    """Snakemake 9 picks profiles/<name>/profile.yaml (and nothing shadows it)."""
    from snakemake.cli import get_profile_dir

    found = get_profile_dir(str(PROFILES[name]))
    assert found is not None, f"snakemake finds no profile file in {PROFILES[name]}"
    assert found[1].name == "profile.yaml"
    files = {p.name for p in PROFILES[name].iterdir() if p.suffix == ".yaml"}
    assert files == {"profile.yaml"}, f"extra profile files would shadow or confuse: {files}"


def test_every_profile_has_an_executor_adapter():
    """Each profile's executor (its `executor:` key; none: local) has an adapter in ftdrift.executors,
    which the preflight and the estimate ask; the cluster profiles are read from the files."""
    executors = profile_executors()
    assert {"default", "slurm", "gcp-gpu"} <= set(executors) and {"slurm", "gcp-gpu"} <= set(PROFILES)
    assert "default" not in PROFILES
    missing = {name: executor for name, executor in executors.items() if executor not in ADAPTERS}
    assert not missing, f"profiles whose executor has no adapter in ftdrift.executors: {missing}"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_is_plain_yaml(name):
    data = yaml.safe_load((PROFILES[name] / "profile.yaml").read_text())
    assert isinstance(data, dict) and data.get("__use_yte__") is True


@pytest.mark.parametrize("name,env", [
    ("slurm", {}), ("slurm", SLURM_ENV),
    ("gcp-gpu", GCP_ENV), ("gcp-gpu", {**GCP_ENV, "FTDRIFT_GCP_SPOT": "0", "HF_TOKEN": "x"}),
])
def test_profile_keys_are_snakemake_options(name, env):
    """Every key, in every branch of the templates, is a real option of the pinned tools."""
    from snakemake.cli import get_argument_parser

    options = set(get_argument_parser()._option_string_actions)
    rendered = render(name, clean_env(env))
    unknown = sorted(key for key in rendered if f"--{key}" not in options)
    assert not unknown, f"{name}: not options of this snakemake/plugins: {unknown}"
    assert rendered["configfile"] == "config/study.yaml" and STUDY_CONFIG.is_file()


def test_slurm_profile_through_snakemake_cli(monkeypatch):
    args = snakemake_parse(monkeypatch, ["--workflow-profile", "profiles/slurm", "--dry-run"], SLURM_ENV)
    assert args.executor == "slurm"
    assert [str(p) for p in args.configfile] == ["config/study.yaml"]
    assert args.retries >= 1 and args.latency_wait >= 30 and args.keep_going
    assert {t.name for t in args.rerun_triggers} == {"INPUT", "MTIME", "PARAMS", "SOFTWARE_ENV"}  # not CODE
    settings = executor_settings("slurm", args)  # runs the plugin's own validation
    assert settings.status_command == "squeue"
    assert settings.requeue and not settings.no_requeue
    assert settings.qos == SLURM_ENV["FTDRIFT_SLURM_QOS"]


def test_gcp_profile_through_snakemake_cli(monkeypatch):
    args = snakemake_parse(monkeypatch, ["--workflow-profile", "profiles/gcp-gpu", "--dry-run"], GCP_ENV)
    assert args.executor == "googlebatch"
    assert [str(p) for p in args.configfile] == ["config/study.yaml"]
    assert args.default_storage_provider == "gcs"
    assert args.default_storage_prefix == f"gs://{GCP_ENV['FTDRIFT_GCS_BUCKET']}/ftdrift"
    # spot VMs lose their disks: fine-tuning checkpoints are mirrored to the bucket
    assert args.envvars == {"FTDRIFT_CHECKPOINT_MIRROR", "WANDB_API_KEY"}
    assert os.environ["FTDRIFT_CHECKPOINT_MIRROR"] == f"gs://{GCP_ENV['FTDRIFT_GCS_BUCKET']}/ftdrift-checkpoints"
    assert args.preemptible_retries >= 1
    assert {"finetune"} <= set(args.preemptible_rules)
    settings = executor_settings("googlebatch", args)
    assert settings.project == GCP_ENV["GOOGLE_CLOUD_PROJECT"]
    assert settings.region == GCP_ENV["GOOGLE_CLOUD_REGION"]
    assert "batch-cos" in settings.image_family  # the plugin only runs containers on COS
    assert settings.boot_disk_image and settings.image_family in settings.boot_disk_image
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert settings.container == f"us-central1-docker.pkg.dev/ftdrift-test-project/ftdrift/ftdrift:{version}"
    assert settings.boot_disk_gb >= 100
    assert duration_s(settings.max_run_duration) > 3600  # the plugin's 1 h default is too short
    from snakemake_interface_storage_plugins.registry import StoragePluginRegistry

    gcs = StoragePluginRegistry().get_plugin("gcs").get_settings(args)
    assert gcs.get_settings(None).project == GCP_ENV["GOOGLE_CLOUD_PROJECT"]


def test_gcp_profile_spot_can_be_switched_off(monkeypatch):
    args = snakemake_parse(monkeypatch, ["--workflow-profile", "profiles/gcp-gpu", "--dry-run"],
                           {**GCP_ENV, "FTDRIFT_GCP_SPOT": "0"})
    assert not args.preemptible_rules


def test_gcp_profile_names_missing_settings():
    env = clean_env({"GOOGLE_CLOUD_REGION": "us-central1", "FTDRIFT_GCS_BUCKET": "b"})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/gcp-gpu", "-n"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "GOOGLE_CLOUD_PROJECT" in proc.stderr + proc.stdout


def test_bare_profile_name_via_workflow_profile(monkeypatch):
    """`--workflow-profile gcp-gpu` resolves to profiles/gcp-gpu (no install step needed)."""
    args = snakemake_parse(monkeypatch, ["--workflow-profile", "gcp-gpu", "--dry-run"], GCP_ENV)
    assert args.executor == "googlebatch"


def test_profile_option_gives_the_same_settings(monkeypatch):
    """`--profile profiles/<name>` works too, but Snakemake then also loads the local
    workflow profile profiles/default/ and lets *its* keys win: it must not set anything
    that breaks cluster runs (a `cores` there caps every cluster job's threads)."""
    harmful = {"cores", "latency-wait", "executor", "jobs", "default-resources", "set-resources",
               "retries", "configfile", "resources"}
    default = REPO / "profiles" / "default"
    if default.is_dir():
        from snakemake.cli import get_profile_dir

        found = get_profile_dir(str(default))
        keys = set(yaml.safe_load(found[1].read_text()) or {}) if found else set()
        assert not keys & harmful, (
            f"profiles/default sets {sorted(keys & harmful)}: with `--profile profiles/slurm` these "
            "override the cluster profile (use `--workflow-profile profiles/slurm` meanwhile)")
    args = snakemake_parse(monkeypatch, ["--profile", "profiles/slurm", "--dry-run"], SLURM_ENV)
    assert args.executor == "slurm" and args.latency_wait >= 30 and args.cores is None


# --------------------------------------------------------------------------- planned jobs

JOB_HEADER = re.compile(r"^(local)?(rule|checkpoint) (\w+):$")


def parse_dryrun(text: str) -> list[SimpleNamespace]:
    """Jobs from `snakemake --dry-run` output: rule, local?, outputs?, wildcards, threads,
    resources (values not known before the run stay the string '<TBD>')."""
    jobs, job = [], None
    for line in text.splitlines():
        m = JOB_HEADER.match(line)
        if m:
            job = SimpleNamespace(rule=m.group(3), local=bool(m.group(1)), wildcards={}, threads=1,
                                  resources={}, outputs=False)
            jobs.append(job)
            continue
        if job is None or not line.startswith("    "):
            continue
        key, _, value = line.strip().partition(": ")
        if key == "threads":
            job.threads = int(value)
        elif key == "output":
            job.outputs = True
        elif key in ("wildcards", "resources"):
            target = job.wildcards if key == "wildcards" else job.resources
            for item in value.split(", "):
                name, _, val = item.partition("=")
                target[name] = int(val) if re.fullmatch(r"-?\d+", val) else val
    return jobs


def run_dryrun(args: list[str], env: dict) -> subprocess.Popen:
    # --cores: a dry-run otherwise caps threads at 1, a cluster run does not cap them.
    return subprocess.Popen([sys.executable, "-m", "snakemake", *args, "--dry-run", "--forceall",
                             "--cores", "256"],
                            cwd=REPO, env=clean_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> list[SimpleNamespace]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"dry-run ({what}) failed:\n{out[-6000:]}"
    jobs = parse_dryrun(out)
    assert jobs, f"dry-run ({what}) planned no jobs:\n{out[-3000:]}"
    return jobs


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Both dry-runs of the study, run side by side (each takes tens of seconds)."""
    # SLURM: the real profile, as a user runs it.
    slurm = run_dryrun(["--workflow-profile", "profiles/slurm"], SLURM_ENV)
    # Google Batch: the real profile needs GCS credentials even for a dry-run, so run one
    # made of its workflow-facing keys (resources, retries, preemption); the executor and
    # storage keys are checked by test_gcp_profile_through_snakemake_cli.
    rendered = render("gcp-gpu", clean_env(GCP_ENV))
    keep = ("configfile", "set-resources", "resources", "retries", "preemptible-rules",
            "preemptible-retries", "rerun-triggers", "keep-going")
    derived = tmp_path_factory.mktemp("gcp-derived")
    (derived / "profile.yaml").write_text(yaml.safe_dump({k: rendered[k] for k in keep if k in rendered}))
    gcp = run_dryrun(["--workflow-profile", str(derived)], {})
    rules = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules",
                            "--configfile", str(STUDY_CONFIG)], cwd=REPO, env=clean_env(),
                           capture_output=True, text=True, timeout=300)
    assert rules.returncode == 0, rules.stderr[-3000:]
    return SimpleNamespace(slurm=finish(slurm, "slurm profile"), gcp=finish(gcp, "gcp-derived profile"),
                           rules=set(rules.stdout.split()), gcp_rendered=rendered)


def remote_jobs(jobs):
    """Jobs submitted to the cluster: not local rules, not the output-less target rule."""
    return [j for j in jobs if not j.local and j.outputs]


def gpu_rules(jobs) -> set[str]:
    return {j.rule for j in remote_jobs(jobs) if j.resources.get("gpu", 0)}


def test_study_plans_the_expected_rules(planned):
    rules = {j.rule for j in planned.slurm}
    assert {"prepare_data", "finetune"} <= rules
    assert "finetune" in gpu_rules(planned.slurm), "the study config should fine-tune on GPUs"
    assert {j.rule for j in planned.gcp} == rules


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_name_existing_rules(planned, name):
    """A misspelt rule name in set-resources would silently do nothing."""
    rendered = render(name, clean_env({**SLURM_ENV, **GCP_ENV}))
    named = set(rendered.get("set-resources", {})) | set(rendered.get("preemptible-rules", []))
    assert named, f"{name}: expected per-rule settings"
    assert not named - planned.rules, f"{name}: rules that do not exist: {named - planned.rules}"


class Res(dict):
    """Job resources with attribute access, like Snakemake's Resources."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def sbatch_line(job, settings) -> str:
    """The sbatch call the SLURM plugin would make for this planned job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    fake = SimpleNamespace(resources=Res(job.resources), threads=job.threads, name=job.rule,
                           is_group=lambda: False)
    partition = job.resources.get("slurm_partition")
    account = job.resources.get("slurm_account")
    params = {"run_uuid": "ftdrift_test", "slurm_logfile": "/dev/null", "comment_str": f"rule_{job.rule}",
              "account": f" -A {account}" if account else "",
              "partition": f" -p {partition}" if partition else "", "workdir": str(REPO)}
    return get_submit_command(fake, params, settings=settings) + set_gres_string(fake)


def test_slurm_jobs_map_to_intended_requests(planned, monkeypatch):
    args = snakemake_parse(monkeypatch, ["--workflow-profile", "profiles/slurm", "--dry-run"], SLURM_ENV)
    settings = executor_settings("slurm", args)
    study = yaml.safe_load(STUDY_CONFIG.read_text())
    gpu_model = (study.get("resources") or {}).get("gpu_model")
    gpu_set = set(render("slurm", clean_env(SLURM_ENV)).get("set-resources", {}))
    assert gpu_rules(planned.slurm) == gpu_set, (
        "rules that ask for GPUs and rules the slurm profile sends to the GPU partition differ")
    for job in remote_jobs(planned.slurm):
        res, call = job.resources, sbatch_line(job, settings)
        where = f"{job.rule} {job.wildcards}: {call}"
        assert res.get("mem_mb", 0) > 0 and f"--mem {res['mem_mb']}" in call, where
        assert res.get("runtime", 0) > 0 and f"-t {res['runtime']}" in call, where
        assert " --requeue" in call, where
        assert f"-A {SLURM_ENV['FTDRIFT_SLURM_ACCOUNT']}" in call, where
        if res.get("gpu", 0):
            assert f"-p {SLURM_ENV['FTDRIFT_SLURM_GPU_PARTITION']}" in call, where
            model = res.get("gpu_model") or ""
            assert f"--gpus={model}:{res['gpu']}" in call if model else f"--gpus={res['gpu']}" in call, where
            if job.rule == "finetune":
                assert model and model == gpu_model, f"fine-tunes must name the GPU type: {where}"
                assert "--cpus-per-gpu=" in call, where
        else:
            assert f"-p {SLURM_ENV['FTDRIFT_SLURM_PARTITION']}" in call, where
            assert "--gpus" not in call and "--cpus-per-task=" in call, where


def duration_s(value: str) -> int:
    m = re.fullmatch(r"(\d+)s", str(value))
    assert m, f"Batch durations are written as '<seconds>s', got {value!r}"
    return int(m.group(1))


def test_gcp_jobs_map_to_intended_machines(planned, monkeypatch):
    from snakemake_executor_plugin_googlebatch.executor import GoogleBatchExecutor

    args = snakemake_parse(monkeypatch, ["--workflow-profile", "profiles/gcp-gpu", "--dry-run"], GCP_ENV)
    plugin = SimpleNamespace(executor_settings=executor_settings("googlebatch", args))
    spot = set(planned.gcp_rendered.get("preemptible-rules", []))
    gpus = gpu_rules(planned.gcp)
    assert gpus <= spot, f"GPU rules not on spot VMs: {gpus - spot}"
    for job in remote_jobs(planned.gcp):
        fake = SimpleNamespace(resources=Res(job.resources))

        def param(name):
            return GoogleBatchExecutor.get_param(plugin, fake, name)

        machine = param("machine_type")
        where = f"{job.rule} {job.wildcards} on {machine}"
        assert machine in MACHINES, f"unknown machine type {where}"
        vcpus, mem_gb, attached = MACHINES[machine]
        mem_mib, task_mib = job.resources.get("mem_mib", 0), param("memory")
        assert mem_mib <= task_mib <= mem_gb * 1000 * 0.95, (
            f"{where}: rule needs {mem_mib} MiB, task asks {task_mib} MiB of a {mem_gb} GB machine")
        assert param("cpu_milli") <= vcpus * 1000 and job.threads <= vcpus, where
        runtime_s = job.resources.get("runtime", 0) * 60
        assert duration_s(param("max_run_duration")) >= runtime_s, (
            f"{where}: Batch limit {param('max_run_duration')} < rule runtime {runtime_s}s")
        assert param("boot_disk_gb") >= 100, where
        accelerators = GoogleBatchExecutor.get_accelerators(plugin, fake)
        if job.resources.get("gpu", 0):
            assert len(accelerators) == 1 and accelerators[0].count >= job.resources["gpu"], where
            assert accelerators[0].type_ == attached, f"{where}: GPU {accelerators[0].type_} vs machine {attached}"
        else:
            assert not accelerators and attached is None, f"{where}: GPU machine for a CPU job"


def test_gcp_finetune_gpu_fits_the_memory_estimate(planned):
    """The A100 40GB (not an L4) is needed: check against the workflow's own estimate."""
    from ftdrift.study import config, resources

    accel = planned.gcp_rendered["set-resources"]["finetune"]["nvidia_gpu"]
    # the profiles pass --configfile config/study.yaml, which then stands alone
    cfg = config.resolve(yaml.safe_load(STUDY_CONFIG.read_text()), base_dir=str(REPO))
    worst = max(
        resources.finetune_job(cfg, j.wildcards["task"], j.wildcards["method"],
                               int(j.wildcards["batch_size"]))["gpu_mem_gb"]
        for j in planned.gcp if j.rule == "finetune")
    assert worst <= GPU_MEMORY_GB[accel], f"worst fine-tune needs {worst} GB on a {accel}"


# --------------------------------------------------------------------------- container

def pyproject_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("cluster", []))


def test_dockerfile_takes_versions_from_pyproject(tmp_path):
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[-.]", text, re.M), "base image must be Python 3.11"
    # Nothing pinned in the Dockerfile itself (pins live in pyproject.toml only) ...
    pins = re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", re.sub(r"(?m)^\s*#.*$", "", text))
    assert not pins, f"versions pinned in the Dockerfile: {pins}; put them in pyproject.toml"
    # ... and its requirement extraction, run on the real pyproject, yields exactly those pins.
    script = re.search(r"RUN python - <<'PY'\n(.*?)\nPY\n", text, re.S)
    assert script, "Dockerfile no longer extracts requirements from pyproject.toml"
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    code = script.group(1).replace("/tmp/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    torch = (tmp_path / "torch.txt").read_text().split()
    rest = (tmp_path / "requirements.txt").read_text().split()
    wanted = pyproject_requirements()
    assert torch == [d for d in wanted if d.startswith("torch==")]
    assert sorted(torch + rest) == sorted(d.replace(" ", "") for d in wanted)
    assert "pip install --no-deps /tmp/ftdrift-src" in text  # the project itself, from the context


def test_pinned_tools_are_the_ones_tested():
    """The profiles were validated against the installed Snakemake and plugins: those must be
    the versions pyproject.toml (and so the container) pins."""
    from importlib.metadata import version

    for req in pyproject_requirements():
        name, sep, pinned = req.replace(" ", "").partition("==")
        if sep and (name.startswith("snakemake") or name == "torch"):
            installed = version(name).split("+")[0]
            assert installed == pinned, f"{name}: installed {installed}, pyproject pins {pinned}"
