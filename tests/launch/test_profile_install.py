"""`snakemake --profile gcp-gpu` (the bare name, as the design writes it) after
`python -m ftdrift.profiles install`: links in Snakemake's user config dir ($XDG_CONFIG_HOME/snakemake)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftdrift import profiles
from ftdrift.testing import REPO

GCP_ENV = {"GOOGLE_CLOUD_PROJECT": "dummy-project", "GOOGLE_CLOUD_REGION": "us-central1",
           "FTDRIFT_GCS_BUCKET": "dummy-bucket"}
SLURM_ENV = {"FTDRIFT_SLURM_PARTITION": "cpu-dummy", "FTDRIFT_SLURM_GPU_PARTITION": "gpu-dummy"}
# variables that would change what the profiles resolve to (or where Snakemake looks)
LEAKY = ("SNAKEMAKE_PROFILE", "SNAKEMAKE_GOOGLEBATCH_PROJECT", "SNAKEMAKE_GOOGLEBATCH_REGION",
         "SNAKEMAKE_STORAGE_GCS_PROJECT", "FTDRIFT_IMAGE", "FTDRIFT_GCS_PREFIX", "FTDRIFT_GCP_SPOT",
         "FTDRIFT_GCP_MAX_GPUS", "FTDRIFT_CHECKPOINT_MIRROR", "HF_TOKEN", "WANDB_API_KEY",
         "GOOGLE_APPLICATION_CREDENTIALS", "FTDRIFT_SLURM_ACCOUNT", "FTDRIFT_SLURM_QOS", *GCP_ENV, *SLURM_ENV)


def pyproject_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """An empty user config home, the dummy fill-ins, the repository root as working directory."""
    for key in LEAKY:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for key, value in {**GCP_ENV, **SLURM_ENV}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    return home


def test_install_is_idempotent_and_uninstall_removes_only_ours(tmp_path):
    dest = tmp_path / "snakemake"
    first = profiles.install(dest)
    for name in ("gcp-gpu", "slurm"):
        link = dest / name
        assert link.is_symlink() and os.path.realpath(link) == os.path.realpath(REPO / "profiles" / name)
    assert len(first) == 2 and not any("already" in line for line in first)
    assert all("already installed" in line for line in profiles.install(dest))
    (dest / "mine").mkdir()
    profiles.uninstall(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["mine"]


def test_install_refuses_to_overwrite_another_profile(tmp_path):
    dest = tmp_path / "snakemake"
    (dest / "gcp-gpu").mkdir(parents=True)
    (dest / "gcp-gpu" / "profile.yaml").write_text("executor: somewhere-else\n")
    with pytest.raises(profiles.ProfileInstallError) as err:
        profiles.install(dest, force=True)  # --force never deletes a folder
    assert str(dest / "gcp-gpu") in str(err.value)
    assert (dest / "gcp-gpu" / "profile.yaml").read_text() == "executor: somewhere-else\n"
    assert not (dest / "slurm").exists()  # all or nothing

    other = tmp_path / "other-checkout" / "slurm"
    other.mkdir(parents=True)
    (dest / "gcp-gpu" / "profile.yaml").unlink()
    (dest / "gcp-gpu").rmdir()
    (dest / "slurm").symlink_to(other)
    with pytest.raises(profiles.ProfileInstallError, match="--force"):
        profiles.install(dest)
    assert os.readlink(dest / "slurm") == str(other)
    profiles.install(dest, force=True)  # a link elsewhere may be replaced on request
    assert os.path.realpath(dest / "slurm") == os.path.realpath(REPO / "profiles" / "slurm")
    assert profiles.uninstall(dest, names=["slurm"]) == [f"removed {dest / 'slurm'}"]
    assert not (dest / "slurm").exists() and other.is_dir()


def test_cluster_profiles_are_read_from_the_profile_files(tmp_path, monkeypatch):
    """What `install` links and what each profile runs on come from each profile's `executor:` key:
    a new profile folder is picked up without a list to edit."""
    assert profiles.profile_executors() == {"default": "local", "gcp-gpu": "googlebatch", "slurm": "slurm"}
    assert profiles.cluster_profiles() == ("gcp-gpu", "slurm")
    assert profiles.profile_for_executor("googlebatch") == "gcp-gpu" and profiles.profile_for_executor("x") is None

    repo = tmp_path / "profiles"
    for name, text in (("default", "printshellcmds: true\n"),
                       ("k8s", "__use_yte__: true\nexecutor: kubernetes\nconfigfile: config/k8s.yaml\n")):
        (repo / name).mkdir(parents=True)
        (repo / name / "profile.yaml").write_text(text)
    monkeypatch.setattr(profiles, "PROFILES_DIR", repo)
    monkeypatch.chdir(tmp_path)
    assert profiles.cluster_profiles() == ("k8s",)
    assert [profiles.profile_kind(p) for p in ("k8s", str(repo / "k8s"), "default", "nowhere", None)] == \
        ["kubernetes", "kubernetes", "local", None, None]
    assert profiles.profile_configfile("k8s") == "config/k8s.yaml" and profiles.profile_configfile("default") is None
    dest = tmp_path / "snakemake"
    assert profiles.install(dest) == [f"{dest / 'k8s'} -> {repo / 'k8s'}"]
    assert profiles.status(dest) == [f"{dest / 'k8s'}: installed"]


def test_bare_profile_names_resolve_after_install(xdg):
    """Through Snakemake's own parser (profile lookup, YTE, the workflow profile profiles/default)."""
    from snakemake.cli import parse_args

    with pytest.raises(SystemExit):  # before the install step: not found
        parse_args(["--profile", "gcp-gpu", "--dry-run"])
    proc = subprocess.run([sys.executable, "-m", "ftdrift.profiles", "install"], env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (xdg / "snakemake" / "gcp-gpu").is_symlink()  # the default destination is $XDG_CONFIG_HOME/snakemake

    _, gcp = parse_args(["--profile", "gcp-gpu", "--dry-run"])
    assert gcp.profile == ["gcp-gpu"]
    assert gcp.executor == "googlebatch" and gcp.jobs == 50 and gcp.cores is None
    # relative entries resolve against the working directory (the repository root), not ~/.config
    assert [Path(p).resolve() for p in gcp.configfile] == [REPO / "config" / "study.yaml"]
    assert gcp.googlebatch_container == (f"us-central1-docker.pkg.dev/dummy-project/ftdrift/ftdrift:"
                                         f"{pyproject_version()}")
    assert gcp.default_storage_prefix == "gs://dummy-bucket/ftdrift"
    # profiles/default (loaded as the workflow profile next to the Snakefile) adds its keys, overrides none
    assert gcp.show_failed_logs is True

    _, slurm = parse_args(["--profile", "slurm", "--dry-run"])
    assert slurm.executor == "slurm" and slurm.cores is None
    assert [Path(p).resolve() for p in slurm.configfile] == [REPO / "config" / "study.yaml"]
    assert "slurm_partition" in slurm.set_resources["finetune"]  # the GPU partition fill-in was read


def fake_service_account(path: Path) -> Path:
    """A syntactically valid service-account key (a fresh RSA key): google-auth loads it offline."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "dummy-project", "private_key_id": "0", "private_key": pem,
        "client_email": "ftdrift-test@dummy-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


def test_snakemake_runs_with_the_bare_gcp_profile(xdg, tmp_path):
    """The real command line: `snakemake --profile gcp-gpu` finds the linked profile, renders it and
    starts the googlebatch executor and GCS storage plugins (dummy credentials; nothing is submitted)."""
    pytest.importorskip("snakemake_executor_plugin_googlebatch")
    pytest.importorskip("snakemake_storage_plugin_gcs")
    profiles.install()
    env = {**os.environ, "GOOGLE_APPLICATION_CREDENTIALS": str(fake_service_account(tmp_path / "sa.json"))}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "gcp-gpu", "--list-rules"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using profiles gcp-gpu and workflow specific profile" in proc.stderr
    assert {"finetune", "base_representations", "all"} <= set(proc.stdout.split())
    # a missing fill-in is still named by the profile itself
    env.pop("FTDRIFT_GCS_BUCKET")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "gcp-gpu", "--list-rules"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "FTDRIFT_GCS_BUCKET" in proc.stdout + proc.stderr
